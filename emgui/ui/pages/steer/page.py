"""The Steer page: its four tabs (one module each) under one heading."""

from __future__ import annotations

from PySide6.QtWidgets import QTabWidget, QVBoxLayout

from emgui.ui.pages.steer.common import STEER_KINDS
from emgui.ui.pages.steer.directions import DirectionsTab
from emgui.ui.pages.steer.live import LiveTab
from emgui.ui.pages.steer.monitor import MonitorTab
from emgui.ui.pages.steer.sweeps import SweepsTab
from emgui.ui.widgets import Page, heading, hint


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
        self.live.clear_rows()
        if self.bridge is not None:
            self.bridge.taskItem.connect(self.live.on_task_item)
            self.bridge.taskDone.connect(self.live.on_task_done)
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
