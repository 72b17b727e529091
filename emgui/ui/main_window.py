"""The main window: a sidebar of pages, the pages, and a status bar with the device, running jobs, and the
models the model host holds with their memory."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path

from PySide6.QtCore import QSize, Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QIcon, QKeySequence
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QScrollArea,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from emgui.core.errors import EmguiError
from emgui.core.jobs.runner import jobs_running_elsewhere
from emgui.core.models.host import HostSnapshot, ModelHost, default_host
from emgui.core.project import recent
from emgui.core.project.paths import resource
from emgui.core.project.store import Project
from emgui.ui.bridge import HostWatcher, JobBridge, run_async
from emgui.ui.widgets import Page, make_labels_plain, plain_tip, show_error

# The pages in sidebar order (the loop reads top to bottom): key, title, module, class.
PAGES = [
    ("start", "Start", "emgui.ui.pages.start", "StartPage"),
    ("models", "Models", "emgui.ui.pages.models", "ModelsPage"),
    ("datasets", "Datasets", "emgui.ui.pages.datasets", "DatasetsPage"),
    ("train", "Train", "emgui.ui.pages.train", "TrainPage"),
    ("jobs", "Jobs", "emgui.ui.pages.jobs", "JobsPage"),
    ("evaluate", "Evaluate", "emgui.ui.pages.evaluate", "EvaluatePage"),
    ("features", "Features", "emgui.ui.pages.features", "FeaturesPage"),
    ("steer", "Steer", "emgui.ui.pages.steer", "SteerPage"),
]


class _Pages(Mapping):
    """The window's pages by key, each built the first time it is shown or asked for, so the window
    appears before the heavier pages (plots, long forms) exist."""

    def __init__(self, window: MainWindow):
        self._window = window
        self._built: dict[str, Page] = {}

    def __getitem__(self, key: str) -> Page:
        if key not in self._built:
            if key not in self:
                raise KeyError(key)
            self._built[key] = self._window._build_page(key)
        return self._built[key]

    def __contains__(self, key: object) -> bool:  # without building the page
        return any(spec[0] == key for spec in PAGES)

    def __iter__(self) -> Iterator[str]:
        return iter(spec[0] for spec in PAGES)

    def __len__(self) -> int:
        return len(PAGES)

    def built(self) -> list[Page]:
        return list(self._built.values())


class PageScroll(QScrollArea):
    """Holds one page. The page gets the viewport's size, and scroll bars appear only below the page's
    minimum size. (QScrollArea's own resizing gives a page with word-wrapped text its *preferred* height
    for the width, so pages scrolled at 1280 x 800 although everything fitted.)"""

    def __init__(self) -> None:
        super().__init__()
        self.setWidgetResizable(False)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self._fit_later = QTimer(self)  # a child: it dies with the scroll area, unlike a bare singleShot
        self._fit_later.setSingleShot(True)
        self._fit_later.timeout.connect(self.fit)

    def setWidget(self, page: QWidget) -> None:  # noqa: N802 - Qt naming
        super().setWidget(page)
        page.installEventFilter(self)
        self.fit()

    def fit(self) -> None:
        page = self.widget()
        if page is None:
            return
        view = self.maximumViewportSize()
        min_size = page.minimumSizeHint().expandedTo(page.minimumSize())
        width = max(view.width(), min_size.width())
        layout = page.layout()
        min_height = min_size.height()
        if layout is not None and layout.hasHeightForWidth():
            min_height = max(min_height, layout.minimumHeightForWidth(width))
        height = max(view.height(), min_height)
        if width > view.width():  # a horizontal scroll bar takes height from the viewport
            height = max(min_height, view.height() - self.horizontalScrollBar().sizeHint().height())
        if height > view.height():
            width = max(min_size.width(), view.width() - self.verticalScrollBar().sizeHint().width())
        page.resize(width, height)

    def resizeEvent(self, event) -> None:  # noqa: ANN001, N802
        super().resizeEvent(event)
        self.fit()

    def eventFilter(self, obj, event) -> bool:  # noqa: ANN001, N802
        from PySide6.QtCore import QEvent

        if obj is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self._fit_later.start(0)
        return False


class MainWindow(QMainWindow):
    def __init__(
        self, project: Project | None = None, *, probe_device: bool = True, host: ModelHost | None = None
    ):
        super().__init__()
        self.project: Project | None = None
        self.bridge: JobBridge | None = None
        self.model_host = host or default_host()  # jobs, judges and live generation borrow models here
        self.setWindowTitle("emgui")
        self.setWindowIcon(QIcon(str(resource("icons", "emgui.svg"))))
        self.resize(1280, 800)

        self.nav = QListWidget()
        self.nav.setObjectName("nav")
        self.nav.setFixedWidth(190)
        self.nav.setIconSize(QSize(18, 18))
        self.stack = QStackedWidget()
        self.pages = _Pages(self)
        for key, title, _module, _cls in PAGES:
            self.stack.addWidget(PageScroll())  # a small screen scrolls a page instead of clipping it
            item = QListWidgetItem(title)
            item.setData(Qt.ItemDataRole.UserRole, key)
            self.nav.addItem(item)
        self.nav.currentRowChanged.connect(self._on_nav)

        side = QWidget()
        side.setObjectName("sidebar")
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(0, 12, 0, 12)
        brand = QLabel("emgui")
        brand.setObjectName("brand")
        self.project_label = QLabel("no project")
        self.project_label.setObjectName("sideProject")
        self.project_label.setWordWrap(True)
        side_layout.addWidget(brand)
        side_layout.addWidget(self.project_label)
        side_layout.addWidget(self.nav, 1)

        central = QWidget()
        layout = QHBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(side)
        layout.addWidget(self.stack, 1)
        self.setCentralWidget(central)

        self.device_label = QLabel("device: probing…")
        self.device_label.setContentsMargins(12, 0, 8, 0)
        self.jobs_label = QLabel("")
        self.models_label = QLabel("")
        self.models_label.setTextFormat(Qt.TextFormat.PlainText)  # model names are the user's text
        self.models_label.setContentsMargins(12, 0, 0, 0)
        self.statusBar().addPermanentWidget(self.models_label)
        self.statusBar().addPermanentWidget(self.jobs_label)
        self.host_watcher = HostWatcher(self.model_host, self)
        self.host_watcher.changed.connect(self.show_models)
        self.show_models(self.model_host.snapshot())
        self.statusBar().addPermanentWidget(self.device_label)
        self._make_menu()
        make_labels_plain(self)
        self._status_timer = QTimer(self)
        self._status_timer.timeout.connect(self.refresh_status)
        self._status_timer.start(2000)
        if probe_device:
            QTimer.singleShot(0, self.probe_device)
        self.set_project(project)
        self.show_page("start")

    def _build_page(self, key: str) -> Page:
        import importlib

        index = [spec[0] for spec in PAGES].index(key)
        _, _, module, name = PAGES[index]
        page = getattr(importlib.import_module(module), name)(self)
        for combo in page.findChildren(QComboBox):
            # Long item texts (direction and run names) must not widen a page past the window.
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(combo.property("minChars") or 12)
        make_labels_plain(page)  # names, paths and messages in labels are never rich text
        self.stack.widget(index).setWidget(page)
        page.project_changed()
        return page

    # ----- menu -------------------------------------------------------------------------------------
    def _make_menu(self) -> None:
        menu = self.menuBar().addMenu("&Project")
        for text, shortcut, slot in (
            ("&New project…", QKeySequence.StandardKey.New, self.new_project_dialog),
            ("&Open project…", QKeySequence.StandardKey.Open, self.open_project_dialog),
            ("&Quit", QKeySequence.StandardKey.Quit, self.close),
        ):
            action = QAction(text, self)
            action.setShortcut(shortcut)
            action.triggered.connect(slot)
            menu.addAction(action)

    # ----- projects ---------------------------------------------------------------------------------
    def set_project(self, project: Project | None) -> None:
        if self.bridge is not None:
            self.bridge.shutdown()
            self.bridge.deleteLater()
            self.bridge = None
        if self.project is not None and self.project is not project:
            self.project.close()
        self.project = project
        if project is not None:
            max_heavy = int(project.get_setting("max_heavy_jobs", 1))
            self.bridge = JobBridge(project, max_heavy=max_heavy, parent=self, host=self.model_host)
            self.bridge.jobStatus.connect(lambda *_: self.refresh_status())
            recent.add(project.root)
            read_only = " (read-only)" if project.read_only else ""
            self.project_label.setText(project.name + read_only)
            self.project_label.setToolTip(plain_tip(str(project.root)))
            self.setWindowTitle(f"emgui — {project.name}{read_only}")
        else:
            self.project_label.setText("no project")
            self.setWindowTitle("emgui")
        for page in self.pages.built():
            page.project_changed()
        self.refresh_status()

    def open_project(self, path: str | Path) -> bool:
        """Open a project; a damaged or unreadable one is explained in a dialog, never a crash."""
        try:
            self.set_project(Project.open(path))
        except (EmguiError, sqlite3.DatabaseError) as exc:
            if isinstance(exc, sqlite3.DatabaseError):
                exc = EmguiError(f"{Path(path) / 'project.db'} is damaged or unreadable ({exc})")
                self.set_project(None)
            show_error(self, "Cannot open project", str(exc))
            return False
        return True

    def new_project_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose an empty folder for the new project")
        if path:
            try:
                self.set_project(Project.create(path))
            except EmguiError as exc:
                show_error(self, "Cannot create project", str(exc))

    def open_project_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open an emgui project folder")
        if path:
            self.open_project(path)

    # ----- navigation and status --------------------------------------------------------------------
    def show_page(self, key: str) -> Page:
        self.nav.setCurrentRow(list(self.pages).index(key))
        return self.pages[key]

    def _on_nav(self, row: int) -> None:
        key = PAGES[row][0]
        built = key in self.pages._built
        page = self.pages[key]
        self.stack.setCurrentIndex(row)
        if built:  # a page built just now has read the store already
            page.refresh()

    def show_job(self, job_id: int) -> Page:
        """The Jobs page with this job selected: its live progress, plots and log."""
        page = self.show_page("jobs")
        page.select_job(job_id)
        return page

    def current_page(self) -> Page | None:
        scroll = self.stack.currentWidget()
        return scroll.widget() if isinstance(scroll, QScrollArea) else None

    def probe_device(self) -> None:
        """Import torch and read the device off the UI thread: the window is already up."""
        from emgui.core.lm.device import device_info

        def shown(info) -> None:
            self.device_label.setText(info.describe())
            self.device_label.setToolTip("bf16 supported" if info.bf16 else "bf16 not used on this device")

        run_async(device_info, on_done=shown, on_error=lambda e: self.device_label.setText("device: unknown"))

    def show_models(self, snapshot: HostSnapshot) -> None:
        """What the model host holds ("2 models · 1.1 GB"); the snapshot comes from the thread that loaded
        or freed a model: nothing here touches a model."""
        self.models_label.setText(f"models: {snapshot.describe()}")
        self.models_label.setToolTip(plain_tip(snapshot.details()))

    def refresh_status(self) -> None:
        """Update the status bar's job count now (a timer does it every two seconds)."""
        if self.bridge is None or self.project is None:
            self.jobs_label.setText("")
            return
        here = len(self.bridge.active_jobs())
        elsewhere = len(jobs_running_elsewhere(self.project))
        running = here + elsewhere
        text = f"{running} job{'s' if running != 1 else ''} running" if running else "idle"
        if elsewhere:
            text += f" ({elsewhere} started elsewhere, e.g. from the command line)"
        self.jobs_label.setText(text)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt naming
        self._status_timer.stop()
        self.host_watcher.detach()
        if self.bridge is not None:
            self.bridge.shutdown(timeout=15)
        if self.project is not None:
            self.project.close()
        super().closeEvent(event)
