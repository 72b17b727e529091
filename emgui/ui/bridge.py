"""The one bridge between the Qt-free core and the widgets.

`JobBridge` owns the core `JobManager` (which runs each job in a worker thread) and turns the
events that jobs report from those threads into Qt signals, delivered in the UI thread. It also runs
*tasks*: job-like functions of (params, context) that stream items to the window and are never stored
(the Steer page's live generation): `start_task`, `cancel_task`, and the `taskItem`/`taskDone` signals.
Jobs and tasks borrow models from the same model host (`bridge.host`), which the `HostWatcher` follows
for the status bar. `run_async` runs small one-off computations (probing the GPU, reading a tokenizer)
so that the UI thread never touches torch or a model.
"""

from __future__ import annotations

import itertools
import threading
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

from emgui.core.errors import Cancelled, EmguiError
from emgui.core.jobs.runner import JobEvent, JobManager
from emgui.core.models.host import HostSnapshot, ModelHost, default_host
from emgui.core.project.store import Project

TaskFunction = Callable[[dict, "TaskContext"], Any]


class TaskContext:
    """What a task sees (a lighter JobContext: nothing is stored). `emit(item)` sends one item to the
    window; `cancelled` says whether it was asked to stop; `host` lends the models."""

    def __init__(self, task_id: int, project: Project, host: ModelHost, emit: Callable[[Any], None]):
        self.task_id, self.project, self.host = task_id, project, host
        self._emit = emit
        self.stop_event = threading.Event()

    def emit(self, item: Any) -> None:
        self._emit(item)

    @property
    def cancelled(self) -> bool:
        return self.stop_event.is_set()

    def check_cancelled(self) -> None:
        if self.stop_event.is_set():
            raise Cancelled(f"task {self.task_id} stopped")


class JobBridge(QObject):
    jobStatus = Signal(int, str)  # job id, status
    jobProgress = Signal(int, float, str)  # job id, fraction, message
    jobMetrics = Signal(int, list)  # job id, [(step, name, value), ...]
    jobLog = Signal(int, list)  # job id, [line, ...]
    taskItem = Signal(int, object)  # task id, one streamed item
    taskDone = Signal(int, str)  # task id, error ('' when it ended normally or was stopped)

    def __init__(
        self,
        project: Project,
        max_heavy: int = 1,
        parent: QObject | None = None,
        host: ModelHost | None = None,
    ):
        super().__init__(parent)
        self.project = project
        self.host = host or default_host()
        self.manager = JobManager(project, max_heavy=max_heavy, listener=self._on_event, host=self.host)
        self._tasks: dict[int, tuple[TaskContext, threading.Thread]] = {}
        self._task_ids = itertools.count(1)

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

    # ----- tasks -----------------------------------------------------------------------------------------
    def start_task(self, func: TaskFunction, params: dict, *, name: str = "task") -> int:
        """Run `func(params, ctx)` in a worker thread; what it emits arrives as `taskItem` in the UI thread,
        its end as `taskDone`. Tasks are not queued behind heavy jobs: they are short and interactive."""
        task_id = next(self._task_ids)
        ctx = TaskContext(task_id, self.project, self.host, lambda item: self.taskItem.emit(task_id, item))
        thread = threading.Thread(
            target=self._run_task, args=(func, params, ctx), daemon=True, name=f"emgui-{name}-{task_id}"
        )
        self._tasks[task_id] = (ctx, thread)
        thread.start()
        return task_id

    def _run_task(self, func: TaskFunction, params: dict, ctx: TaskContext) -> None:
        error = ""
        try:
            func(params, ctx)
        except Cancelled:
            pass
        except EmguiError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - shown by the page, never raised into Qt
            error = f"{type(exc).__name__}: {exc}"
        finally:
            self._tasks.pop(ctx.task_id, None)
        self.taskDone.emit(ctx.task_id, error)

    def cancel_task(self, task_id: int) -> None:
        """Ask a task to stop (at its next item); `taskDone` follows."""
        entry = self._tasks.get(task_id)
        if entry is not None:
            entry[0].stop_event.set()

    def active_tasks(self) -> list[int]:
        return [task_id for task_id, (_, thread) in list(self._tasks.items()) if thread.is_alive()]

    def shutdown(self, timeout: float = 10.0) -> None:
        tasks = list(self._tasks.values())
        for ctx, _ in tasks:
            ctx.stop_event.set()
        self.manager.shutdown(timeout)
        for _, thread in tasks:
            thread.join(timeout)


class HostWatcher(QObject):
    """Follows a model host: `changed` carries a fresh snapshot, taken in the thread that loaded or freed
    a model, so the window shows it without touching a model (or SQL) in the UI thread."""

    changed = Signal(object)  # HostSnapshot

    def __init__(self, host: ModelHost, parent: QObject | None = None):
        super().__init__(parent)
        self.host = host
        host.add_listener(self._on_change)

    def _on_change(self) -> None:  # any thread
        try:
            self.changed.emit(self.host.snapshot())
        except RuntimeError:  # the window (and this object with it) is gone
            self.detach()

    def snapshot(self) -> HostSnapshot:
        return self.host.snapshot()

    def detach(self) -> None:
        self.host.remove_listener(self._on_change)


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
