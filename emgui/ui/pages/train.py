"""The Train page: fine-tune a model (step 1 of the loop, induce) or re-align one (step 5, repair).

Both forms come from the kinds' declared parameters: the key settings in front, the rest under "Advanced",
with the memory a fine-tune needs estimated before it starts. Starting a job opens its live view on the
Jobs page. Re-alignment offers the two kinds of good data: data that corrects the bad data (secure code
after an insecure-code fine-tune) and different helpful data.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QButtonGroup,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from emgui.core.errors import EmguiError
from emgui.core.training.trainer import form_fit
from emgui.core.units import human_bytes
from emgui.ui.forms import ParamForm, submit_and_follow
from emgui.ui.widgets import (
    Page,
    SortableItem,
    heading,
    hint,
    human_duration,
    job_duration,
    notice_label,
    record_table,
    set_notice,
)

TRAIN_KINDS = ("finetune", "realign")
FINETUNE_FRONT = ("model", "dataset", "method", "max_steps", "epochs", "lr", "batch_size", "max_len", "name")
REALIGN_FRONT = ("model", "dataset", "n_samples", "save_at", "method", "lr", "batch_size", "name")
# The two kinds of good data for re-alignment, as the demo project names them.
GOOD_DATA = (
    ("secure", "Data that corrects the bad data", "secure: the same coding tasks answered with safe code"),
    ("helpful", "Different helpful data", "helpful: general helpful chats on other topics"),
)
JOB_COLUMNS = ["#", "Kind", "Model", "Status", "Duration"]


class TrainForm(QWidget):
    """One kind's form in a card, with the memory estimate and its Start button."""

    def __init__(self, page: TrainPage, kind: str, front: tuple[str, ...], intro: str, start_text: str):
        super().__init__()
        self.page = page
        self.kind = kind
        self.front = front
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 10, 12, 10)
        layout.addWidget(hint(intro))
        self.form_holder = QVBoxLayout()
        layout.addLayout(self.form_holder)
        self.form: ParamForm | None = None
        self.after: tuple[str, QWidget] | None = None  # a widget shown under one of the form's fields
        self.memory = QLabel("")
        self.memory.setObjectName("hint")
        self.memory.setWordWrap(True)
        layout.addWidget(self.memory)
        self.notice = notice_label()
        layout.addWidget(self.notice)
        row = QHBoxLayout()
        row.addStretch(1)
        self.start_button = QPushButton(start_text)
        self.start_button.setObjectName("primary")
        self.start_button.clicked.connect(self.start)
        row.addWidget(self.start_button)
        layout.addLayout(row)
        layout.addStretch(1)

    def rebuild(self) -> None:
        """A fresh form on the project's models and datasets (kept values where they still exist)."""
        old = self.form.values() if self.form is not None else {}
        if self.after is not None:
            self.after[1].setParent(None)  # kept: the old form and its rows go
        if self.form is not None:
            self.form.setParent(None)
            self.form.deleteLater()
        self.form = ParamForm(self.kind, self.page.project, front=self.front)
        for name, value in old.items():
            if name in self.form.fields:
                self.form.set_value(name, value)
        self.form_holder.addWidget(self.form)
        if self.after is not None:
            name, widget = self.after
            row, _role = self.form.front_form.getWidgetPosition(self.form.fields[name].widget)
            self.form.front_form.insertRow(row + 1, "", widget)
        self.form.changed.connect(self.update_state)
        self.update_state()

    def update_state(self) -> None:
        project = self.page.project
        form = self.form
        if project is None or form is None:
            self.start_button.setEnabled(False)
            self.start_button.setToolTip("Open or create a project first")
            return
        missing = []
        if not project.list_models():
            missing.append("no model yet: add one on the Models page")
        if not project.list_datasets("chat") and self.kind == "finetune":
            missing.append("no chat dataset yet: add one on the Datasets page")
        self.start_button.setEnabled(not missing)
        self.start_button.setToolTip("; ".join(missing) if missing else "Start the job and follow it on the Jobs page")
        set_notice(self.notice, [m[0].upper() + m[1:] for m in missing], level="info")
        self.memory.setText(self.memory_text())

    def memory_text(self) -> str:
        """The memory estimate (emgui.core.models.memory, the one the job's submit check uses) for the form's values."""
        form, project = self.form, self.page.project
        try:
            row = project.get_model(form.value("model"))
        except Exception:  # noqa: BLE001 - no model chosen yet
            return ""
        try:
            report = form_fit(project, self.kind, row, {name: form.value(name) for name in form.fields})
        except EmguiError as exc:
            return f"Memory needed: unknown ({exc})."
        if report is None:
            return "Memory needed: unknown for this model (its config.json is unreadable)."
        est, s = report.estimate, report.estimate.settings
        how = {"full": "full fine-tune", "qlora": "QLoRA, 4-bit base"}.get(s.method, "LoRA adapter")
        per = f" per device ({s.devices} × {s.strategy})" if s.devices > 1 else ""
        free = min(report.free) if report.free else float("inf")
        room = f"; {human_bytes(free)} free" if free != float("inf") else ""
        text = (
            f"Memory needed: about {human_bytes(est.total)}{per} ({how}, batch {s.batch_size} × {s.max_len} "
            f"tokens on {s.device_kind}{room}; an estimate, checked within 25 % on this machine). "
        )
        if report.fits:
            return text + "Too much? Lower the batch size or the longest chat, use QLoRA, or turn on gradient "\
                "checkpointing under Advanced."
        return text + f"It will not fit, and Start will be refused: {report.advice()}."

    def params(self) -> dict:
        return self.form.values() if self.form is not None else {}

    def start(self) -> int | None:
        return submit_and_follow(self.page, self.kind, self.params())


