"""Live metric plots (pyqtgraph): one small plot per metric, several jobs' curves overlaid."""

from __future__ import annotations

import html
import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QSlider, QVBoxLayout, QWidget

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


class MetricGrid(QWidget):
    """Curves keyed by (series, metric): `set_points` replaces, `append_points` extends."""

    COLUMNS = 2

    def __init__(self) -> None:
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
        controls.addWidget(self.log_box)
        controls.addSpacing(12)
        controls.addWidget(self.smooth_label)
        controls.addWidget(self.smooth)
        controls.addStretch(1)
        layout.addLayout(controls)
        self.view = pg.GraphicsLayoutWidget()
        layout.addWidget(self.view, 1)
        self.plots: dict[str, pg.PlotItem] = {}
        self.data: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
        self.curves: dict[tuple[str, str], pg.PlotDataItem] = {}
        self.raw_curves: dict[tuple[str, str], pg.PlotDataItem] = {}
        self.series_order: list[str] = []

    def clear(self) -> None:
        self.view.clear()
        self.plots.clear()
        self.data.clear()
        self.curves.clear()
        self.raw_curves.clear()
        self.series_order.clear()

    def metric_names(self) -> list[str]:
        return list(self.plots)

    def _plot(self, metric: str) -> pg.PlotItem:
        if metric not in self.plots:
            n = len(self.plots)
            plot = self.view.addPlot(row=n // self.COLUMNS, col=n % self.COLUMNS, title=html.escape(metric))
            plot.showGrid(x=True, y=True, alpha=0.2)
            plot.setLabel("bottom", "step")
            plot.setLogMode(y=self.log_box.isChecked())
            if n == 0:
                plot.addLegend(offset=(-10, 10))
            self.plots[metric] = plot
        return self.plots[metric]

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
        plot = self._plot(metric)
        weight = self.smooth.value() / 100
        key = (series, metric)
        color = self._color(series)
        y = np.asarray(ys, dtype=float)
        if self.log_box.isChecked():
            y = np.where(y > 0, y, math.nan)
        if key not in self.curves:
            self.raw_curves[key] = plot.plot([], [], pen=pg.mkPen(color, width=1, alpha=80))
            name = series if len(self.plots) == 1 or metric == next(iter(self.plots)) else None
            # pyqtgraph draws legend names as HTML: escape them (run and model names are untrusted)
            legend = html.escape(str(name)) if name is not None else None
            self.curves[key] = plot.plot([], [], pen=pg.mkPen(color, width=2), name=legend)
        if weight > 0:
            raw_pen = pg.mkPen(pg.mkColor(color).lighter(170), width=1)
            self.raw_curves[key].setPen(raw_pen)
            self.raw_curves[key].setData(xs, y)
            self.curves[key].setData(xs, ema(y, weight))
        else:
            self.raw_curves[key].setData([], [])
            self.curves[key].setData(xs, y)

    def _redraw_all(self) -> None:
        self.smooth_label.setText(f"smoothing {self.smooth.value() / 100:.2f}")
        for series, metric in list(self.data):
            self._redraw(series, metric)

    def _apply_log(self, on: bool) -> None:
        for plot in self.plots.values():
            plot.setLogMode(y=on)
        self._redraw_all()
