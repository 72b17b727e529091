"""The Steer page: live steering side by side, steering sweeps, directions and persona vectors, and the
live persona monitor of fine-tunes.

- Live: interventions (stored directions, SAE latents) each with a method and a strength slider, the
  positions and layer steered; a chat prompt answered twice, unsteered and steered, streamed token by token
  from two worker threads (the steering hooks act only in the steered one). Moving a slider restarts the
  steered answer after a short pause. Tokens can be coloured by log-probability; hovering one shows its
  value and the alternatives. Presets are stored in the project.
- Sweeps: launch `steer-sweep` jobs (and the three persona up/down sweeps) and read their dose-response curves.
- Directions: the project's directions; import a .safetensors vector, build persona vectors, screen a
  dataset by its projection and write the filtered dataset.
- Monitor: a fine-tune's loss beside its `persona/*` curves, with the warnings the monitor logged.

The UI thread never touches torch: models load through `run_async`, answers stream from daemon threads
whose Qt signals arrive queued in the UI thread.
"""

from __future__ import annotations

import html
import math
import threading
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTabWidget,
    QTextBrowser,
    QToolButton,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from emgui.core import persona as personas
from emgui.core import steering as st
from emgui.core.errors import EmguiError
from emgui.ui.bridge import run_async
from emgui.ui.plots import PALETTE, MetricGrid, set_empty
from emgui.ui.widgets import (
    UNVALIDATED,
    Page,
    SortableItem,
    heading,
    hint,
    mark_unvalidated,
    notice_label,
    record_table,
    set_notice,
    show_error,
)

STEER_KINDS = ("persona-vector", "diff-means", "persona-screen", "steer-sweep")
SLIDER_STEPS = 200  # a slider runs from -max to +max in this many steps each way
DEBOUNCE_MS = 250


def _esc(text: str) -> str:
    return html.escape(text, quote=False)


def _combo_data(combo: QComboBox) -> Any:
    return combo.currentData() if combo.currentIndex() >= 0 else None


def _select_data(combo: QComboBox, value: Any) -> None:
    index = combo.findData(value)
    if index >= 0:
        combo.setCurrentIndex(index)


def _spin(widget: Any, lo: float, hi: float, value: float, tip: str = "", step: float | None = None) -> Any:
    widget.setRange(lo, hi)
    widget.setValue(value)
    if step is not None:
        widget.setSingleStep(step)
    widget.setToolTip(tip)
    return widget


# ----- token views ------------------------------------------------------------------------------------------


def logprob_colour(logprob: float) -> str:
    """White for a sure token, deepening red as its probability falls."""
    p = math.exp(max(-30.0, min(0.0, logprob)))
    level = int(255 * (0.45 + 0.55 * p))
    return f"#ff{level:02x}{level:02x}"


class TokenView(QTextBrowser):
    """An answer streamed token by token. With `colour`, each token's background shows its probability;
    hovering a token shows its log-probability and the most likely alternatives."""

    def __init__(self) -> None:
        super().__init__()
        self.setOpenLinks(False)
        self.setOpenExternalLinks(False)
        self.steps: list[Any] = []
        self.colour = True
        self.status = ""
        self._dirty = False
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.render)

    def clear_tokens(self, status: str = "") -> None:
        self.steps = []
        self.status = status
        self.render()

    def add(self, step: Any) -> None:
        self.steps.append(step)
        if not self._timer.isActive():  # redraw at most every 30 ms however fast tokens come
            self._timer.start(30)

    def text(self) -> str:
        return "".join(s.text for s in self.steps)

    def render(self) -> None:
        parts = []
        for i, s in enumerate(self.steps):
            end = not s.text and i == len(self.steps) - 1  # the end-of-turn token: shown so it can be hovered
            text = _esc(s.text).replace("\n", "<br>") or (
                '<span style="color:#94a3b8"> [end]</span>' if end else ""
            )
            if not text:
                continue
            bg = f"background-color:{logprob_colour(s.logprob)};" if self.colour else ""
            parts.append(f'<a href="t:{i}" style="color:#0f172a;text-decoration:none;{bg}">{text}</a>')
        status = f'<p style="color:#64748b">{_esc(self.status)}</p>' if self.status else ""
        self.setHtml(f'<div style="white-space:pre-wrap">{"".join(parts)}</div>{status}')
        bar = self.verticalScrollBar()
        bar.setValue(bar.maximum())

    def token_tip(self, index: int) -> str:
        s = self.steps[index]
        alts = "".join(
            f"<tr><td><code>{_esc(repr(text))}</code></td><td align=right>{lp:.2f}</td>"
            f"<td align=right>{100 * math.exp(lp):.1f}%</td></tr>"
            for text, lp in s.alternatives
        )
        return (
            f"<b>{_esc(repr(s.text))}</b> (token {s.token_id})<br>log-prob {s.logprob:.3f} · "
            f"p = {100 * math.exp(s.logprob):.1f}%<table>{alts}</table>"
        )

    def viewportEvent(self, event: QEvent) -> bool:  # noqa: N802 - Qt's naming
        if event.type() == QEvent.Type.ToolTip:
            anchor = self.anchorAt(event.pos())
            if anchor.startswith("t:"):
                QToolTip.showText(event.globalPos(), self.token_tip(int(anchor[2:])), self)
            else:
                QToolTip.hideText()
            return True
        return super().viewportEvent(event)


# ----- streaming off the UI thread --------------------------------------------------------------------------


class _StreamSignals(QObject):
    token = Signal(str, int, object)  # pane ("base" | "steered"), run id, TokenStep
    done = Signal(str, int, str)  # pane, run id, error ('' when it ended normally)


class Streamer:
    """Runs stream_generate in a daemon thread; `stop()` ends it at the next token."""

    def __init__(self, signals: _StreamSignals, pane: str, run_id: int, work: Any):
        self.stop_event = threading.Event()
        self.pane, self.run_id = pane, run_id
        self.thread = threading.Thread(
            target=self._run, args=(signals, work), daemon=True, name=f"emgui-{pane}"
        )
        self.thread.start()

    def _run(self, signals: _StreamSignals, work: Any) -> None:
        try:
            for step in work(self.stop_event.is_set):
                signals.token.emit(self.pane, self.run_id, step)
            signals.done.emit(self.pane, self.run_id, "")
        except Exception as exc:  # noqa: BLE001 - shown in the pane, never raised into Qt
            text = str(exc) if isinstance(exc, EmguiError) else f"{type(exc).__name__}: {exc}"
            signals.done.emit(self.pane, self.run_id, text)

    def stop(self) -> None:
        self.stop_event.set()


# ----- interventions ------------------------------------------------------------------------------------------


