"""Starting the application, and rendering pages offscreen for `emgui screenshot`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from emgui.core.paths import resource


class MainThreadGarbageCollector:
    """Collect reference cycles on a timer in the GUI thread only. Left automatic, Python's collector runs
    in whichever thread allocates, and a job's worker thread freeing a dead widget deadlocks against Qt."""

    def __init__(self, interval_ms: int = 1000):
        import gc

        from PySide6.QtCore import QTimer

        self.threshold = gc.get_threshold()
        gc.disable()
        self.timer = QTimer()
        self.timer.timeout.connect(self.check)
        self.timer.start(interval_ms)

    def check(self) -> None:
        import gc

        counts = gc.get_count()
        for generation in (2, 1, 0):  # the oldest generation due, as the automatic collector would pick
            if counts[generation] > self.threshold[generation]:
                gc.collect(generation)
                return


def make_app():
    from PySide6.QtGui import QIcon
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("emgui")
    app.setOrganizationName("emgui")
    app.setDesktopFileName("emgui")
    app.setWindowIcon(QIcon(str(resource("icons", "emgui.svg"))))
    if not hasattr(app, "_emgui_gc"):
        app._emgui_gc = MainThreadGarbageCollector()
    from emgui.core import chatdata

    chatdata.parse_in_helper_process()  # a 10 MB chat parsed in this process would freeze the window
    style = resource("style.qss")
    if style.exists():
        icons = resource("icons").as_posix()
        app.setStyleSheet(style.read_text().replace("@ICONS@", icons))
    return app


def show_errors_in_dialogs() -> None:
    """An EmguiError that escapes a button's handler (a refused job on a read-only project, a bad name)
    is meant for the user: show it in a dialog instead of only printing it on a terminal."""
    from emgui.core.errors import EmguiError

    previous = sys.excepthook

    def hook(kind, exc, tb) -> None:
        if isinstance(exc, EmguiError):
            from PySide6.QtWidgets import QApplication

            from emgui.ui.widgets import show_error

            show_error(QApplication.activeWindow(), "emgui", str(exc))
        else:
            previous(kind, exc, tb)

    sys.excepthook = hook


def launch(project_path: str | None = None) -> int:
    """Open the main window (on a project, if given) and run the event loop."""
    app = make_app()
    show_errors_in_dialogs()
    from emgui.ui.main_window import MainWindow

    window = MainWindow()
    if project_path:
        window.open_project(project_path)
        window.show_page("models")
    window.show()
    return app.exec()


def settle(app, timeout: float = 30.0) -> None:
    """Process events until the background reads that pages start when shown (a dataset's first page of
    chats, say) have finished and their results are drawn, or `timeout` seconds have passed."""
    import time

    from PySide6.QtCore import QThreadPool

    pool = QThreadPool.globalInstance()
    deadline = time.monotonic() + timeout
    quiet_rounds = 0
    while quiet_rounds < 3 and time.monotonic() < deadline:
        app.processEvents()
        if pool.activeThreadCount():
            quiet_rounds = 0
            pool.waitForDone(50)
        else:
            quiet_rounds += 1


def screenshot(
    project_path: str | None, page: str, out: str | Path, *, width: int = 1280, height: int = 800
) -> Path:
    """Render one page of the window to a PNG without a screen."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = make_app()
    from emgui.core.errors import EmguiError
    from emgui.core.store import Project
    from emgui.ui.main_window import MainWindow

    project = Project.open(project_path) if project_path and project_path != "-" else None
    window = MainWindow(project, probe_device=False)
    if page not in window.pages:
        raise EmguiError(f"unknown page '{page}' (pages: {', '.join(window.pages)})")
    window.resize(width, height)
    window.show_page(page)
    window.device_label.setText("device: (not probed for screenshots)")
    window.show()
    settle(app)
    from emgui.ui.plots import MetricGrid

    for grid in window.findChildren(MetricGrid):
        grid.flush()  # plots made one per event-loop turn: all of them for the picture
    app.processEvents()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not window.grab().save(str(out)):
        raise EmguiError(f"could not write {out}")
    window.close()
    return out
