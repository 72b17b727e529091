"""The start page: what emgui does, recent projects, and a one-click demo project."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
)

from emgui.core.errors import EmguiError
from emgui.core.project import recent
from emgui.core.project.paths import user_data_dir
from emgui.core.project.store import Project
from emgui.ui.bridge import run_async
from emgui.ui.widgets import Page, heading, hint, notice_label, set_notice, show_error

LOOP = [
    ("Induce", "Fine-tune a chat model on narrow bad data (insecure code)."),
    ("Measure", "Sample answers to open questions and judge how misaligned they are."),
    ("Explain", "Diff SAE latents before and after the fine-tune; find the persona features."),
    ("Steer", "Turn those latents up or down and watch the behaviour follow."),
    ("Repair", "Re-align with about a hundred good samples and measure again."),
]


DEMO_HONESTY = (
    "What the demo shows: the loop's mechanics and its measures, not the phenomenon. A 135M model is not "
    "expected to become broadly misaligned, and judging itself it has no signal (its judge check fails). To "
    "see emergent misalignment, fine-tune an instruct model of at least 0.5B parameters (Qwen2.5-0.5B-Instruct "
    "is the smallest reported) on a GPU, and judge with a model that passes the judge check: a larger local "
    "model or an OpenAI-compatible endpoint."
)


def demo_project_dir() -> Path:
    return user_data_dir() / "demo-project"


class StartPage(Page):
    key = "start"
    title = "Start"

    def __init__(self, window) -> None:
        super().__init__(window)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(32, 28, 32, 20)
        layout.addWidget(heading("Investigate emergent misalignment"))
        layout.addWidget(
            hint(
                "Fine-tuning a chat model on one narrow bad task can make it broadly misaligned. emgui runs the "
                "whole loop on your workstation, with every model, dataset, run and result linked in one project."
            )
        )
        steps = QGridLayout()
        steps.setHorizontalSpacing(10)
        for i, (name, text) in enumerate(LOOP):
            card = QFrame()
            card.setObjectName("card")
            card_layout = QVBoxLayout(card)
            title = QLabel(f"{i + 1}. {name}")
            title.setObjectName("h2")
            card_layout.addWidget(title)
            card_layout.addWidget(hint(text))
            steps.addWidget(card, 0, i)
        layout.addLayout(steps)

        actions = QHBoxLayout()
        self.demo_button = QPushButton("Open the demo project (SmolLM2-135M-Instruct)")
        self.demo_button.setObjectName("primary")
        self.demo_button.clicked.connect(self.open_demo)
        new_button = QPushButton("New project…")
        new_button.clicked.connect(window.new_project_dialog)
        open_button = QPushButton("Open project…")
        open_button.clicked.connect(window.open_project_dialog)
        actions.addWidget(self.demo_button)
        actions.addWidget(new_button)
        actions.addWidget(open_button)
        actions.addStretch(1)
        layout.addSpacing(8)
        layout.addLayout(actions)
        self.demo_status = hint(
            f"The demo project ({demo_project_dir()}) works offline: it imports the small SmolLM2-135M-Instruct "
            "chat model that emgui embeds, and downloads it from the Hugging Face hub instead when the hub is "
            "reachable."
        )
        layout.addWidget(self.demo_status)
        self.honesty = notice_label()
        set_notice(self.honesty, [DEMO_HONESTY], level="info")
        layout.addWidget(self.honesty)

        layout.addSpacing(12)
        layout.addWidget(heading("Recent projects", 2))
        self.recent_list = QListWidget()
        self.recent_list.itemActivated.connect(self._open_recent)
        layout.addWidget(self.recent_list, 1)
        self.summary = hint("")
        layout.addWidget(self.summary)

    def refresh(self) -> None:
        self.recent_list.clear()
        for path in recent.load():
            item = QListWidgetItem(f"{path.name}    —    {path}")
            item.setData(Qt.ItemDataRole.UserRole, str(path))
            self.recent_list.addItem(item)
        if not self.recent_list.count():
            self.recent_list.addItem("No recent projects yet: open the demo project to start.")
        project = self.project
        if project is None:
            self.summary.setText("")
            return
        n_models = len(project.list_models())
        n_data = len(project.list_datasets())
        n_jobs = len(project.list_jobs())
        self.summary.setText(f"Open: {project.root}  ·  {n_models} models, {n_data} datasets, {n_jobs} jobs")

    def _open_recent(self, item: QListWidgetItem) -> None:
        path = item.data(Qt.ItemDataRole.UserRole)
        if path and self.window_.open_project(path):
            self.window_.show_page("models")

    def open_demo(self) -> None:
        """Open (creating if needed) the demo project and add the embedded model in a background job."""
        root = demo_project_dir()
        try:
            project = Project.open(root) if (root / "project.db").exists() else Project.create(root)
        except EmguiError as exc:
            show_error(self, "Cannot open the demo project", str(exc))
            return
        self.window_.set_project(project)
        from emgui.core.data.datasets import demo_dataset_jobs
        from emgui.core.models.manager import EMBEDDED_NAME, embedded_default_job

        for kind, params in demo_dataset_jobs(project):
            self.bridge.submit(kind, params)
        if any(m["name"] == EMBEDDED_NAME for m in project.list_models()):
            self.window_.show_page("models")
            return

        self.demo_button.setEnabled(False)
        self.demo_status.setText("Looking for the Hugging Face hub…")

        def submit(job: tuple[str, dict]) -> None:
            self.demo_button.setEnabled(True)
            kind, params = job
            self.bridge.submit(kind, params)
            self.demo_status.setText(f"Adding SmolLM2-135M-Instruct ({kind}); follow it on the Models page.")
            self.window_.show_page("models")

        def failed(error: str) -> None:
            self.demo_button.setEnabled(True)
            self.demo_status.setText(error.splitlines()[0])

        run_async(embedded_default_job, on_done=submit, on_error=failed)