class InterventionRow(QFrame):
    """One intervention: its name, method, strength (slider and box) and an on/off box."""

    def __init__(self, page: LiveTab, item: st.Intervention, scale: float):
        super().__init__()
        self.setObjectName("card")
        self.page, self.item = page, item
        layout = QGridLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        label = item.label or "intervention"
        self.enabled = QCheckBox(label if len(label) <= 26 else label[:25] + "…")  # the sidebar is narrow
        self.enabled.setChecked(item.enabled)
        self.enabled.setToolTip(f"{label}\nTurn this intervention on or off")
        remove = QPushButton("×")
        remove.setFixedWidth(30)
        remove.setStyleSheet("padding: 2px 4px")
        remove.setToolTip("Remove")
        remove.clicked.connect(lambda: page.remove_row(self))
        self.method = QComboBox()
        self.method.addItems(st.METHODS)
        self.method.setCurrentText(item.method)
        self.method.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.method.setMinimumContentsLength(6)
        self.method.setToolTip(
            "add: h + strength·u · ablate: remove the component along u · clamp: set the projection (a latent's "
            "activation, keeping the SAE's error) to the strength"
        )
        self.scale = scale
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setMinimumWidth(40)
        self.slider.setRange(-SLIDER_STEPS, SLIDER_STEPS)
        self.value = _spin(QDoubleSpinBox(), -1e5, 1e5, item.strength, "strength", scale / 20)
        self.value.setDecimals(2)
        self.value.setFixedWidth(84)
        self._sync_slider()
        layout.addWidget(self.enabled, 0, 0, 1, 2)
        layout.addWidget(remove, 0, 2)
        layout.addWidget(self.method, 1, 0)
        layout.addWidget(self.slider, 1, 1)
        layout.addWidget(self.value, 1, 2)
        layout.setColumnStretch(1, 1)
        self.enabled.toggled.connect(self._changed)
        self.method.currentTextChanged.connect(self._changed)
        self.slider.valueChanged.connect(self._slid)
        self.value.valueChanged.connect(self._typed)

    def _sync_slider(self) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(int(round(max(-1.0, min(1.0, self.value.value() / self.scale)) * SLIDER_STEPS)))
        self.slider.blockSignals(False)

    def _slid(self, position: int) -> None:
        self.value.blockSignals(True)
        self.value.setValue(position / SLIDER_STEPS * self.scale)
        self.value.blockSignals(False)
        self._changed()

    def _typed(self, _value: float) -> None:
        self._sync_slider()
        self._changed()

    def _changed(self, *_args: Any) -> None:
        self.slider.setEnabled(self.method.currentText() != "ablate")
        self.value.setEnabled(self.method.currentText() != "ablate")
        self.page.spec_changed()

    def set_strength(self, value: float) -> None:
        self.value.setValue(value)

    def intervention(self) -> st.Intervention:
        item = st.Intervention(**{**self.item.__dict__})
        item.strength = float(self.value.value())
        item.method = self.method.currentText()
        item.enabled = self.enabled.isChecked()
        item.clamp_value = None
        return item


class LatentDialog(QDialog):
    """Pick an SAE of the project and a latent number."""

    def __init__(self, parent: QWidget, saes: list[dict]):
        super().__init__(parent)
        self.setWindowTitle("Add an SAE latent")
        form = QFormLayout(self)
        self.sae = QComboBox()
        for row in saes:
            self.sae.addItem(f"{row['name']} ({row['hook_name']}, {row['d_sae']} latents)", row["id"])
        self.latent = _spin(QSpinBox(), 0, 10**7, 0, "latent index")
        form.addRow("SAE", self.sae)
        form.addRow("Latent", self.latent)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)


# ----- the Live tab ---------------------------------------------------------------------------------------------