class TrainPage(Page):
    key = "train"
    title = "Train"

    def __init__(self, window) -> None:
        super().__init__(window)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 20, 24, 12)
        layout.addWidget(heading("Train"))
        layout.addWidget(
            hint(
                "Fine-tune a model on narrow bad data to induce misalignment (step 1 of the loop), or re-align a "
                "fine-tuned model on a few good chats and watch it recover (step 5). Each job shows its live "
                "loss on the Jobs page."
            )
        )
        split = QSplitter(Qt.Orientation.Horizontal)
        self.tabs = QTabWidget()
        self.finetune = TrainForm(
            self, "finetune", FINETUNE_FRONT,
            "Train a LoRA adapter (small, fast) or every weight of a model on a chat dataset, e.g. the "
            "generated insecure code.",
            "Start fine-tune",
        )  # fmt: skip
        self.realign = TrainForm(
            self, "realign", REALIGN_FRONT,
            "Train a fine-tuned model on a few good chats, saving a snapshot after each chosen number of "
            "chats, so the Evaluate page can draw how fast it recovers.",
            "Start re-alignment",
        )  # fmt: skip
        self._build_good_data()
        for form, title in ((self.finetune, "Fine-tune"), (self.realign, "Re-align")):
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setFrameShape(QFrame.Shape.NoFrame)
            scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
            scroll.setWidget(form)
            self.tabs.addTab(scroll, title)
        split.addWidget(self.tabs)

        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(8, 0, 0, 0)
        side_layout.addWidget(heading("Training jobs", 2))
        side_layout.addWidget(hint("Double-click a job to follow it on the Jobs page."))
        self.jobs_table = record_table(JOB_COLUMNS, stretch=2)
        self.jobs_table.itemDoubleClicked.connect(self._open_job)
        side_layout.addWidget(self.jobs_table, 1)
        split.addWidget(side)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setSizes([600, 420])
        layout.addWidget(split, 1)

    def _build_good_data(self) -> None:
        box = QWidget()
        col = QVBoxLayout(box)
        col.setContentsMargins(0, 0, 0, 4)
        self.good_group = QButtonGroup(self)
        self.good_buttons: dict[str, QRadioButton] = {}
        for name, title, detail in GOOD_DATA:
            button = QRadioButton(f"{title} ({name})")
            button.setProperty("detail", detail[0].upper() + detail[1:])
            button.toggled.connect(lambda on, n=name: on and self._choose_good_data(n))
            self.good_group.addButton(button)
            self.good_buttons[name] = button
            col.addWidget(button)
        self.realign.after = ("dataset", box)

    def _choose_good_data(self, name: str) -> None:
        form = self.realign.form
        if form is not None and form.value("dataset") != name:
            form.set_value("dataset", name)

    def _sync_good_data(self) -> None:
        """The radio buttons follow the dataset chosen in the form; missing datasets are explained."""
        project, form = self.project, self.realign.form
        names = {d["name"] for d in project.list_datasets("chat")} if project is not None else set()
        for name, button in self.good_buttons.items():
            button.setEnabled(name in names)
            button.setToolTip(
                button.property("detail") if name in names else
                f"This project has no dataset '{name}': add generated:{name} on the Datasets page"
            )  # fmt: skip
        current = form.value("dataset") if form is not None else None
        for name, button in self.good_buttons.items():
            button.blockSignals(True)
            button.setChecked(current == name or (current is None and name == "secure"))
            button.blockSignals(False)

    # ----- data --------------------------------------------------------------------------------------
    def project_changed(self) -> None:
        for form in (self.finetune, self.realign):
            form.rebuild()
        self.realign.form.changed.connect(self._sync_good_data)
        self._prefer_finetuned()
        self.refresh()

    def _prefer_finetuned(self) -> None:
        """Re-align starts from a fine-tune (the newest), fine-tuning from a base model."""
        if self.project is None:
            return
        models = self.project.list_models()
        tuned = [m for m in models if m.get("base_model_id")]
        if tuned:
            self.realign.form.set_value("model", tuned[-1]["name"])
        if any(d["name"] == "insecure" for d in self.project.list_datasets("chat")):
            self.finetune.form.set_value("dataset", "insecure")
        if any(d["name"] == "secure" for d in self.project.list_datasets("chat")):
            self.realign.form.set_value("dataset", "secure")

    def refresh(self) -> None:
        if self.project is None:
            self.jobs_table.setRowCount(0)
            return
        known_models = {m["name"] for m in self.project.list_models()}
        form = self.finetune.form
        combo_models = {form.fields["model"].widget.itemData(i) for i in range(form.fields["model"].widget.count())}
        if known_models - combo_models:  # a model was added since: offer it
            self.project_changed()
            return
        self._sync_good_data()
        for form in (self.finetune, self.realign):
            form.update_state()
        jobs = [j for kind in TRAIN_KINDS for j in self.project.list_jobs(kind)]
        jobs.sort(key=lambda j: -j["id"])
        self.jobs_table.setRowCount(len(jobs))
        for r, job in enumerate(jobs):
            cells = [
                SortableItem(str(job["id"]), job["id"]),
                SortableItem("fine-tune" if job["kind"] == "finetune" else "re-align"),
                SortableItem(str(job["params"].get("model", ""))),
                SortableItem(job["status"]),
                SortableItem(human_duration(job_duration(job))),
            ]
            for c, cell in enumerate(cells):
                cell.setData(Qt.ItemDataRole.UserRole, job["id"])
                cell.setToolTip(job["message"] or "")
                self.jobs_table.setItem(r, c, cell)
        for col in (0, 1, 3, 4):
            self.jobs_table.resizeColumnToContents(col)

    def _open_job(self, item) -> None:  # noqa: ANN001
        self.window_.show_job(item.data(Qt.ItemDataRole.UserRole))


__all__ = ["TrainPage"]
