"""The one bridge between the Qt-free core and the widgets.

`JobBridge` owns the core `JobManager` (which runs each job in a worker thread) and turns the
events that jobs report from those threads into Qt signals, delivered in the UI thread. `run_async`
does the same for small one-off computations (probing the GPU, reading a tokenizer) so that the UI
thread never touches torch or a model.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

from emgui.core.jobs.runner import JobEvent, JobManager
from emgui.core.project.store import Project


class JobBridge(QObject):
    jobStatus = Signal(int, str)  # job id, status
    jobProgress = Signal(int, float, str)  # job id, fraction, message
    jobMetrics = Signal(int, list)  # job id, [(step, name, value), ...]
    jobLog = Signal(int, list)  # job id, [line, ...]

    def __init__(self, project: Project, max_heavy: int = 1, parent: QObject | None = None):
        super().__init__(parent)
        self.project = project
        self.manager = JobManager(project, max_heavy=max_heavy, listener=self._on_event)

    def _on_event(self, event: JobEvent) -> None:  # called from worker threads: only emit here
        if event.type == "status":
            self.jobStatus.emit(event.job_id, event.data["status"])
        elif event.type == "progress":
            self.jobProgress.emit(event.job_id, event.data["progress"], event.data["message"])
        elif event.type == "metrics":
            self.jobMetrics.emit(event.job_id, event.data["rows"])
        elif event.type == "log":
            self.jobLog.emit(event.job_id, event.data["lines"])

    def submit(self, kind: str, params: dict) -> int:
        return self.manager.submit(kind, params)

    def cancel(self, job_id: int) -> None:
        self.manager.cancel(job_id)

    def resume(self, job_id: int) -> int:
        return self.manager.resume(job_id)

    def active_jobs(self) -> list[int]:
        return self.manager.active_jobs()

    def shutdown(self, timeout: float = 10.0) -> None:
        self.manager.shutdown(timeout)


class _Signals(QObject):
    done = Signal(object)
    failed = Signal(str)


class _Task(QRunnable):
    def __init__(self, func: Callable[..., Any], args: tuple, signals: _Signals):
        super().__init__()
        self.func, self.args, self.signals = func, args, signals

    @Slot()
    def run(self) -> None:
        try:
            result = self.func(*self.args)
        except Exception as exc:  # noqa: BLE001 - reported to the caller, never raised into Qt
            self.signals.failed.emit(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        else:
            self.signals.done.emit(result)


_live: set[_Signals] = set()


def run_async(
    func: Callable[..., Any],
    *args: Any,
    on_done: Callable[[Any], None] | None = None,
    on_error: Callable[[str], None] | None = None,
) -> None:
    """Run `func(*args)` on the global thread pool; the callbacks run in the UI thread."""
    signals = _Signals()
    _live.add(signals)  # keep the QObject alive until a callback ran
    signals.done.connect(lambda result: (_live.discard(signals), on_done and on_done(result)))
    signals.failed.connect(lambda error: (_live.discard(signals), on_error and on_error(error)))
    QThreadPool.globalInstance().start(_Task(func, args, signals))