class LiveTab(QWidget):
    def __init__(self, page: SteerPage):
        super().__init__()
        self.page = page
        self.rows: list[InterventionRow] = []
        self.loaded: dict[str, Any] = {}  # model_id, model, tokenizer
        self.loading = False
        self.sae_cache: dict = {}
        self.streams: dict[str, Streamer] = {}
        self.run_ids = {"base": 0, "steered": 0}
        self.signals = _StreamSignals()
        self.signals.token.connect(self._on_token)
        self.signals.done.connect(self._on_done)
        self.debounce = QTimer(self)
        self.debounce.setSingleShot(True)
        self.debounce.timeout.connect(lambda: self.start(steered_only=True))
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self._build_sidebar())
        split.addWidget(self._build_main())
        split.setSizes([340, 700])  # the sidebar shows an intervention row whole at 1280 px
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 6, 0, 0)
        layout.addWidget(split)

    # ----- building -------------------------------------------------------------------------------------
    def _build_sidebar(self) -> QWidget:
        side = QWidget()
        layout = QVBoxLayout(side)
        layout.setContentsMargins(0, 0, 6, 0)
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("The model to steer (loaded on first use)")
        self.model_combo.currentIndexChanged.connect(self._model_chosen)
        layout.addWidget(QLabel("Model"))
        layout.addWidget(self.model_combo)
        presets = QHBoxLayout()
        self.preset_combo = QComboBox()
        self.preset_combo.setProperty("minChars", 6)
        self.preset_combo.setPlaceholderText("presets")
        self.preset_combo.activated.connect(lambda _i: self.load_preset(self.preset_combo.currentText()))
        save = QPushButton("Save…")
        save.setToolTip("Save the interventions and settings as a preset of this project")
        save.clicked.connect(self.save_preset_dialog)
        delete = QPushButton("Delete")
        delete.clicked.connect(self.delete_preset)
        presets.addWidget(self.preset_combo, 1)
        presets.addWidget(save)
        presets.addWidget(delete)
        layout.addLayout(presets)
        add = QHBoxLayout()
        self.direction_combo = QComboBox()
        self.direction_combo.setProperty("minChars", 6)
        self.direction_combo.setToolTip(
            "Stored directions (persona vectors, differences of means, imported files)"
        )
        add_direction = QPushButton("Add")
        add_direction.clicked.connect(lambda: self.add_direction(_combo_data(self.direction_combo)))
        add_latent = QPushButton("Add latent…")
        add_latent.setToolTip("Steer an SAE latent (also sent from the feature browser)")
        add_latent.clicked.connect(self.add_latent_dialog)
        add.addWidget(self.direction_combo, 1)
        add.addWidget(add_direction)
        layout.addLayout(add)
        layout.addWidget(add_latent)
        self.rows_box = QVBoxLayout()
        self.rows_box.setSpacing(6)
        holder = QWidget()
        holder_layout = QVBoxLayout(holder)
        holder_layout.setContentsMargins(0, 0, 0, 0)
        holder_layout.addLayout(self.rows_box)
        holder_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # rows fit the sidebar
        scroll.setWidget(holder)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        layout.addWidget(scroll, 1)
        self.empty_hint = hint("No interventions yet: add a direction or an SAE latent.")
        self.rows_box.addWidget(self.empty_hint)
        form = QFormLayout()
        self.positions = QComboBox()
        self.positions.addItems(st.POSITIONS)
        self.positions.setToolTip(
            "prompt: the prompt's tokens · answer: from the last prompt token on · all: both"
        )
        self.positions.currentTextChanged.connect(lambda _t: self.spec_changed())
        self.layer = QComboBox()
        self.layer.setToolTip("Where directions are added (latents act at their SAE's hook)")
        self.layer.currentIndexChanged.connect(lambda _i: self.spec_changed())
        form.addRow("Positions", self.positions)
        form.addRow("Layer", self.layer)
        layout.addLayout(form)
        return side

    def _build_main(self) -> QWidget:
        main = QWidget()
        layout = QVBoxLayout(main)
        layout.setContentsMargins(6, 0, 0, 0)
        self.system_edit = QLineEdit()
        self.system_edit.setPlaceholderText("System prompt (optional)")
        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setPlaceholderText("Ask something, e.g. I'm bored. What should I do?")
        self.prompt_edit.setMaximumHeight(80)
        layout.addWidget(self.system_edit)
        layout.addWidget(self.prompt_edit)
        row = QHBoxLayout()
        self.seed = _spin(QSpinBox(), 0, 2**31 - 1, 0, "seed: both answers draw the same random numbers")
        self.temperature = _spin(QDoubleSpinBox(), 0.0, 2.0, 0.0, "temperature (0 = greedy)", 0.1)
        self.max_tokens = _spin(QSpinBox(), 1, 4096, 128, "max new tokens")
        self.colour_box = QCheckBox("log-prob colours")
        self.colour_box.setChecked(True)
        self.colour_box.setToolTip("Colour each token by its probability; hover a token for details")
        self.colour_box.toggled.connect(self._colour_toggled)
        for label, widget, width in (
            ("seed", self.seed, 96), ("temperature", self.temperature, 72), ("tokens", self.max_tokens, 80)
        ):
            row.addWidget(QLabel(label))
            widget.setFixedWidth(width)  # a seed box sized for 2^31 would widen the page past 1280 px
            row.addWidget(widget)
        row.addStretch(1)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        self.generate_button = QPushButton("Generate")
        self.generate_button.setObjectName("primary")
        self.generate_button.clicked.connect(lambda: self.start())
        row.addWidget(self.stop_button)
        row.addWidget(self.generate_button)
        layout.addLayout(row)
        panes = QHBoxLayout()
        self.views: dict[str, TokenView] = {}
        self.status_labels: dict[str, QLabel] = {}
        for pane, title in (("base", "Unsteered"), ("steered", "Steered")):
            box = QVBoxLayout()
            head = QHBoxLayout()
            head.addWidget(heading(title, 2))
            label = QLabel("")
            label.setObjectName("hint")
            head.addStretch(1)
            head.addWidget(label)
            if pane == "steered":
                head.addWidget(self.colour_box)
            box.addLayout(head)
            view = TokenView()
            box.addWidget(view, 1)
            self.views[pane], self.status_labels[pane] = view, label
            panes.addLayout(box, 1)
        layout.addLayout(panes, 1)
        self.message = hint("")
        layout.addWidget(self.message)
        return main

    # ----- project --------------------------------------------------------------------------------------
    @property
    def project(self) -> Any:
        return self.page.project

    def refresh(self) -> None:
        project = self.project
        current = _combo_data(self.model_combo)
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        if project is not None:
            for m in project.list_models():
                self.model_combo.addItem(m["name"], m["id"])
        if current is not None:
            _select_data(self.model_combo, current)
        self.model_combo.blockSignals(False)
        self._fill_directions()
        self._fill_layers()
        self._fill_presets()

    def _fill_directions(self) -> None:
        current = _combo_data(self.direction_combo)
        self.direction_combo.clear()
        if self.project is None:
            return
        model_id = _combo_data(self.model_combo)
        for d in st.list_directions(self.project):
            mark = "" if d["model_id"] in (None, model_id) else " · other model"
            self.direction_combo.addItem(f"{d['name']} ({d['kind']}, L{d['layer']}){mark}", d["id"])
        if current is not None:
            _select_data(self.direction_combo, current)

    def _fill_layers(self) -> None:
        current = _combo_data(self.layer)
        self.layer.blockSignals(True)
        self.layer.clear()
        self.layer.addItem("each direction's own", None)
        model = self._model_row()
        count = st.model_layer_count(self.project, model) if model else None
        for i in range(count or 0):
            self.layer.addItem(f"layer {i}", i)
        _select_data(self.layer, current)
        self.layer.blockSignals(False)

    def _fill_presets(self) -> None:
        self.preset_combo.clear()
        if self.project is not None:
            self.preset_combo.addItems([p["name"] for p in st.list_presets(self.project)])
        self.preset_combo.setCurrentIndex(-1)

    def _model_row(self) -> dict | None:
        model_id = _combo_data(self.model_combo)
        if self.project is None or model_id is None:
            return None
        try:
            return self.project.get_model(model_id)
        except EmguiError:
            return None

    def _model_chosen(self, _index: int) -> None:
        self.stop()
        self.loaded = {}  # the next Generate loads the newly chosen model
        self.sae_cache = {}
        self._fill_directions()
        self._fill_layers()

    # ----- interventions --------------------------------------------------------------------------------
    def add_direction(
        self, direction_id: int | None, strength: float | None = None
    ) -> InterventionRow | None:
        if direction_id is None or self.project is None:
            return None
        row = st.get_direction_row(self.project, direction_id)
        scale = max(1.0, 2 * float(row["norm"] or 1.0))
        item = st.Intervention(
            "direction", direction_id=row["id"], label=row["name"], strength=strength or 0.0
        )
        return self._add_row(item, scale)

    def add_latent(self, sae_id: int, latent: int, strength: float | None = None) -> InterventionRow:
        """Add an SAE latent (the feature browser calls this, then shows the page)."""
        name = f"SAE {sae_id}"
        if self.project is not None:
            found = self.project.query_one("SELECT name FROM saes WHERE id = ?", [sae_id])
            name = found["name"] if found else name
        item = st.Intervention(
            "latent",
            sae_id=int(sae_id),
            latent=int(latent),
            label=f"{name} #{latent}",
            strength=strength or 0.0,
        )
        return self._add_row(item, 100.0)

    def add_latent_dialog(self) -> None:
        if self.project is None:
            return
        saes = self.project.query("SELECT * FROM saes ORDER BY id")
        if not saes:
            show_error(
                self, "No SAE", "This project has no SAE yet: train or import one on the Features page."
            )
            return
        dialog = LatentDialog(self, saes)
        if dialog.exec():
            self.add_latent(dialog.sae.currentData(), dialog.latent.value())

    def _add_row(self, item: st.Intervention, scale: float) -> InterventionRow:
        row = InterventionRow(self, item, scale)
        self.rows.append(row)
        self.rows_box.addWidget(row)
        self.empty_hint.setVisible(False)
        self.spec_changed()
        return row

    def remove_row(self, row: InterventionRow) -> None:
        self.rows.remove(row)
        row.setParent(None)
        row.deleteLater()
        self.empty_hint.setVisible(not self.rows)
        self.spec_changed()

    def clear_rows(self) -> None:
        for row in list(self.rows):
            self.remove_row(row)

    def spec(self) -> st.SteeringSpec:
        return st.SteeringSpec(
            [r.intervention() for r in self.rows],
            positions=self.positions.currentText(),
            layer=_combo_data(self.layer),
        )

    def spec_changed(self) -> None:
        """A slider or setting moved: restart the steered answer after a short pause."""
        if "steered" in self.streams or self.views["steered"].steps:
            self.debounce.start(DEBOUNCE_MS)

    # ----- presets --------------------------------------------------------------------------------------
    def ui_settings(self) -> dict:
        return {
            "model_id": _combo_data(self.model_combo),
            "system": self.system_edit.text(),
            "prompt": self.prompt_edit.toPlainText(),
            "seed": self.seed.value(),
            "temperature": self.temperature.value(),
            "max_new_tokens": self.max_tokens.value(),
        }

    def save_preset(self, name: str) -> None:
        st.save_preset(self.project, name, self.spec(), self.ui_settings())
        self._fill_presets()
        self.preset_combo.setCurrentText(name)

    def save_preset_dialog(self) -> None:
        if self.project is None:
            return
        name, ok = QInputDialog.getText(self, "Save preset", "Preset name")
        if ok and name.strip():
            try:
                self.save_preset(name.strip())
            except EmguiError as exc:
                show_error(self, "Cannot save the preset", str(exc))

    def load_preset(self, name: str) -> None:
        if self.project is None or not name:
            return
        try:
            spec, ui = st.load_preset(self.project, name)
        except EmguiError as exc:
            show_error(self, "Cannot load the preset", str(exc))
            return
        self.stop()
        if ui.get("model_id") is not None:
            _select_data(self.model_combo, ui["model_id"])
        self.clear_rows()
        for item in spec.interventions:
            try:
                row = (
                    self.add_direction(item.direction_id, item.strength)
                    if item.type == "direction"
                    else self.add_latent(item.sae_id, item.latent, item.strength)
                )
            except EmguiError as exc:
                self.message.setText(f"preset '{name}': {exc}")
                continue
            if row is not None:
                row.method.setCurrentText(item.method)
                row.enabled.setChecked(item.enabled)
        self.positions.setCurrentText(spec.positions)
        _select_data(self.layer, spec.layer)
        self.system_edit.setText(ui.get("system", ""))
        self.prompt_edit.setPlainText(ui.get("prompt", ""))
        self.seed.setValue(int(ui.get("seed", 0)))
        self.temperature.setValue(float(ui.get("temperature", 0.0)))
        self.max_tokens.setValue(int(ui.get("max_new_tokens", 128)))
        self.preset_combo.setCurrentText(name)

    def delete_preset(self) -> None:
        name = self.preset_combo.currentText()
        if self.project is not None and name:
            st.delete_preset(self.project, name)
            self._fill_presets()

    # ----- generation -----------------------------------------------------------------------------------
    def messages(self) -> list[dict]:
        msgs = (
            [{"role": "system", "content": self.system_edit.text().strip()}]
            if self.system_edit.text().strip()
            else []
        )
        return [*msgs, {"role": "user", "content": self.prompt_edit.toPlainText().strip()}]

    def start(self, steered_only: bool = False) -> None:
        """(Re)start the answers: both, or only the steered one when a slider moved."""
        model_row = self._model_row()
        if model_row is None or not self.prompt_edit.toPlainText().strip():
            self.message.setText("Choose a model and write a prompt.")
            return
        if self.loaded.get("model_id") != model_row["id"]:
            self._load_then_start(model_row)
            return
        panes = ["steered"] if steered_only else ["base", "steered"]
        spec = self.spec()
        settings = {
            "messages": self.messages(),
            "seed": self.seed.value(),
            "temperature": self.temperature.value(),
            "max_new_tokens": self.max_tokens.value(),
        }
        for pane in panes:
            self._start_pane(pane, spec if pane == "steered" else None, settings)
        self.message.setText("")

    def _start_pane(self, pane: str, spec: st.SteeringSpec | None, settings: dict) -> None:
        old = self.streams.pop(pane, None)
        if old is not None:
            old.stop()
        self.run_ids[pane] += 1
        self.views[pane].clear_tokens("…")
        self.status_labels[pane].setText("starting")
        model, tokenizer, project, cache = (
            self.loaded["model"],
            self.loaded["tokenizer"],
            self.project,
            self.sae_cache,
        )

        def work(should_stop: Any) -> Any:
            steering = (
                st.resolve(project, spec, model, sae_cache=cache) if spec and spec.interventions else None
            )
            return st.stream_generate(
                model,
                tokenizer,
                settings["messages"],
                steering,
                seed=settings["seed"],
                temperature=settings["temperature"],
                max_new_tokens=settings["max_new_tokens"],
                should_stop=should_stop,
                this_thread_only=True,
            )

        self.streams[pane] = Streamer(self.signals, pane, self.run_ids[pane], work)

    def _load_then_start(self, model_row: dict) -> None:
        if self.loading:
            return
        self.loading = True
        self.generate_button.setEnabled(False)
        self.message.setText(f"loading {model_row['name']}…")
        project = self.project

        def load() -> dict:
            from emgui.core.loading import load_model, load_tokenizer

            return {
                "model_id": model_row["id"],
                "model": load_model(project, model_row),
                "tokenizer": load_tokenizer(project, model_row),
            }

        def done(result: dict) -> None:
            self.loading = False
            self.generate_button.setEnabled(True)
            self.loaded = result
            self.message.setText("")
            self.start()

        def failed(error: str) -> None:
            self.loading = False
            self.generate_button.setEnabled(True)
            self.message.setText(f"cannot load {model_row['name']}: {error.splitlines()[0]}")

        run_async(load, on_done=done, on_error=failed)

    def stop(self) -> None:
        for streamer in self.streams.values():
            streamer.stop()
        self.streams.clear()
        self.debounce.stop()

    def busy(self) -> bool:
        return bool(self.streams) or self.loading

    def _on_token(self, pane: str, run_id: int, step: Any) -> None:
        if run_id != self.run_ids[pane]:
            return  # a stopped stream's last tokens
        view = self.views[pane]
        if not view.steps:
            view.status = ""
        view.add(step)
        rate = len(view.steps) / max(step.seconds, 1e-6)
        first = view.steps[0].seconds
        self.status_labels[pane].setText(f"first token {first:.2f} s · {rate:.1f} tok/s")

    def _on_done(self, pane: str, run_id: int, error: str) -> None:
        if run_id != self.run_ids[pane]:
            return
        self.streams.pop(pane, None)
        view = self.views[pane]
        view.status = f"error: {error}" if error else ""
        view.render()
        if error:
            self.status_labels[pane].setText("failed")

    def _colour_toggled(self, on: bool) -> None:
        for view in self.views.values():
            view.colour = on
            view.render()


