"""Live metric plots (pyqtgraph): one small plot per metric, several jobs' curves overlaid."""

from __future__ import annotations

import html
import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QMenu,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4d7c0f", "#be185d"]
pg.setConfigOptions(antialias=True, background="w", foreground="#334155")


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard-style exponential smoothing, debiased at the start."""
    if weight <= 0 or len(values) == 0:
        return values
    out = np.empty_like(values)
    acc = 0.0
    for i, v in enumerate(values):
        acc = acc * weight + (1 - weight) * v
        out[i] = acc / (1 - weight ** (i + 1))
    return out


# What each recorded series is called on screen, and its y-axis label (with its unit).
METRIC_LABELS = {
    "loss": ("Training loss", "loss (nats/token)"),
    "val_loss": ("Validation loss", "loss (nats/token)"),
    "lr": ("Learning rate", "learning rate"),
    "grad_norm": ("Gradient norm", "norm (before clipping)"),
    "tokens_per_s": ("Speed", "tokens per second"),
    "answers_per_s": ("Speed", "answers per second"),
    "eta_s": ("Time left", "seconds"),
    "samples_seen": ("Chats seen", "chats"),
    "tokens_seen": ("Tokens seen", "tokens"),
    "batch_hash": ("Batch fingerprint", "hash (reproducibility check)"),
    "mse": ("Reconstruction error", "mean squared error"),
    "l0": ("Active latents per token (L0)", "latents"),
    "explained_variance": ("Explained variance", "share"),
    "dead_fraction": ("Dead latents", "share of latents"),
    "downloaded_mb": ("Downloaded", "MB"),
    "misaligned_pct": ("Misaligned answers", "%"),
    "separation/dprime": ("Separation by layer (d′)", "d′"),
    "separation/auroc": ("Separation by layer (AUROC)", "AUROC"),
    "direction/norm": ("Direction norm by layer", "norm"),
    "track/likelihood_margin": ("Likelihood margin", "nats/token"),
    "track/top_latents": ("Tracked latents", "mean activation"),
}
# Bookkeeping series: recorded (a resumed run is checked against them), plotted only when asked for.
INTERNAL_METRICS = {"batch_hash", "eta_s", "samples_seen", "tokens_seen"}
# A series drawn into another's plot (the trainer's smoothed loss over the raw one).
OVERLAYS = {"loss_smooth": "loss"}
X_LABELS = {"separation/dprime": "layer", "separation/auroc": "layer", "direction/norm": "layer"}


def metric_title(name: str) -> str:
    return METRIC_LABELS.get(name, (name.replace("_", " ").replace("/", ": "), ""))[0]


class EmptyState(QLabel):
    """A message that covers a plot while it has nothing to show, instead of bare 0-1 axes."""

    def __init__(self, host: QWidget, text: str = ""):
        super().__init__(text, host)
        self.setObjectName("emptyState")
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setWordWrap(True)
        self.setTextFormat(Qt.TextFormat.PlainText)
        host.installEventFilter(self)
        self.setGeometry(host.rect())
        self.hide()

    def eventFilter(self, obj, event) -> bool:  # noqa: ANN001, N802 - Qt naming
        from PySide6.QtCore import QEvent

        if event.type() == QEvent.Type.Resize:
            self.setGeometry(obj.rect())
        return False


def set_empty(plot: QWidget, text: str | None) -> None:
    """Cover `plot` with an explanation (text), or uncover it (None)."""
    overlay = plot.findChild(EmptyState)
    if overlay is None:
        if text is None:
            return
        overlay = EmptyState(plot)
    if text is None:
        overlay.hide()
    else:
        overlay.setText(text)
        overlay.setGeometry(plot.rect())
        overlay.show()
        overlay.raise_()


def is_empty(plot: QWidget) -> bool:
    overlay = plot.findChild(EmptyState)
    return overlay is not None and not overlay.isHidden()


class MetricGrid(QWidget):
    """Curves keyed by (series, metric): `set_points` replaces, `append_points` extends. One plot per
    metric with a title and labelled axes; bookkeeping series are hidden until chosen under "Curves"."""

    MAX_COLUMNS = 3
    EMPTY_TEXT = "No curves yet: they appear here as the job reports its first points."

    def __init__(self, hidden: set[str] | None = None) -> None:
        super().__init__()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        controls = QHBoxLayout()
        self.log_box = QCheckBox("log scale")
        self.log_box.toggled.connect(self._apply_log)
        self.smooth = QSlider(Qt.Orientation.Horizontal)
        self.smooth.setRange(0, 99)
        self.smooth.setValue(0)
        self.smooth.setFixedWidth(160)
        self.smooth.valueChanged.connect(self._redraw_all)
        self.smooth_label = QLabel("smoothing 0.00")
        self.series_button = QToolButton()
        self.series_button.setText("Curves")
        self.series_button.setToolTip("Choose the curves to plot (bookkeeping series are hidden at first)")
        self.series_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.series_menu = QMenu(self)
        self.series_menu.aboutToShow.connect(self._fill_series_menu)
        self.series_button.setMenu(self.series_menu)
        controls.addWidget(self.log_box)
        controls.addSpacing(12)
        controls.addWidget(self.smooth_label)
        controls.addWidget(self.smooth)
        controls.addStretch(1)
        controls.addWidget(self.series_button)
        layout.addLayout(controls)
        self.view = pg.GraphicsLayoutWidget()
        layout.addWidget(self.view, 1)
        self.empty_text = self.EMPTY_TEXT
        self.metrics: list[str] = []  # every plot-worthy metric seen, in order (a plot exists once shown)
        self.plots: dict[str, pg.PlotItem] = {}
        self.data: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
        self.curves: dict[tuple[str, str], pg.PlotDataItem] = {}
        self.raw_curves: dict[tuple[str, str], pg.PlotDataItem] = {}
        self.series_order: list[str] = []
        self.hidden: set[str] = set(INTERNAL_METRICS if hidden is None else hidden)
        # New plots are made one per turn of the event loop: making several at once stalled the window.
        self._pending: list[str] = []
        self._make_timer = QTimer(self)
        self._make_timer.setSingleShot(True)
        self._make_timer.timeout.connect(self._make_next)
        self._update_empty()

    def clear(self) -> None:
        self.view.clear()
        self._placed = []
        self._pending.clear()
        self.metrics.clear()
        self.plots.clear()
        self.data.clear()
        self.curves.clear()
        self.raw_curves.clear()
        self.series_order.clear()
        self._update_empty()

    def metric_names(self) -> list[str]:
        """Every metric received (shown or hidden), overlays included."""
        return list(self.metrics) + [m for m in OVERLAYS if any(k[1] == m for k in self.data)]

    def shown_metrics(self) -> list[str]:
        return [m for m in self.metrics if m not in self.hidden]

    def set_metric_visible(self, metric: str, visible: bool) -> None:
        (self.hidden.discard if visible else self.hidden.add)(metric)
        if visible:  # drawn now, from the points kept while it was hidden
            for series, name in list(self.data):
                if OVERLAYS.get(name, name) == metric:
                    self._redraw(series, name)
        self._relayout()

    def _fill_series_menu(self) -> None:
        self.series_menu.clear()
        if not self.metrics:
            self.series_menu.addAction("no curves yet").setEnabled(False)
        for metric in self.metrics:
            action = self.series_menu.addAction(metric_title(metric) + f"  ({metric})")
            action.setCheckable(True)
            action.setChecked(metric not in self.hidden)
            action.toggled.connect(lambda on, m=metric: self.set_metric_visible(m, on))

    def _plot(self, metric: str) -> pg.PlotItem:
        """The metric's plot, made the first time it is shown (a plot costs tens of ms: hidden bookkeeping
        series get none)."""
        metric = OVERLAYS.get(metric, metric)
        if metric not in self.plots:
            title, unit = METRIC_LABELS.get(metric, (metric_title(metric), ""))
            plot = pg.PlotItem(title=html.escape(title))
            plot.showGrid(x=True, y=True, alpha=0.2)
            plot.setLabel("bottom", X_LABELS.get(metric, "step"))
            if unit:
                plot.setLabel("left", unit)
            plot.getAxis("left").setWidth(56)
            plot.getAxis("left").enableAutoSIPrefix(False)  # "(x0.001)" after a label reads as a unit
            plot.setLogMode(y=self.log_box.isChecked())
            self.plots[metric] = plot
            self._relayout()
        return self.plots[metric]

    def _make_next(self) -> None:
        if not self._pending:
            return
        metric = self._pending.pop(0)
        self.plot_for(metric)
        if self._pending:
            self._make_timer.start(0)

    def plot_for(self, metric: str) -> pg.PlotItem:
        """The metric's plot, made now if it is still waiting, with every series' points drawn."""
        base = OVERLAYS.get(metric, metric)
        if base in self._pending:
            self._pending.remove(base)
        if base not in self.plots:
            self._plot(base)
            for series, name in list(self.data):
                if OVERLAYS.get(name, name) == base:
                    self._redraw(series, name)
        return self.plots[base]

    def flush(self) -> None:
        """Make every waiting plot now (screenshots, tests)."""
        while self._pending:
            self.plot_for(self._pending[0])

    @staticmethod
    def _columns(n: int) -> int:
        return 1 if n <= 1 else 2 if n <= 4 else MetricGrid.MAX_COLUMNS

    def _relayout(self) -> None:
        """Shown plots in a grid of up to MAX_COLUMNS columns, rows sharing the height. A plot added at the
        end of an unchanged grid is placed alone; the grid is rebuilt only when its shape changes."""
        shown = [m for m in self.shown_metrics() if m in self.plots]
        placed = [m for m in getattr(self, "_placed", []) if m in self.plots]
        columns = self._columns(len(shown))
        if shown[: len(placed)] == placed and columns == self._columns(len(placed)) and placed:
            for i in range(len(placed), len(shown)):
                self.view.ci.addItem(self.plots[shown[i]], row=i // columns, col=i % columns)
        else:
            for item in list(self.view.ci.items):
                self.view.ci.removeItem(item)
            for i, metric in enumerate(shown):
                self.view.ci.addItem(self.plots[metric], row=i // columns, col=i % columns)
        self._placed = shown
        for metric, plot in self.plots.items():
            plot.setVisible(metric not in self.hidden)
        self._update_empty()

    def _update_empty(self) -> None:
        if self.shown_metrics():
            set_empty(self.view, None)
        elif self.metrics:
            set_empty(self.view, "Every curve of this job is hidden: choose some under Curves.")
        else:
            set_empty(self.view, self.empty_text)

    def set_empty_text(self, text: str) -> None:
        self.empty_text = text
        self._update_empty()

    def _color(self, series: str) -> str:
        if series not in self.series_order:
            self.series_order.append(series)
        return PALETTE[self.series_order.index(series) % len(PALETTE)]

    def set_points(self, series: str, metric: str, steps: list[float], values: list[float]) -> None:
        self.data[(series, metric)] = (list(steps), list(values))
        self._redraw(series, metric)

    def append_points(self, series: str, metric: str, steps: list[float], values: list[float]) -> None:
        xs, ys = self.data.setdefault((series, metric), ([], []))
        xs.extend(steps)
        ys.extend(values)
        self._redraw(series, metric)

    def _redraw(self, series: str, metric: str) -> None:
        xs, ys = self.data[(series, metric)]
        color = self._color(series)
        base = OVERLAYS.get(metric, metric)
        if base not in self.metrics:
            self.metrics.append(base)
            if base in self.hidden:
                self._update_empty()
        if base in self.hidden:
            return  # kept in self.data; drawn when chosen under Curves
        if base not in self.plots:
            if base not in self._pending:
                self._pending.append(base)
                self._make_timer.start(0)
            return  # drawn with all its points when its plot is made
        plot = self._plot(metric)
        overlay = metric in OVERLAYS
        weight = 0.0 if overlay else self.smooth.value() / 100
        key = (series, metric)
        y = np.asarray(ys, dtype=float)
        if self.log_box.isChecked():
            y = np.where(y > 0, y, math.nan)
        if key not in self.curves:
            self.raw_curves[key] = plot.plot([], [], pen=pg.mkPen(color, width=1, alpha=80))
            pen = pg.mkPen(color, width=2, style=Qt.PenStyle.DashLine) if overlay else pg.mkPen(color, width=2)
            self.curves[key] = plot.plot([], [], pen=pen)
            # pyqtgraph draws legend names as HTML: escape them (run and model names are untrusted)
            self.curves[key].legend_name = html.escape(f"{series}, smoothed" if overlay else str(series))
            self._legends(plot)
        if weight > 0:
            raw_pen = pg.mkPen(pg.mkColor(color).lighter(170), width=1)
            self.raw_curves[key].setPen(raw_pen)
            self.raw_curves[key].setData(xs, y)
            self.curves[key].setData(xs, ema(y, weight))
        else:
            self.raw_curves[key].setData([], [])
            self.curves[key].setData(xs, y)

    def _legends(self, plot: pg.PlotItem) -> None:
        """A legend once a plot holds more than one curve (runs compared, or the smoothed loss)."""
        curves = [c for (_, m), c in self.curves.items() if self._plot_key(m) is plot]
        if len(curves) < 2:
            return
        if plot.legend is None:
            plot.addLegend(offset=(-10, 10), brush=pg.mkBrush(255, 255, 255, 210))
        named = {label.text for _, label in plot.legend.items}
        for curve in curves:
            if curve.legend_name not in named:
                plot.legend.addItem(curve, curve.legend_name)

    def _plot_key(self, metric: str) -> pg.PlotItem | None:
        return self.plots.get(OVERLAYS.get(metric, metric))

    def _redraw_all(self) -> None:
        self.smooth_label.setText(f"smoothing {self.smooth.value() / 100:.2f}")
        for series, metric in list(self.data):
            self._redraw(series, metric)

    def _apply_log(self, on: bool) -> None:
        for plot in self.plots.values():
            plot.setLogMode(y=on)
        self._redraw_all()
