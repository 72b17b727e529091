"""The Live tab: interventions with strength sliders, and an unsteered and a steered answer streamed side
by side."""

from __future__ import annotations

from contextlib import closing
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from emgui.core.errors import EmguiError
from emgui.core.features.saes import list_saes
from emgui.core.steering import steer as st
from emgui.ui.pages.steer.common import DEBOUNCE_MS, SLIDER_STEPS, combo_data, select_data, spin
from emgui.ui.pages.steer.tokens import TokenView
from emgui.ui.widgets import heading, hint, show_error

if TYPE_CHECKING:  # the page imports this module
    from emgui.ui.pages.steer.page import SteerPage

# ----- streaming: a task run by the job bridge ---------------------------------------------------------------


def live_answer(params: dict, ctx: Any) -> None:
    """A bridge task (a worker thread, never the UI thread): one answer, unsteered or steered, emitted
    token by token until it ends or the task is stopped. The model is borrowed from the model host and
    shared with the other pane and with jobs: the steering hooks act only on this thread's forwards."""
    from emgui.core.models.host import borrow_model

    spec, settings = params["spec"], params["settings"]
    with borrow_model(ctx.project, params["model_row"], host=ctx.host) as lease:
        steering = (
            st.resolve(ctx.project, spec, lease.model, sae_cache=params["sae_cache"])
            if spec and spec.interventions
            else None
        )
        stream = st.stream_generate(
            lease.model,
            lease.tokenizer,
            settings["messages"],
            steering,
            seed=settings["seed"],
            temperature=settings["temperature"],
            max_new_tokens=settings["max_new_tokens"],
            should_stop=lambda: ctx.cancelled,
            this_thread_only=True,
        )
        with closing(stream):  # its hooks come off before the model goes back to the host
            for step in stream:
                ctx.emit(step)


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
        self.value = spin(QDoubleSpinBox(), -1e5, 1e5, item.strength, "strength", scale / 20)
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
        self.latent = spin(QSpinBox(), 0, 10**7, 0, "latent index")
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
        self.sae_cache: dict = {}
        self.tasks: dict[str, int] = {}  # pane -> the bridge task streaming its answer
        self.run_ids = {"base": 0, "steered": 0}  # answers started per pane
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
        add_direction.clicked.connect(lambda: self.add_direction(combo_data(self.direction_combo)))
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
        self.seed = spin(QSpinBox(), 0, 2**31 - 1, 0, "seed: both answers draw the same random numbers")
        self.temperature = spin(QDoubleSpinBox(), 0.0, 2.0, 0.0, "temperature (0 = greedy)", 0.1)
        self.max_tokens = spin(QSpinBox(), 1, 4096, 128, "max new tokens")
        self.colour_box = QCheckBox("log-prob colours")
        self.colour_box.setChecked(True)
        self.colour_box.setToolTip("Colour each token by its probability; hover a token for details")
        self.colour_box.toggled.connect(self._colour_toggled)
        for label, widget, width in (
            ("seed", self.seed, 96),
            ("temperature", self.temperature, 72),
            ("tokens", self.max_tokens, 80),
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
        current = combo_data(self.model_combo)
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        if project is not None:
            for m in project.list_models():
                self.model_combo.addItem(m["name"], m["id"])
        if current is not None:
            select_data(self.model_combo, current)
        self.model_combo.blockSignals(False)
        self._fill_directions()
        self._fill_layers()
        self._fill_presets()

    def _fill_directions(self) -> None:
        current = combo_data(self.direction_combo)
        self.direction_combo.clear()
        if self.project is None:
            return
        model_id = combo_data(self.model_combo)
        for d in st.list_directions(self.project):
            mark = "" if d["model_id"] in (None, model_id) else " · other model"
            self.direction_combo.addItem(f"{d['name']} ({d['kind']}, L{d['layer']}){mark}", d["id"])
        if current is not None:
            select_data(self.direction_combo, current)

    def _fill_layers(self) -> None:
        current = combo_data(self.layer)
        self.layer.blockSignals(True)
        self.layer.clear()
        self.layer.addItem("each direction's own", None)
        model = self._model_row()
        count = st.model_layer_count(self.project, model) if model else None
        for i in range(count or 0):
            self.layer.addItem(f"layer {i}", i)
        select_data(self.layer, current)
        self.layer.blockSignals(False)

    def _fill_presets(self) -> None:
        self.preset_combo.clear()
        if self.project is not None:
            self.preset_combo.addItems([p["name"] for p in st.list_presets(self.project)])
        self.preset_combo.setCurrentIndex(-1)

    def _model_row(self) -> dict | None:
        model_id = combo_data(self.model_combo)
        if self.project is None or model_id is None:
            return None
        try:
            return self.project.get_model(model_id)
        except EmguiError:
            return None

    def _model_chosen(self, _index: int) -> None:
        self.stop()
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
            found = [s for s in list_saes(self.project) if s["id"] == sae_id]
            name = found[0]["name"] if found else name
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
        saes = list_saes(self.project)
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
            layer=combo_data(self.layer),
        )

    def spec_changed(self) -> None:
        """A slider or setting moved: restart the steered answer after a short pause."""
        if "steered" in self.tasks or self.views["steered"].steps:
            self.debounce.start(DEBOUNCE_MS)

    # ----- presets --------------------------------------------------------------------------------------
    def ui_settings(self) -> dict:
        return {
            "model_id": combo_data(self.model_combo),
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
            select_data(self.model_combo, ui["model_id"])
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
        select_data(self.layer, spec.layer)
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
        panes = ["steered"] if steered_only else ["base", "steered"]
        spec = self.spec()
        settings = {
            "messages": self.messages(),
            "seed": self.seed.value(),
            "temperature": self.temperature.value(),
            "max_new_tokens": self.max_tokens.value(),
        }
        for pane in panes:
            self._start_pane(pane, model_row, spec if pane == "steered" else None, settings)
        self.message.setText("")

    def _start_pane(self, pane: str, model_row: dict, spec: st.SteeringSpec | None, settings: dict) -> None:
        """Stream one pane's answer through the bridge; a running one is stopped first (its last tokens,
        still queued, are ignored)."""
        bridge = self.page.bridge
        old = self.tasks.pop(pane, None)
        if old is not None:
            bridge.cancel_task(old)
        self.run_ids[pane] += 1
        self.views[pane].clear_tokens("…")
        self.status_labels[pane].setText("starting")
        params = {"model_row": model_row, "spec": spec, "settings": settings, "sae_cache": self.sae_cache}
        self.tasks[pane] = bridge.start_task(live_answer, params, name=f"steer-{pane}")

    def stop(self) -> None:
        bridge = self.page.bridge
        for task_id in self.tasks.values():
            if bridge is not None:
                bridge.cancel_task(task_id)
        self.tasks.clear()
        self.debounce.stop()

    def busy(self) -> bool:
        return bool(self.tasks)

    def _pane_of(self, task_id: int) -> str | None:
        return next((pane for pane, tid in self.tasks.items() if tid == task_id), None)

    def on_task_item(self, task_id: int, step: Any) -> None:
        """A token of a pane's current answer (the bridge's taskItem, in the UI thread)."""
        pane = self._pane_of(task_id)
        if pane is None:
            return  # a stopped answer's last tokens, or another page's task
        view = self.views[pane]
        if not view.steps:
            view.status = ""
        view.add(step)
        rate = len(view.steps) / max(step.seconds, 1e-6)
        first = view.steps[0].seconds
        self.status_labels[pane].setText(f"first token {first:.2f} s · {rate:.1f} tok/s")

    def on_task_done(self, task_id: int, error: str) -> None:
        pane = self._pane_of(task_id)
        if pane is None:
            return
        self.tasks.pop(pane, None)
        view = self.views[pane]
        view.status = f"error: {error}" if error else ""
        view.render()
        if error:
            self.status_labels[pane].setText("failed")

    def _colour_toggled(self, on: bool) -> None:
        for view in self.views.values():
            view.colour = on
            view.render()