# ----- the Sweeps tab ------------------------------------------------------------------------------------------


class SweepsTab(QWidget):
    def __init__(self, page: SteerPage):
        super().__init__()
        self.page = page
        split = QSplitter(Qt.Orientation.Horizontal)
        form = QScrollArea()  # a long form must not force the window taller than a laptop screen
        form.setWidgetResizable(True)
        form.setFrameShape(QFrame.Shape.NoFrame)
        form.setWidget(self._build_form())
        split.addWidget(form)
        split.addWidget(self._build_results())
        split.setSizes([360, 860])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 6, 0, 0)
        layout.addWidget(split)

    def _build_form(self) -> QWidget:
        box = QWidget()
        layout = QVBoxLayout(box)
        layout.setContentsMargins(0, 0, 6, 0)
        form = QFormLayout()
        self.model = QComboBox()
        self.targets = QListWidget()
        self.targets.setToolTip("Check the directions to sweep")
        self.targets.setMaximumHeight(110)
        self.latents = QLineEdit()
        self.latents.setPlaceholderText("SAE latents, e.g. 1:417, 1:2301")
        self.strengths = QLineEdit("0, 4, 8, 16, 32")
        self.strengths.setToolTip("Strengths (alpha for add, values for clamp); negative steers away")
        self.layers = QLineEdit()
        self.layers.setPlaceholderText("layers, e.g. 10, 15, 20 (empty: each direction's own)")
        self.method = QComboBox()
        self.method.addItems(st.METHODS)
        self.positions = QComboBox()
        self.positions.addItems(st.POSITIONS)
        self.controls = _spin(QSpinBox(), 0, 10, 1, "random directions of equal norm per target")
        self.questions = QComboBox()
        self.n = _spin(QSpinBox(), 1, 1000, 5, "answers per question and condition")
        self.tokens = _spin(QSpinBox(), 8, 2048, 128, "max new tokens")
        self.temperature = _spin(QDoubleSpinBox(), 0.0, 2.0, 1.0, "temperature", 0.1)
        from emgui.ui.forms import apply_spec

        for widget, name in ((self.controls, "controls"), (self.n, "n"), (self.tokens, "max_new_tokens"),
                             (self.temperature, "temperature"), (self.method, "method"),
                             (self.positions, "positions"), (self.layers, "layers"), (self.latents, "latents")):  # fmt: skip
            apply_spec(widget, "steer-sweep", name)  # ranges, defaults and help from the declaration
        apply_spec(self.strengths, "steer-sweep", "strengths", set_default=False)  # the page suggests 32 too
        for label, widget in (
            ("Model", self.model),
            ("Directions", self.targets),
            ("Latents", self.latents),
            ("Strengths", self.strengths),
            ("Layers", self.layers),
            ("Method", self.method),
            ("Positions", self.positions),
            ("Controls", self.controls),
            ("Questions", self.questions),
            ("Answers", self.n),
            ("Tokens", self.tokens),
            ("Temperature", self.temperature),
        ):
            form.addRow(label, widget)
        layout.addLayout(form)
        layout.addWidget(hint("Answers are judged with the project's judge (set it on the Evaluate page)."))
        run = QPushButton("Run sweep")
        run.setObjectName("primary")
        run.clicked.connect(self.submit)
        layout.addWidget(run)
        layout.addSpacing(10)
        layout.addWidget(heading("Persona up and down: three sweeps", 2))
        layout.addWidget(
            hint(
                "The checked direction (or first latent) steered up in the base model, and down or "
                "ablated in the fine-tuned one, at the strengths above."
            )
        )
        seed_form = QFormLayout()
        self.base_model = QComboBox()
        self.ft_model = QComboBox()
        seed_form.addRow("Base", self.base_model)
        seed_form.addRow("Fine-tuned", self.ft_model)
        layout.addLayout(seed_form)
        run_seed = QPushButton("Run the three sweeps")
        run_seed.clicked.connect(self.submit_seed)
        layout.addWidget(run_seed)
        self.status = hint("")
        layout.addWidget(self.status)
        layout.addStretch(1)
        return box

    def _build_results(self) -> QWidget:
        box = QWidget()
        layout = QVBoxLayout(box)
        layout.setContentsMargins(6, 0, 0, 0)
        self.table = record_table(["Job", "Status", "Model", "Label", "Targets"])
        self.table.setMaximumHeight(150)
        self.table.itemSelectionChanged.connect(self.plot_selected)
        layout.addWidget(self.table)
        caveats = QHBoxLayout()
        self.notice = notice_label()
        caveats.addWidget(self.notice, 1)
        self.check_button = QPushButton("Check this judge")
        self.check_button.setToolTip("Run judge-check: score the labelled panel with the judge that scored this sweep")
        self.check_button.clicked.connect(self.check_judge)
        self.check_button.hide()
        caveats.addWidget(self.check_button, 0, Qt.AlignmentFlag.AlignTop)
        layout.addLayout(caveats)
        plots = QHBoxLayout()
        self.misaligned_plot = pg.PlotWidget(title="Misaligned % vs strength")
        self.coherence_plot = pg.PlotWidget(title="Coherence vs strength")
        for plot, label in ((self.misaligned_plot, "misaligned %"), (self.coherence_plot, "mean coherence")):
            plot.showGrid(x=True, y=True, alpha=0.2)
            plot.setLabel("bottom", "strength")
            plot.setLabel("left", label)
            plot.addLegend(offset=(-10, 10))
            plot.setYRange(0, 100)  # judges score 0-100
            plots.addWidget(plot, 1)
        layout.addLayout(plots, 1)
        self.result_label = hint(
            "Select a sweep to see its dose-response curves; dashed: random-direction controls."
        )
        layout.addWidget(self.result_label)
        return box

    @property
    def project(self) -> Any:
        return self.page.project

    def refresh(self) -> None:
        project = self.project
        if project is None:
            return
        models = project.list_models()
        for combo in (self.model, self.base_model, self.ft_model):
            current = _combo_data(combo)
            combo.clear()
            for m in models:
                combo.addItem(m["name"], m["id"])
            _select_data(combo, current)
        checked = {
            self.targets.item(i).data(Qt.ItemDataRole.UserRole)
            for i in range(self.targets.count())
            if self.targets.item(i).checkState() == Qt.CheckState.Checked
        }
        self.targets.clear()
        for d in st.list_directions(project):
            item = QListWidgetItem(f"{d['name']} ({d['kind']}, L{d['layer']})")
            item.setData(Qt.ItemDataRole.UserRole, d["id"])
            item.setCheckState(Qt.CheckState.Checked if d["id"] in checked else Qt.CheckState.Unchecked)
            self.targets.addItem(item)
        current = _combo_data(self.questions)
        self.questions.clear()
        self.questions.addItem("built-in (emgui-core)", "builtin")
        for ds in project.list_datasets("questions"):
            if ds["name"] != "emgui-core":
                self.questions.addItem(ds["name"], ds["name"])
        _select_data(self.questions, current)
        self._fill_table()

    def _fill_table(self) -> None:
        from emgui.core.sweep import list_sweeps

        selected = self.selected_job()
        self.table.blockSignals(True)
        self.table.setSortingEnabled(False)
        jobs = list_sweeps(self.project)
        self.table.setRowCount(len(jobs))
        for r, job in enumerate(jobs):
            p = job["params"]
            targets = ", ".join(map(str, [*(p.get("directions") or []), *(p.get("latents") or [])]))
            cells = [
                SortableItem(f"#{job['id']}", job["id"]),
                SortableItem(job["status"]),
                SortableItem(str(p.get("model", ""))),
                SortableItem(p.get("label", "")),
                SortableItem(targets),
            ]
            for c, cell in enumerate(cells):
                cell.setData(Qt.ItemDataRole.UserRole, job["id"])
                self.table.setItem(r, c, cell)
            if job["id"] == selected:
                self.table.selectRow(r)
        self.table.blockSignals(False)
        if selected is None and jobs and any(j["status"] == "succeeded" for j in jobs):
            first = next(i for i, j in enumerate(jobs) if j["status"] == "succeeded")
            self.table.selectRow(first)
        self.plot_selected()

    def selected_job(self) -> int | None:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        if not rows:
            return None
        return self.table.item(rows[0].row(), 0).data(Qt.ItemDataRole.UserRole)

    def plot_selected(self) -> None:
        job_id = self.selected_job()
        for plot in (self.misaligned_plot, self.coherence_plot):
            plot.clear()
        empty = None
        if job_id is None or self.project is None:
            empty = ("No sweep chosen. Run one with the form on the left: each strength's misaligned % and "
                     "coherence appear here, with random directions of equal norm as dashed controls.")  # fmt: skip
        else:
            job = self.project.get_job(job_id)
            result = job.get("result") or {}
            if job["status"] != "succeeded" or "curves" not in result:
                self.result_label.setText(f"sweep #{job_id} is {job['status']}: {job['message']}")
                empty = f"Sweep #{job_id} is {job['status']}: its curves appear here when it has finished."
        for plot in (self.misaligned_plot, self.coherence_plot):
            set_empty(plot, empty)
        if empty is None:
            self.draw(result)

    def draw(self, result: dict) -> int:
        """Draw a sweep's curves; returns the number of curves drawn (real and pooled controls). Without a
        validated judge the curves are grey and marked so."""
        from emgui.core.sweep import sweep_caveats

        drawn = 0
        for plot in (self.misaligned_plot, self.coherence_plot):
            plot.clear()
        caveats = sweep_caveats(self.project, result) if self.project is not None else {"warnings": []}
        valid = caveats.get("judge_valid") is True
        self.shown_judge = caveats.get("judge")
        set_notice(self.notice, [f"⚠ {w}" for w in caveats["warnings"]])
        self.check_button.setVisible(not valid and bool(self.shown_judge))
        for i, curve in enumerate(result["curves"]):
            color = PALETTE[i % len(PALETTE)] if valid else UNVALIDATED
            for points, dashed, suffix in (
                (curve["points"], False, ""),
                (curve.get("control_points") or [], True, " · random"),
            ):
                if not points:
                    continue
                drawn += 1
                style = Qt.PenStyle.DashLine if dashed else Qt.PenStyle.SolidLine
                pen = pg.mkPen(color, width=2, style=style)
                self._curve(
                    self.misaligned_plot, points, "misaligned_pct", pen, curve["label"] + suffix, True
                )
                self._curve(self.coherence_plot, points, "mean_coherent", pen, curve["label"] + suffix, False)
        base = result.get("baseline") or {}
        if base.get("misaligned_pct") is not None:
            line = pg.InfiniteLine(
                base["misaligned_pct"], angle=0, pen=pg.mkPen("#94a3b8", style=Qt.PenStyle.DotLine)
            )
            self.misaligned_plot.addItem(line)
        if not valid:
            mark_unvalidated(self.misaligned_plot)
        self.result_label.setText(
            f"{result.get('label') or 'sweep'} · model {result.get('model')} · method {result.get('method')} · "
            f"positions {result.get('positions')} · judge {result.get('judge')} · baseline misaligned "
            f"{base.get('misaligned_pct', float('nan')) if base.get('misaligned_pct') is not None else '–'} %"
        )
        return drawn

    @staticmethod
    def _curve(plot: Any, points: list[dict], key: str, pen: Any, name: str, errors: bool) -> None:
        pts = [p for p in points if p.get(key) is not None]
        if not pts:
            return
        xs = [p["strength"] for p in pts]
        ys = [p[key] for p in pts]
        plot.plot(xs, ys, pen=pen, symbol="o", symbolSize=6, symbolBrush=pen.color(), name=html.escape(name))
        if errors and all(p.get("ci_low") is not None for p in pts):
            import numpy as np

            err = pg.ErrorBarItem(
                x=np.array(xs),
                y=np.array(ys),
                top=np.array([p["ci_high"] - p[key] for p in pts]),
                bottom=np.array([p[key] - p["ci_low"] for p in pts]),
                beam=0.0,
                pen=pg.mkPen(pen.color(), width=1),
            )
            plot.addItem(err)

    def check_judge(self) -> int | None:
        """Validate the judge that scored the shown sweep (one click: the same judge, the built-in panel)."""
        from emgui.core.judgecheck import judge_params_from_id

        if self.page.bridge is None or not getattr(self, "shown_judge", None):
            return None
        try:
            job_id = self.page.bridge.submit("judge-check", judge_params_from_id(self.shown_judge))
        except EmguiError as exc:
            show_error(self, "Cannot check the judge", str(exc))
            return None
        self.status.setText(f"judge check #{job_id} queued")
        return job_id

    # ----- submitting -----------------------------------------------------------------------------------
    def _numbers(self, text: str, kind: type) -> list:
        try:
            return [kind(x) for x in text.replace(";", ",").split(",") if x.strip()]
        except ValueError:
            raise EmguiError(f"'{text}' is not a comma-separated list of numbers") from None

    def params(self) -> dict:
        directions = [
            self.targets.item(i).data(Qt.ItemDataRole.UserRole)
            for i in range(self.targets.count())
            if self.targets.item(i).checkState() == Qt.CheckState.Checked
        ]
        latents = [x.strip() for x in self.latents.text().split(",") if x.strip()]
        params = {
            "model": _combo_data(self.model),
            "directions": directions,
            "latents": latents,
            "strengths": self._numbers(self.strengths.text(), float),
            "method": self.method.currentText(),
            "positions": self.positions.currentText(),
            "controls": self.controls.value(),
            "questions": _combo_data(self.questions) or "builtin",
            "n": self.n.value(),
            "max_new_tokens": self.tokens.value(),
            "temperature": self.temperature.value(),
        }
        layers = self._numbers(self.layers.text(), int)
        if layers:
            params["layers"] = layers
        return params

    def submit(self) -> int | None:
        if self.page.bridge is None:
            return None
        try:
            params = self.params()
            if not params["directions"] and not params["latents"]:
                raise EmguiError("check a direction or give a latent to sweep")
            job_id = self.page.bridge.submit("steer-sweep", params)
        except EmguiError as exc:
            show_error(self, "Cannot start the sweep", str(exc))
            return None
        self.status.setText(f"sweep #{job_id} queued")
        self._fill_table()
        self.page.follow(job_id)
        return job_id

    def submit_seed(self) -> list[int]:
        from emgui.core.sweep import seed_experiments

        if self.page.bridge is None:
            return []
        try:
            params = self.params()
            target = {"direction": params["directions"][0]} if params["directions"] else {}
            if not target and params["latents"]:
                target = {"latent": params["latents"][0]}
            base, ft = _combo_data(self.base_model), _combo_data(self.ft_model)
            strengths = [s for s in params["strengths"] if s >= 0] or None
            experiments = seed_experiments(
                base, ft, strengths=strengths, questions=params["questions"], n=params["n"], **target
            )
            shared = {k: params[k] for k in ("positions", "controls", "max_new_tokens", "temperature")}
            ids = [self.page.bridge.submit("steer-sweep", {**p, **shared}) for _, p in experiments]
        except EmguiError as exc:
            show_error(self, "Cannot start the experiments", str(exc))
            return []
        self.status.setText("queued sweeps " + ", ".join(f"#{i}" for i in ids))
        self._fill_table()
        self.page.follow(ids[0] if ids else None)
        return ids


