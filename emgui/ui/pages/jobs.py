"""The Jobs page: every job with live progress; the selected job's plots, log, parameters and artifacts.

It reads the store on a timer (so jobs run from the CLI in another process show up too) and reacts
at once to the bridge's signals for jobs this window runs.
"""

from __future__ import annotations

import json

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QHBoxLayout,
    QMenu,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTabWidget,
    QToolButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from emgui.core.errors import EmguiError
from emgui.ui.widgets import (
    Page,
    SortableItem,
    heading,
    hint,
    human_bytes,
    human_duration,
    job_duration,
    record_table,
    set_enabled_why,
    show_error,
)

COLUMNS = ["#", "Kind", "Status", "Progress", "Duration", "Message"]
STATUS_COLORS = {
    "running": "#2563eb",
    "succeeded": "#16a34a",
    "failed": "#dc2626",
    "cancelled": "#64748b",
    "interrupted": "#d97706",
    "queued": "#64748b",
}


class JobsPage(Page):
    key = "jobs"
    title = "Jobs"
    POLL_MS = 500

    def __init__(self, window) -> None:
        super().__init__(window)
        self.selected_id: int | None = None
        self._metric_rowid = 0
        self._log_id = 0
        self._rows: dict[int, int] = {}
        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 20, 24, 12)
        head = QHBoxLayout()
        head.addWidget(heading("Jobs"), 1)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel_selected)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip(
            "Run an interrupted, failed or cancelled job again, from its last checkpoint"
        )
        self.resume_button.clicked.connect(self.resume_selected)
        self.compare_button = QToolButton()
        self.compare_button.setText("Compare with…")
        self.compare_button.setToolTip("Overlay the curves of other runs of the same kind")
        self.compare_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.compare_menu = QMenu(self)
        self.compare_menu.aboutToShow.connect(self._fill_compare_menu)
        self.compare_button.setMenu(self.compare_menu)
        self.compared: set[int] = set()
        head.addWidget(self.compare_button)
        head.addWidget(self.cancel_button)
        head.addWidget(self.resume_button)
        layout.addLayout(head)

        split = QSplitter(Qt.Orientation.Vertical)
        self.table = record_table(COLUMNS)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        split.addWidget(self.table)

        from emgui.ui.plots import MetricGrid  # pyqtgraph: imported when the page is built, not at start-up

        self.tabs = QTabWidget()
        self.plots = MetricGrid()
        self.log_view = QPlainTextEdit(readOnly=True)
        self.log_view.setMaximumBlockCount(20000)
        self.params_table = record_table(["Parameter", "Value", ""], stretch=1)
        self.params_view = QPlainTextEdit(readOnly=True)  # the same parameters as JSON, to copy
        self.params_view.setMaximumHeight(90)
        params_tab = QWidget()
        params_layout = QVBoxLayout(params_tab)
        params_layout.setContentsMargins(4, 4, 4, 4)
        self.params_hint = hint("")
        params_layout.addWidget(self.params_hint)
        params_layout.addWidget(self.params_table, 1)
        params_layout.addWidget(self.params_view)
        self.artifacts = QTreeWidget()
        self.artifacts.setHeaderLabels(["Artifact", "Kind", "Size", "sha256"])
        self.artifacts.setColumnWidth(0, 420)
        self.error_view = QPlainTextEdit(readOnly=True)
        self.tabs.addTab(self.plots, "Metrics")
        self.tabs.addTab(self.log_view, "Log")
        self.tabs.addTab(params_tab, "Parameters")
        self.tabs.addTab(self.artifacts, "Artifacts")
        self.tabs.addTab(self.error_view, "Error")
        split.addWidget(self.tabs)
        split.setSizes([170, 520])  # the plots get the room: readable at 1280 x 800
        layout.addWidget(split, 1)

        self.timer = QTimer(self)
        self.timer.timeout.connect(self.poll)
        self.timer.start(self.POLL_MS)

    # ----- data --------------------------------------------------------------------------------------
    def project_changed(self) -> None:
        self.selected_id = None
        self._rows.clear()
        self.table.setRowCount(0)
        self._clear_details()
        if self.bridge is not None:
            self.bridge.jobStatus.connect(lambda *_: self.poll())
        self.refresh()

    def refresh(self) -> None:
        self.poll()

    def poll(self) -> None:
        """Bring the table and the selected job's details up to date with the store."""
        if self.project is None or (not self.isVisible() and self.table.rowCount()):
            return  # hidden: catch up when shown (refresh) instead of querying twice a second
        jobs = self.project.list_jobs()
        self._new_rows = False
        for job in jobs:
            self._update_row(job)
        if self._new_rows:
            for col in (0, 1, 2, 4):
                self.table.resizeColumnToContents(col)
            self.table.setColumnWidth(3, 110)
        if self.selected_id is None and self.table.rowCount():
            self.table.selectRow(0)  # the newest job
        if self.selected_id is not None:
            self._pull_details()
        self._update_buttons()

    def _update_row(self, job: dict) -> None:
        row = self._rows.get(job["id"])
        if row is None:
            row = 0
            self.table.insertRow(0)
            self._rows = {jid: r + 1 for jid, r in self._rows.items()}
            self._rows[job["id"]] = row
            bar = QProgressBar()
            bar.setRange(0, 1000)
            bar.setTextVisible(True)
            self.table.setCellWidget(row, 3, bar)
            self._new_rows = True
        values = [
            str(job["id"]),
            kind_title(job["kind"]),
            job["status"],
            "",
            human_duration(job_duration(job)),
            job["message"],
        ]
        for col, value in enumerate(values):
            item = self.table.item(row, col)
            if item is None:
                item = SortableItem(value, job["id"] if col == 0 else None)
                item.setData(Qt.ItemDataRole.UserRole, job["id"])
                self.table.setItem(row, col, item)
            elif item.text() != value:
                item.setText(value)
        self.table.item(row, 2).setForeground(QColor(STATUS_COLORS.get(job["status"], "#000")))
        self.table.item(row, 1).setToolTip(f"job kind: {job['kind']} (emgui run PROJECT {job['kind']})")
        bar = self.table.cellWidget(row, 3)
        bar.setValue(int(job["progress"] * 1000))
        bar.setFormat(f"{job['progress'] * 100:.0f}%")

    def row_of(self, job_id: int) -> int | None:
        """The table row showing job `job_id`, or None while it is not listed."""
        return self._rows.get(job_id)

    def select_job(self, job_id: int) -> None:
        row = self._rows.get(job_id)
        if row is None:
            self.poll()
            row = self._rows.get(job_id)
        if row is not None:
            self.table.selectRow(row)

    def _selection_changed(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        job_id = self.table.item(rows[0].row(), 0).data(Qt.ItemDataRole.UserRole) if rows else None
        if job_id == self.selected_id:
            return
        self.selected_id = job_id
        self._clear_details()
        if job_id is not None:
            self._load_static_details()
            self._pull_details()
        self._update_buttons()

    def _fill_compare_menu(self) -> None:
        self.compare_menu.clear()
        if self.project is None or self.selected_id is None:
            return
        kind = self.project.get_job(self.selected_id)["kind"]
        others = [j for j in self.project.list_jobs(kind) if j["id"] != self.selected_id]
        if not others:
            self.compare_menu.addAction("no other runs of this kind").setEnabled(False)
        for job in reversed(others):
            action = self.compare_menu.addAction(f"job {job['id']} ({job['status']}) {job['message'][:40]}")
            action.setCheckable(True)
            action.setChecked(job["id"] in self.compared)
            action.toggled.connect(lambda on, jid=job["id"]: self.set_compared(jid, on))

    def set_compared(self, job_id: int, on: bool) -> None:
        """Overlay (or remove) another run's curves on the selected job's plots."""
        if on:
            self.compared.add(job_id)
        else:
            self.compared.discard(job_id)
        self.plots.clear()
        self._metric_rowid = 0
        for other in sorted(self.compared):
            self._plot_all(other)
        self._pull_details()

    def _plot_all(self, job_id: int) -> None:
        grouped: dict[str, tuple[list, list]] = {}
        for m in self.project.metrics(job_id):
            xs, ys = grouped.setdefault(m["name"], ([], []))
            xs.append(m["step"])
            ys.append(m["value"])
        for name, (xs, ys) in grouped.items():
            self.plots.set_points(f"job {job_id}", name, xs, ys)

    def _clear_details(self) -> None:
        self.compared.clear()
        self._metric_rowid = 0
        self._log_id = 0
        self.plots.clear()
        self.log_view.clear()
        self.params_view.clear()
        self.params_table.setRowCount(0)
        self.params_hint.setText("")
        self.artifacts.clear()
        self.error_view.clear()

    def _load_static_details(self) -> None:
        job = self.project.get_job(self.selected_id)
        self.params_view.setPlainText(json.dumps(job["params"], indent=2))
        self._fill_params(job)
        self.plots.set_empty_text(_empty_metrics_text(job))

    def _fill_params(self, job: dict) -> None:
        """Every parameter the job ran with; the ones left at their declared default are marked."""
        from emgui.core.jobs.kinds import kinds
        from emgui.core.jobs.paramspec import defaults_used

        kind = kinds().get(job["kind"])
        specs = {s.name: s for s in (kind.params or ())} if kind else {}
        defaults = defaults_used(list(specs.values()), job["params"])
        names = list(job["params"])
        names.sort(key=lambda n: (n in defaults, list(specs).index(n) if n in specs else 0))
        self.params_table.setRowCount(len(names))
        for row, name in enumerate(names):
            value = job["params"][name]
            text = ",".join(map(str, value)) if isinstance(value, list) else "none" if value is None else str(value)
            cells = [SortableItem(name), SortableItem(text), SortableItem("default" if name in defaults else "set")]
            tip = specs[name].help if name in specs else ""
            for col, cell in enumerate(cells):
                cell.setToolTip(tip)
                if name in defaults:
                    cell.setForeground(QColor("#64748b"))
                self.params_table.setItem(row, col, cell)
        self.params_table.resizeColumnToContents(0)
        self.params_table.resizeColumnToContents(2)
        chosen = len(names) - len(defaults)
        self.params_hint.setText(
            f"{chosen} set for this job, {len(defaults)} at their default (grey). Hover a row for its meaning."
            if specs else "This kind's parameters are not declared: shown as passed."
        )

    def _pull_details(self) -> None:
        """Append what is new since the last poll: metrics, log lines; reload artifacts and error."""
        job_id = self.selected_id
        new = self.project.metrics(job_id, after_rowid=self._metric_rowid)
        if new:
            self._metric_rowid = new[-1]["rowid"]
            grouped: dict[str, tuple[list, list]] = {}
            for m in new:
                xs, ys = grouped.setdefault(m["name"], ([], []))
                xs.append(m["step"])
                ys.append(m["value"])
            for name, (xs, ys) in grouped.items():
                self.plots.append_points(f"job {job_id}", name, xs, ys)
        lines = self.project.logs(job_id, after_id=self._log_id)
        if lines:
            self._log_id = lines[-1]["id"]
            self.log_view.appendPlainText("\n".join(line["text"] for line in lines))
        job = self.project.get_job(job_id)
        text = (job["error"] or "") + ("\n\n" + job["traceback"] if job["traceback"] else "")
        if text != self.error_view.toPlainText():
            self.error_view.setPlainText(text)
        artifacts = self.project.artifacts(job_id)
        if len(artifacts) != self.artifacts.topLevelItemCount():
            self.artifacts.clear()
            for a in artifacts:
                item = QTreeWidgetItem(
                    [a["path"], a["kind"], human_bytes(a["size_bytes"]), (a["sha256"] or "")[:16]]
                )
                chain = self.project.provenance("artifacts", a["id"])
                for node in chain.get("inputs", []):
                    item.addChild(
                        QTreeWidgetItem([f"input {node['type']}: {node['name']}", node.get("role") or ""])
                    )
                self.artifacts.addTopLevelItem(item)
            self.artifacts.expandAll()

    def _update_buttons(self) -> None:
        job = self.project.get_job(self.selected_id) if self.project and self.selected_id else None
        active = bool(job and self.bridge and job["id"] in self.bridge.active_jobs())
        elsewhere = bool(job and job["status"] in ("queued", "running") and not active)
        set_enabled_why(
            self.cancel_button, active,
            "Started by another process (e.g. the command line): cancel it there, with Ctrl-C" if elsewhere
            else "Select a queued or running job to cancel it",
            "Stop the selected job (a resumable one keeps its last checkpoint)",
        )  # fmt: skip
        set_enabled_why(
            self.resume_button, bool(job and job["status"] in ("failed", "cancelled", "interrupted")),
            "Only a failed, cancelled or interrupted job can be resumed",
            "Run an interrupted, failed or cancelled job again, from its last checkpoint",
        )  # fmt: skip

    # ----- actions -----------------------------------------------------------------------------------
    def cancel_selected(self) -> None:
        if self.selected_id is not None and self.bridge is not None:
            self.bridge.cancel(self.selected_id)

    def resume_selected(self) -> None:
        if self.selected_id is None or self.bridge is None:
            return
        try:
            self.bridge.resume(self.selected_id)
        except EmguiError as exc:
            show_error(self, "Cannot resume", str(exc))
        self.poll()


def kind_title(name: str) -> str:
    """What the window calls a job kind ("Fine-tune" for finetune); its name where it has no title."""
    from emgui.core.jobs.kinds import kinds

    kind = kinds().get(name)
    return kind.title if kind is not None and kind.title else name


def _empty_metrics_text(job: dict) -> str:
    if job["status"] in ("queued", "running"):
        return "No curves yet: they appear here as the job reports its first points (a training job after its first step)."
    return f"This {job['kind']} job recorded no curves: its progress and log tell what it did (see the Log tab)."


__all__ = ["JobsPage"]
