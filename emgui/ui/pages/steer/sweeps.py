"""The Sweeps tab: launch `steer-sweep` jobs (and the persona up/down sweeps) and read their
dose-response curves."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from emgui.core.errors import EmguiError
from emgui.core.steering import steer as st
from emgui.ui.pages.steer.common import combo_data, select_data, spin
from emgui.ui.plots import PALETTE, set_empty
from emgui.ui.widgets import (
    UNVALIDATED,
    SortableItem,
    heading,
    hint,
    mark_unvalidated,
    notice_label,
    record_table,
    set_notice,
    show_error,
)

if TYPE_CHECKING:  # the page imports this module
    from emgui.ui.pages.steer.page import SteerPage


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
        self.controls = spin(QSpinBox(), 0, 10, 1, "random directions of equal norm per target")
        self.questions = QComboBox()
        self.n = spin(QSpinBox(), 1, 1000, 5, "answers per question and condition")
        self.tokens = spin(QSpinBox(), 8, 2048, 128, "max new tokens")
        self.temperature = spin(QDoubleSpinBox(), 0.0, 2.0, 1.0, "temperature", 0.1)
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
        self.check_button.setToolTip(
            "Run judge-check: score the labelled panel with the judge that scored this sweep"
        )
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
            current = combo_data(combo)
            combo.clear()
            for m in models:
                combo.addItem(m["name"], m["id"])
            select_data(combo, current)
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
        current = combo_data(self.questions)
        self.questions.clear()
        self.questions.addItem("built-in (emgui-core)", "builtin")
        for ds in project.list_datasets("questions"):
            if ds["name"] != "emgui-core":
                self.questions.addItem(ds["name"], ds["name"])
        select_data(self.questions, current)
        self._fill_table()

    def _fill_table(self) -> None:
        from emgui.core.steering.sweep import list_sweeps

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
        from emgui.core.steering.sweep import sweep_caveats

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
        from emgui.core.evaluation.validity import judge_params_from_id

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
            "model": combo_data(self.model),
            "directions": directions,
            "latents": latents,
            "strengths": self._numbers(self.strengths.text(), float),
            "method": self.method.currentText(),
            "positions": self.positions.currentText(),
            "controls": self.controls.value(),
            "questions": combo_data(self.questions) or "builtin",
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
        from emgui.core.steering.sweep import seed_experiments

        if self.page.bridge is None:
            return []
        try:
            params = self.params()
            target = {"direction": params["directions"][0]} if params["directions"] else {}
            if not target and params["latents"]:
                target = {"latent": params["latents"][0]}
            base, ft = combo_data(self.base_model), combo_data(self.ft_model)
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