# ----- the Directions tab -------------------------------------------------------------------------------------


class PersonaDialog(QDialog):
    """Edit a persona definition (YAML); it is saved into the project, which then uses it."""

    def __init__(self, parent: QWidget, project: Any, name: str):
        super().__init__(parent)
        self.project, self.name = project, name
        self.setWindowTitle(f"Persona '{name}'")
        self.resize(760, 600)
        layout = QVBoxLayout(self)
        layout.addWidget(
            hint(
                "Positive system prompts elicit the trait, negative ones its opposite; the questions "
                "are neutral. Saved in this project (the built-in definition stays as it is)."
            )
        )
        self.edit = QPlainTextEdit(personas.load_persona(name, project).text)
        layout.addWidget(self.edit, 1)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.save)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def save(self) -> None:
        try:
            personas.save_persona_text(self.project, self.name, self.edit.toPlainText())
        except EmguiError as exc:
            show_error(self, "Cannot save the persona", str(exc))
            return
        self.accept()


DIRECTION_COLUMNS = ["Name", "Kind", "Model", "Hook", "Layer", "Norm", "Job"]
RANK_COLUMNS = ["Rank", "Line", "Projection", "Flagged", "User", "Answer"]


class DirectionsTab(QWidget):
    def __init__(self, page: SteerPage):
        super().__init__()
        self.page = page
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 6, 0, 0)
        split = QSplitter(Qt.Orientation.Vertical)
        top = QWidget()
        top_layout = QHBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        left = QVBoxLayout()
        self.table = record_table(DIRECTION_COLUMNS, stretch=0)
        self.table.itemSelectionChanged.connect(self._show_selected)
        left.addWidget(self.table, 1)
        buttons = QHBoxLayout()
        for text, slot in (
            ("Steer with it", self.steer_selected),
            ("Import .safetensors…", self.import_dialog),
            ("Delete", self.delete_selected),
        ):
            b = QPushButton(text)
            b.clicked.connect(slot)
            buttons.addWidget(b)
        more = QToolButton()
        more.setText("More")
        more.setToolTip("Other ways to make and use directions, each with all its settings")
        more.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(more)
        for text, kind in (
            ("Direction from two datasets…", "diff-means"),
            ("Project a run's answers on a direction…", "persona-projection"),
            ("Persona vector, with all settings…", "persona-vector"),
            ("Screen a dataset, with all settings…", "persona-screen"),
            ("Import a direction file as a job…", "direction-import"),
        ):
            menu.addAction(text).triggered.connect(lambda _=False, k=kind: self.open_job_dialog(k))
        more.setMenu(menu)
        buttons.addWidget(more)
        buttons.addStretch(1)
        left.addLayout(buttons)
        top_layout.addLayout(left, 3)
        self.layer_plot = pg.PlotWidget(title="Separation by layer (held-out d′)")
        self.layer_plot.showGrid(x=True, y=True, alpha=0.2)
        self.layer_plot.setLabel("bottom", "layer")
        top_layout.addWidget(self.layer_plot, 2)
        split.addWidget(top)
        split.addWidget(self._build_jobs())
        split.setSizes([300, 380])
        layout.addWidget(split)
        self.info = hint("")
        layout.addWidget(self.info)

    def _build_jobs(self) -> QWidget:
        box = QWidget()
        layout = QHBoxLayout(box)
        layout.setContentsMargins(0, 6, 0, 0)
        forms = QVBoxLayout()
        forms.addWidget(heading("Persona vector", 2))
        pform = QFormLayout()
        self.pv_model = QComboBox()
        prow = QHBoxLayout()
        self.persona = QComboBox()
        edit = QPushButton("Edit…")
        edit.clicked.connect(self.edit_persona)
        prow.addWidget(self.persona, 1)
        prow.addWidget(edit)
        self.pv_questions = _spin(
            QSpinBox(), 1, 1000, 20, "questions to answer (each under one + and one − prompt)"
        )
        self.pv_tokens = _spin(QSpinBox(), 4, 1024, 64, "max new tokens per answer")
        from emgui.ui.forms import apply_spec

        apply_spec(self.pv_questions, "persona-vector", "n_questions")
        apply_spec(self.pv_tokens, "persona-vector", "max_new_tokens")
        pform.addRow("Model", self.pv_model)
        pform.addRow("Persona", prow)
        pform.addRow("Questions", self.pv_questions)
        pform.addRow("Tokens", self.pv_tokens)
        forms.addLayout(pform)
        build = QPushButton("Build persona vector")
        build.setObjectName("primary")
        build.clicked.connect(self.submit_persona)
        forms.addWidget(build)
        forms.addSpacing(8)
        forms.addWidget(heading("Screen a dataset", 2))
        sform = QFormLayout()
        self.sc_model = QComboBox()
        self.sc_dataset = QComboBox()
        self.sc_top = _spin(QDoubleSpinBox(), 0.1, 100.0, 10.0, "flag this top share (%) of samples", 1.0)
        self.sc_write = QCheckBox("write the filtered dataset")
        sform.addRow("Model", self.sc_model)
        sform.addRow("Dataset", self.sc_dataset)
        sform.addRow("Flag top %", self.sc_top)
        sform.addRow("", self.sc_write)
        forms.addLayout(sform)
        screen = QPushButton("Screen with the selected direction")
        screen.clicked.connect(self.submit_screen)
        forms.addWidget(screen)
        self.status = hint("")
        forms.addWidget(self.status)
        forms.addStretch(1)
        layout.addLayout(forms, 2)
        right = QVBoxLayout()
        head = QHBoxLayout()
        head.addWidget(QLabel("Screening"))
        self.screen_jobs = QComboBox()
        self.screen_jobs.currentIndexChanged.connect(lambda _i: self.show_ranking())
        head.addWidget(self.screen_jobs, 1)
        write = QPushButton("Write filtered dataset")
        write.setToolTip("A new chat dataset without the flagged samples, with provenance")
        write.clicked.connect(self.write_filtered)
        head.addWidget(write)
        right.addLayout(head)
        self.ranking = QTableWidget(0, len(RANK_COLUMNS))
        self.ranking.setHorizontalHeaderLabels(RANK_COLUMNS)
        self.ranking.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.ranking.verticalHeader().setVisible(False)
        self.ranking.horizontalHeader().setSectionResizeMode(5, QHeaderView.ResizeMode.Stretch)
        right.addWidget(self.ranking, 1)
        layout.addLayout(right, 3)
        return box

    @property
    def project(self) -> Any:
        return self.page.project

    def refresh(self) -> None:
        project = self.project
        if project is None:
            return
        models = {m["id"]: m["name"] for m in project.list_models()}
        selected = self.selected_direction()
        rows = st.list_directions(project)
        self.table.blockSignals(True)
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(rows))
        for r, d in enumerate(rows):
            cells = [
                d["name"],
                d["kind"],
                models.get(d["model_id"], "–"),
                d["hook_name"],
                str(d["layer"]),
                f"{d['norm']:.3g}" if d["norm"] is not None else "–",
                f"#{d['job_id']}" if d["job_id"] else "",
            ]
            for c, text in enumerate(cells):
                item = SortableItem(text)
                item.setData(Qt.ItemDataRole.UserRole, d["id"])
                self.table.setItem(r, c, item)
            if d["id"] == selected:
                self.table.selectRow(r)
        self.table.blockSignals(False)
        for combo in (self.pv_model, self.sc_model):
            current = _combo_data(combo)
            combo.clear()
            for mid, name in models.items():
                combo.addItem(name, mid)
            _select_data(combo, current)
        current = self.persona.currentText()
        self.persona.clear()
        self.persona.addItems(personas.persona_names(project))
        if current:
            self.persona.setCurrentText(current)
        current = _combo_data(self.sc_dataset)
        self.sc_dataset.clear()
        for ds in project.list_datasets("chat"):
            self.sc_dataset.addItem(f"{ds['name']} ({ds['n_rows'] or '?'} chats)", ds["name"])
        _select_data(self.sc_dataset, current)
        current = _combo_data(self.screen_jobs)
        self.screen_jobs.blockSignals(True)
        self.screen_jobs.clear()
        for job in project.list_jobs("persona-screen"):
            if job["status"] == "succeeded":
                self.screen_jobs.addItem(
                    f"#{job['id']}: {job['params'].get('dataset')} on {job['params'].get('direction')}",
                    job["id"],
                )
        _select_data(self.screen_jobs, current)
        self.screen_jobs.blockSignals(False)
        self.show_ranking()
        self._show_selected()

    def selected_direction(self) -> int | None:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        return self.table.item(rows[0].row(), 0).data(Qt.ItemDataRole.UserRole) if rows else None

    def _show_selected(self) -> None:
        self.layer_plot.clear()
        direction_id = self.selected_direction()
        if direction_id is None or self.project is None:
            self.info.setText("")
            set_empty(self.layer_plot, "Select a direction to see how well each layer separates its two sides.")
            return
        row = st.get_direction_row(self.project, direction_id)
        info = row.get("info") or {}
        scores = info.get("scores") or []
        set_empty(self.layer_plot, None if scores else (
            "This direction has no per-layer scores: only persona vectors and directions from two datasets "
            "choose their layer by separation."
        ))  # fmt: skip
        if scores:
            xs = [s["layer"] for s in scores]
            self.layer_plot.plot(
                xs, [s["dprime"] for s in scores], pen=pg.mkPen(PALETTE[0], width=2), symbol="o", symbolSize=5
            )
            self.layer_plot.addItem(
                pg.InfiniteLine(row["layer"], angle=90, pen=pg.mkPen(PALETTE[1], style=Qt.PenStyle.DashLine))
            )
        bits = [f"{row['name']}: {row['kind']} at {row['hook_name']}, norm {row['norm']:.3g}"]
        if info.get("persona"):
            bits.append(
                f"persona '{info['persona']}', {info.get('n_positive')} + / {info.get('n_negative')} − answers"
            )
        if info.get("source"):
            bits.append(f"from {info['source']}")
        self.info.setText(" · ".join(bits))

    # ----- actions --------------------------------------------------------------------------------------
    def steer_selected(self) -> None:
        direction_id = self.selected_direction()
        if direction_id is not None:
            self.page.live.add_direction(direction_id)
            self.page.tabs.setCurrentWidget(self.page.live)

    def import_file(self, path: str, model: Any, layer: int, name: str | None = None) -> int:
        direction_id = st.import_direction_file(self.project, path, model=model, layer=layer, name=name)
        self.page.refresh()
        return direction_id

    def import_dialog(self) -> None:
        if self.project is None:
            return
        path, _ = QFileDialog.getOpenFileName(self, "Import a direction", "", "safetensors (*.safetensors)")
        if not path:
            return
        model = _combo_data(self.pv_model)
        layer, ok = QInputDialog.getInt(
            self, "Layer", "The layer whose output the direction belongs to", 0, 0, 1000
        )
        if not ok:
            return
        try:
            self.import_file(path, model, layer)
        except EmguiError as exc:
            show_error(self, "Cannot import the direction", str(exc))

    def delete_selected(self) -> None:
        direction_id = self.selected_direction()
        if direction_id is not None and self.project is not None:
            st.delete_direction(self.project, direction_id)
            self.page.refresh()

    def edit_persona(self) -> None:
        if self.project is not None and self.persona.currentText():
            PersonaDialog(self, self.project, self.persona.currentText()).exec()

    def open_job_dialog(self, kind: str) -> int | None:
        """Any direction kind with all its declared settings; the selected direction filled in."""
        from emgui.ui.forms import JobDialog

        if self.project is None:
            return None
        values: dict = {}
        direction_id = self.selected_direction()
        if direction_id is not None and kind in ("persona-projection", "persona-screen"):
            values["direction"] = st.get_direction_row(self.project, direction_id)["name"]
        self.job_dialog = JobDialog(self.page, kind, values=values)
        self.job_dialog.exec()
        return self.job_dialog.job_id

    def _submit(self, kind: str, params: dict) -> int | None:
        if self.page.bridge is None:
            return None
        try:
            job_id = self.page.bridge.submit(kind, params)
        except EmguiError as exc:
            show_error(self, f"Cannot start {kind}", str(exc))
            return None
        self.status.setText(f"{kind} #{job_id} queued")
        self.page.follow(job_id)
        return job_id

    def submit_persona(self) -> int | None:
        return self._submit(
            "persona-vector",
            {
                "model": _combo_data(self.pv_model),
                "persona": self.persona.currentText(),
                "n_questions": self.pv_questions.value(),
                "max_new_tokens": self.pv_tokens.value(),
            },
        )

    def submit_screen(self) -> int | None:
        direction_id = self.selected_direction()
        if direction_id is None:
            show_error(self, "No direction", "Select the direction to screen with in the table above.")
            return None
        return self._submit(
            "persona-screen",
            {
                "model": _combo_data(self.sc_model),
                "direction": direction_id,
                "dataset": _combo_data(self.sc_dataset),
                "flag_top": self.sc_top.value() / 100,
                "write_filtered": self.sc_write.isChecked(),
            },
        )

    def show_ranking(self) -> None:
        job_id = _combo_data(self.screen_jobs)
        self.ranking.setRowCount(0)
        if job_id is None or self.project is None:
            return
        try:
            rows = personas.read_ranking(self.project, job_id)["rows"]
        except (EmguiError, OSError, ValueError) as exc:
            self.status.setText(str(exc))
            return
        shown = rows[:500]
        self.ranking.setRowCount(len(shown))
        for r, row in enumerate(shown):
            value = row["projection"]
            cells = [
                SortableItem(str(row["rank"]), row["rank"]),
                SortableItem(str(row["line"]), row["line"]),
                SortableItem("–" if value is None else f"{value:.3f}", value if value is not None else -1e9),
                SortableItem("⚑" if row["flagged"] else ""),
                SortableItem(row["user"][:120]),
                SortableItem(row["answer"][:200]),
            ]
            for c, cell in enumerate(cells):
                self.ranking.setItem(r, c, cell)

    def write_filtered(self) -> None:
        job_id = _combo_data(self.screen_jobs)
        if job_id is None or self.project is None:
            return
        job = self.project.get_job(job_id)
        name, ok = QInputDialog.getText(
            self, "Filtered dataset", "Name", text=f"{job['params']['dataset']}-screened-{job_id}"
        )
        if not ok or not name.strip():
            return
        project = self.project

        def write() -> int:
            from emgui.core.training import resolve_dataset

            ranking = personas.read_ranking(project, job_id)
            path, source = resolve_dataset(project, job["params"]["dataset"], "persona-screen")
            inputs = [{"type": "artifact", "id": ranking["artifact_id"], "role": "ranking"}]
            if source:
                inputs.append({"type": "dataset", "id": source["id"]})
            return personas.write_filtered(project, path, ranking["rows"], name=name.strip(), inputs=inputs)

        run_async(
            write,
            on_done=lambda i: self.status.setText(f"wrote dataset #{i} '{name.strip()}'"),
            on_error=lambda e: show_error(self, "Cannot write the dataset", e.splitlines()[0]),
        )


