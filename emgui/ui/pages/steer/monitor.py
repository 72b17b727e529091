"""The Monitor tab: a fine-tune's loss beside its `persona/*` curves, with the warnings the monitor logged."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QListWidget, QVBoxLayout, QWidget

from emgui.ui.pages.steer.common import combo_data, select_data
from emgui.ui.plots import MetricGrid
from emgui.ui.widgets import hint

if TYPE_CHECKING:  # the page imports this module
    from emgui.ui.pages.steer.page import SteerPage


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
        self.jobs.currentIndexChanged.connect(lambda _i: self.show_job(combo_data(self.jobs)))
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
        current = combo_data(self.jobs)
        self.jobs.blockSignals(True)
        self.jobs.clear()
        for job in reversed(project.list_jobs("finetune")):
            monitored = any(n.startswith("persona/") for n in project.metric_names(job["id"]))
            self.jobs.addItem(
                f"#{job['id']} {job['params'].get('model')} on {job['params'].get('dataset')} "
                f"({job['status']}){' · monitored' if monitored else ''}",
                job["id"],
            )
        select_data(self.jobs, current)
        self.jobs.blockSignals(False)
        self.show_job(combo_data(self.jobs))

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
