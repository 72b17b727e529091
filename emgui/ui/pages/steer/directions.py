"""The Directions tab: the project's directions; import a .safetensors vector, build persona vectors,
screen a dataset by its projection and write the filtered dataset."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QMenu,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from emgui.core.errors import EmguiError
from emgui.core.steering import persona as personas
from emgui.core.steering import steer as st
from emgui.ui.bridge import run_async
from emgui.ui.pages.steer.common import combo_data, select_data, spin
from emgui.ui.plots import PALETTE, set_empty
from emgui.ui.widgets import SortableItem, heading, hint, record_table, show_error

if TYPE_CHECKING:  # the page imports this module
    from emgui.ui.pages.steer.page import SteerPage


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
        self.pv_questions = spin(
            QSpinBox(), 1, 1000, 20, "questions to answer (each under one + and one − prompt)"
        )
        self.pv_tokens = spin(QSpinBox(), 4, 1024, 64, "max new tokens per answer")
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
        self.sc_top = spin(QDoubleSpinBox(), 0.1, 100.0, 10.0, "flag this top share (%) of samples", 1.0)
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
            current = combo_data(combo)
            combo.clear()
            for mid, name in models.items():
                combo.addItem(name, mid)
            select_data(combo, current)
        current = self.persona.currentText()
        self.persona.clear()
        self.persona.addItems(personas.persona_names(project))
        if current:
            self.persona.setCurrentText(current)
        current = combo_data(self.sc_dataset)
        self.sc_dataset.clear()
        for ds in project.list_datasets("chat"):
            self.sc_dataset.addItem(f"{ds['name']} ({ds['n_rows'] or '?'} chats)", ds["name"])
        select_data(self.sc_dataset, current)
        current = combo_data(self.screen_jobs)
        self.screen_jobs.blockSignals(True)
        self.screen_jobs.clear()
        for job in project.list_jobs("persona-screen"):
            if job["status"] == "succeeded":
                self.screen_jobs.addItem(
                    f"#{job['id']}: {job['params'].get('dataset')} on {job['params'].get('direction')}",
                    job["id"],
                )
        select_data(self.screen_jobs, current)
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
            set_empty(
                self.layer_plot, "Select a direction to see how well each layer separates its two sides."
            )
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
        model = combo_data(self.pv_model)
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
                "model": combo_data(self.pv_model),
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
                "model": combo_data(self.sc_model),
                "direction": direction_id,
                "dataset": combo_data(self.sc_dataset),
                "flag_top": self.sc_top.value() / 100,
                "write_filtered": self.sc_write.isChecked(),
            },
        )

    def show_ranking(self) -> None:
        job_id = combo_data(self.screen_jobs)
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
        job_id = combo_data(self.screen_jobs)
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
            from emgui.core.data.datasets import resolve_dataset

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