# ----- the Monitor tab --------------------------------------------------------------------------------------------


class MonitorTab(QWidget):
    """A fine-tune's loss beside its persona projections, live."""

    def __init__(self, page: SteerPage):
        super().__init__()
        self.page = page
        self.job_id: int | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 6, 0, 0)
        row = QHBoxLayout()
        row.addWidget(QLabel("Fine-tune"))
        self.jobs = QComboBox()
        self.jobs.currentIndexChanged.connect(lambda _i: self.show_job(_combo_data(self.jobs)))
        row.addWidget(self.jobs, 1)
        layout.addLayout(row)
        layout.addWidget(
            hint(
                "Every N steps the monitor projects a fixed probe set (the last prompt token) on the "
                "chosen directions: persona/<name> rising is an early warning, before any evaluation. "
                "Start it with monitor_directions=… (and monitor_threshold=…) on a finetune job."
            )
        )
        self.grid = MetricGrid()
        layout.addWidget(self.grid, 1)
        self.warnings = QListWidget()
        self.warnings.setMaximumHeight(90)
        layout.addWidget(self.warnings)

    def refresh(self) -> None:
        project = self.page.project
        if project is None:
            return
        current = _combo_data(self.jobs)
        self.jobs.blockSignals(True)
        self.jobs.clear()
        for job in reversed(project.list_jobs("finetune")):
            monitored = any(n.startswith("persona/") for n in project.metric_names(job["id"]))
            self.jobs.addItem(
                f"#{job['id']} {job['params'].get('model')} on {job['params'].get('dataset')} "
                f"({job['status']}){' · monitored' if monitored else ''}",
                job["id"],
            )
        _select_data(self.jobs, current)
        self.jobs.blockSignals(False)
        self.show_job(_combo_data(self.jobs))

    def show_job(self, job_id: int | None) -> None:
        self.job_id = job_id
        self.grid.clear()
        self.warnings.clear()
        if job_id is None or self.page.project is None:
            return
        project = self.page.project
        names = [
            n for n in project.metric_names(job_id) if n in ("loss", "val_loss") or n.startswith("persona/")
        ]
        for name in sorted(names, key=lambda n: (not n.startswith("loss"), n)):
            points = project.metrics(job_id, name=name)
            self.grid.set_points(
                f"#{job_id}", name, [p["step"] for p in points], [p["value"] for p in points]
            )
        for line in project.logs(job_id):
            if line["text"].startswith("WARNING: persona/"):
                self.warnings.addItem(line["text"])
        self._threshold_lines(project.get_job(job_id)["params"])

    def _threshold_lines(self, params: dict) -> None:
        """The warning level on each persona plot: first value + threshold (mode rise) or the threshold."""
        threshold = params.get("monitor_threshold")
        if threshold is None:
            return
        for (_series, metric), (_xs, ys) in self.grid.data.items():
            if metric.startswith("persona/") and ys:
                level = float(threshold) + (ys[0] if params.get("monitor_mode", "rise") == "rise" else 0.0)
                pen = pg.mkPen("#dc2626", style=Qt.PenStyle.DashLine)
                self.grid.plot_for(metric).addItem(pg.InfiniteLine(level, angle=0, pen=pen))

    def on_metrics(self, job_id: int, rows: list) -> None:
        if job_id != self.job_id:
            return
        for step, name, value in rows:
            if name in ("loss", "val_loss") or name.startswith("persona/"):
                self.grid.append_points(f"#{job_id}", name, [step], [value])

    def on_log(self, job_id: int, lines: list) -> None:
        if job_id == self.job_id:
            for text in lines:
                if text.startswith("WARNING: persona/"):
                    self.warnings.addItem(text)


# ----- the page ---------------------------------------------------------------------------------------------------


class SteerPage(Page):
    key = "steer"
    title = "Steer"

    def __init__(self, window) -> None:
        super().__init__(window)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 20, 24, 12)
        layout.addWidget(heading("Steer"))
        layout.addWidget(
            hint(
                "Add or remove directions and SAE latents while the model answers; sweep strengths "
                "for a dose-response curve; build persona vectors and watch them during fine-tuning."
            )
        )
        self.tabs = QTabWidget()
        self.live = LiveTab(self)
        self.sweeps = SweepsTab(self)
        self.directions = DirectionsTab(self)
        self.monitor = MonitorTab(self)
        self.tabs.addTab(self.live, "Live")
        self.tabs.addTab(self.sweeps, "Sweeps")
        self.tabs.addTab(self.directions, "Directions")
        self.tabs.addTab(self.monitor, "Monitor")
        self.tabs.currentChanged.connect(lambda _i: self.refresh())
        layout.addWidget(self.tabs, 1)

    def project_changed(self) -> None:
        self.live.stop()
        self.live.loaded = {}
        self.live.clear_rows()
        if self.bridge is not None:
            self.bridge.jobStatus.connect(self._on_job_status)
            self.bridge.jobMetrics.connect(self.monitor.on_metrics)
            self.bridge.jobLog.connect(self.monitor.on_log)
        self.refresh()

    def refresh(self) -> None:
        if self.project is None:
            return
        self.live.refresh()
        current = self.tabs.currentWidget()
        if current is not self.live:
            current.refresh()

    def _on_job_status(self, job_id: int, status: str) -> None:
        if self.project is None or status == "running":
            return
        kind = self.project.get_job(job_id)["kind"]
        if kind in STEER_KINDS or kind == "finetune":
            self.refresh()

    # The feature browser sends latents here.
    def add_latent(self, sae_id: int, latent: int, strength: float | None = None) -> None:
        self.live.add_latent(sae_id, latent, strength)
        self.tabs.setCurrentWidget(self.live)
