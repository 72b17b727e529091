"""Jobs: plain functions of (params, context), run in worker threads by the app or inline by the CLI.

A job kind is registered (`emgui.core.jobs.registry.register_kind`) under a name (`emgui run PROJECT KIND`). Its function
receives the parameters as a dict and a `JobContext` that reports progress, metrics and log lines,
answers cancellation, and saves checkpoints. Everything it reports lands in the store (metrics in
batches), and listeners (the Qt bridge, the CLI's stderr printer) are told as it happens.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emgui.core.errors import Cancelled, EmguiError
from emgui.core.jobs.kinds import get_kind, resolve_params
from emgui.core.project.store import Project

Listener = Callable[["JobEvent"], None]


@dataclass
class JobEvent:
    job_id: int
    type: str  # status | progress | metrics | log
    data: dict


class JobFiles:
    """A running job's folders and artifacts (`project` and `job_id` are the context's): shared by the
    job context and a distributed worker's."""

    project: Project
    job_id: int

    @property
    def artifact_dir(self) -> Path:
        path = self.project.job_dir(self.job_id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def checkpoint_dir(self) -> Path:
        path = self.artifact_dir / "checkpoints"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def add_artifact(
        self, path: str | Path, kind: str, inputs: list[dict] | None = None, meta: dict | None = None
    ) -> int:
        return self.project.add_artifact(path, kind, job_id=self.job_id, inputs=inputs, meta=meta)


class JobContext(JobFiles):
    """What a running job sees. Thread-safe; cheap to call often (metrics and logs are batched)."""

    FLUSH_SECONDS = 0.5
    FLUSH_ROWS = 2000

    def __init__(
        self,
        project: Project,
        job_id: int,
        params: dict,
        cancel_event: threading.Event,
        listener: Listener | None,
        step_hooks: tuple[Callable, ...] = (),
        host: Any = None,
    ):
        self.project = project
        self.host = host  # the ModelHost jobs borrow models from (None: the process's default host)
        self.model_leases: list = []  # what the job borrowed from it, released when the job ends
        self.job_id = job_id
        self.params = params
        # Called by training jobs every `monitor_every` steps as hook(step, model, ctx): tests and benches
        # watch or stop a run through them.
        self.step_hooks = tuple(step_hooks)
        self._cancel = cancel_event
        self._listener = listener
        self._lock = threading.Lock()
        self._metric_rows: list[tuple[int, int, str, float, float]] = []
        self._log_rows: list[tuple[float, str]] = []
        self._last_flush = time.monotonic()
        self._last_progress_write = 0.0
        job = project.get_job(job_id)
        self.resume_state: dict | None = job.get("checkpoint")
        self.progress_value = 0.0
        self.last_message = ""

    # ----- reporting -------------------------------------------------------------------------------
    def progress(self, fraction: float | None, message: str = "") -> None:
        """Report progress in [0, 1] (None: unknown) with a short message; also a cancellation point."""
        self.check_cancelled()
        if fraction is not None:
            self.progress_value = min(1.0, max(0.0, float(fraction)))
        self.last_message = message or self.last_message
        now = time.monotonic()
        if now - self._last_progress_write >= 0.2 or fraction in (0.0, 1.0):
            self._last_progress_write = now
            self.project.update_job(
                self.job_id, progress=self.progress_value, message=message, heartbeat=time.time()
            )
        self._emit("progress", {"progress": self.progress_value, "message": message})

    def metric(self, name: str, step: int, value: float) -> None:
        """Record one point of a curve. NaN/inf are skipped (a plot cannot show them)."""
        value = float(value)
        if not math.isfinite(value):
            return
        with self._lock:
            self._metric_rows.append((self.job_id, int(step), name, value, time.time()))
        self._maybe_flush()

    def log(self, text: str) -> None:
        with self._lock:
            self._log_rows.append((time.time(), str(text)))
        self._maybe_flush()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise Cancelled(f"job {self.job_id} cancelled")

    # ----- checkpoints ---------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict) -> None:
        """Record the latest resumable state (JSON-able; big tensors go in checkpoint_dir first)."""
        json.dumps(state)  # fail here, not on resume, if it is not serializable
        self.flush()
        self.project.update_job(self.job_id, checkpoint=state)
        self.resume_state = state

    # ----- plumbing --------------------------------------------------------------------------------
    def _emit(self, type_: str, data: dict) -> None:
        if self._listener is not None:
            self._listener(JobEvent(self.job_id, type_, data))

    def _maybe_flush(self) -> None:
        if (
            time.monotonic() - self._last_flush >= self.FLUSH_SECONDS
            or len(self._metric_rows) >= self.FLUSH_ROWS
        ):
            self.flush()

    def flush(self) -> None:
        """Write buffered metrics and log lines in one transaction each, then tell listeners."""
        with self._lock:
            metrics, self._metric_rows = self._metric_rows, []
            logs, self._log_rows = self._log_rows, []
            self._last_flush = time.monotonic()
        if metrics:
            self.project.add_metrics(metrics)
            self._emit("metrics", {"rows": [(step, name, value) for _, step, name, value, _ in metrics]})
        if logs:
            self.project.add_logs(self.job_id, logs)
            self._emit("log", {"lines": [text for _, text in logs]})


class _Flusher(threading.Thread):
    """Flushes a context's buffers every half second, so a point logged before a long step still shows."""

    def __init__(self, ctx: JobContext):
        super().__init__(daemon=True, name=f"emgui-flush-{ctx.job_id}")
        self.ctx = ctx
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(JobContext.FLUSH_SECONDS):
            try:
                self.ctx.flush()
            except Exception:  # the job's own flush at the end reports real problems
                pass


def _oom_message(exc: BaseException) -> str | None:
    name = type(exc).__name__
    text = str(exc)
    if isinstance(exc, MemoryError) or name == "OutOfMemoryError" or "out of memory" in text.lower():
        return (
            "out of memory: the model or batch does not fit. Try LoRA instead of full fine-tuning, a smaller batch "
            f"size (with gradient accumulation), shorter sequences, or gradient checkpointing. ({name}: {text[:300]})"
        )
    return None


def run_job(
    project: Project,
    job_id: int,
    *,
    cancel_event: threading.Event | None = None,
    listener: Listener | None = None,
    step_hooks: tuple[Callable, ...] = (),
    host: Any = None,
    runner: Callable[[str, dict, JobContext], dict | None] | None = None,
) -> str:
    """Run a queued (or resumed) job in the calling thread. Returns the final status; never raises for
    a failing job: the error and traceback are stored on the job instead. `runner(kind, params, ctx)`
    runs the job's function elsewhere (a Ray task) and relays its reports into `ctx`."""
    cancel_event = cancel_event or threading.Event()
    job = project.get_job(job_id)
    ctx = JobContext(project, job_id, job["params"], cancel_event, listener, step_hooks, host)

    def finish(status: str, **fields: Any) -> str:
        try:
            ctx.flush()
        finally:
            project.update_job(job_id, status=status, ended_at=time.time(), **fields)
            ctx._emit("status", {"status": status, **{k: v for k, v in fields.items() if k != "traceback"}})
        return status

    if cancel_event.is_set():
        return finish("cancelled", message="cancelled before it started")
    project.update_job(
        job_id,
        status="running",
        started_at=time.time(),
        ended_at=None,
        pid=os.getpid(),
        error=None,
        traceback=None,
        heartbeat=time.time(),
    )
    ctx._emit("status", {"status": "running"})
    flusher = _Flusher(ctx)
    flusher.start()
    try:
        kind = get_kind(job["kind"])
        params = kind.resolve(job["params"])  # rows made before submit-time checks, or by hand
        result = runner(kind.name, params, ctx) if runner is not None else kind.load()(params, ctx)
    except Cancelled:
        return finish("cancelled", message="cancelled")
    except EmguiError as exc:
        return finish("failed", error=str(exc), traceback=traceback.format_exc(), message=str(exc)[:200])
    except BaseException as exc:  # noqa: BLE001 - a job must never take the app down
        error = _oom_message(exc) or f"{type(exc).__name__}: {exc}"
        if isinstance(exc, KeyboardInterrupt):
            finish("interrupted", error=error, traceback=traceback.format_exc(), message="interrupted")
            raise
        return finish("failed", error=error, traceback=traceback.format_exc(), message=error[:200])
    finally:
        flusher.stop.set()
        _release_models(ctx)
    return finish("succeeded", progress=1.0, result=result or {}, message=ctx.last_message or "done")


def _release_models(ctx: JobContext) -> None:
    if ctx.model_leases:  # a job that never borrowed need not import the host
        from emgui.core.models.host import release_job_models

        release_job_models(ctx)


def jobs_running_elsewhere(project: Project) -> list[dict]:
    """Queued or running jobs of other live processes on this project (a CLI run beside the window)."""
    from emgui.core.project.store import pid_alive

    rows = project.query("SELECT id, kind, pid, progress FROM jobs WHERE status IN ('queued', 'running')")
    return [r for r in rows if r["pid"] != os.getpid() and pid_alive(r["pid"])]


def prepare_resume(project: Project, job_id: int) -> dict:
    """Queue a finished job to run again under the same id. Kinds that support it continue from the
    last checkpoint; the others start over."""
    job = project.get_job(job_id)
    if job["status"] in ("queued", "running"):
        raise EmguiError(f"job {job_id} is still {job['status']}")
    if job["status"] == "succeeded":
        raise EmguiError(f"job {job_id} already succeeded; start a new job instead")
    resumable = get_kind(job["kind"]).resumable
    project.update_job(
        job_id,
        status="queued",
        pid=os.getpid(),
        message="queued to resume",
        checkpoint=job.get("checkpoint") if resumable else None,
        progress=job["progress"] if resumable and job.get("checkpoint") else 0.0,
    )
    return project.get_job(job_id)


class JobManager:
    """Runs jobs in background threads. Heavy jobs wait in a FIFO queue so that at most `max_heavy` of
    them use the accelerator at once; light jobs (imports, downloads) start at once."""

    def __init__(
        self, project: Project, *, max_heavy: int = 1, listener: Listener | None = None, host: Any = None
    ):
        self.project = project
        self.host = host  # passed to every job's context (None: the process's default model host)
        self.max_heavy = max_heavy
        self._listeners: list[Listener] = [listener] if listener else []
        self._cancel: dict[int, threading.Event] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._heavy_queue: deque[int] = deque()
        self._heavy_running = 0
        self._cond = threading.Condition()

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _notify(self, event: JobEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken listener must not break the job
                traceback.print_exc()

    def submit(self, kind: str, params: dict | None = None) -> int:
        """Queue a job. Unknown kinds, refused parameters and jobs their kind's precheck refuses (too big for
        memory) fail here, before a job row exists; the row holds the full parameters (the defaults filled in)."""
        self.project.check_writable("run jobs")
        resolved = resolve_params(kind, params)
        get_kind(kind).run_precheck(self.project, resolved)
        job_id = self.project.create_job(kind, resolved)
        self._start(job_id)
        return job_id

    def resume(self, job_id: int) -> int:
        """Run an interrupted, failed or cancelled job again under the same id, from its last checkpoint."""
        self.project.check_writable("run jobs")
        prepare_resume(self.project, job_id)
        self._start(job_id)
        return job_id

    def _start(self, job_id: int) -> None:
        cancel = threading.Event()
        self._cancel[job_id] = cancel
        heavy = get_kind(self.project.get_job(job_id)["kind"]).heavy
        if heavy:  # queue in submission order, before the thread exists
            with self._cond:
                self._heavy_queue.append(job_id)
        self._notify(JobEvent(job_id, "status", {"status": "queued"}))
        thread = threading.Thread(
            target=self._worker, args=(job_id, cancel, heavy), daemon=True, name=f"emgui-job-{job_id}"
        )
        self._threads[job_id] = thread
        thread.start()

    def _worker(self, job_id: int, cancel: threading.Event, heavy: bool) -> None:
        holds_slot = False
        if heavy:
            with self._cond:
                while not cancel.is_set() and (
                    self._heavy_queue[0] != job_id or self._heavy_running >= self.max_heavy
                ):
                    self._cond.wait(0.2)
                self._heavy_queue.remove(job_id)
                holds_slot = not cancel.is_set()
                self._heavy_running += holds_slot
                self._cond.notify_all()
        try:
            run_job(self.project, job_id, cancel_event=cancel, listener=self._notify, host=self.host)
        finally:
            if holds_slot:
                with self._cond:
                    self._heavy_running -= 1
                    self._cond.notify_all()

    def cancel(self, job_id: int) -> None:
        event = self._cancel.get(job_id)
        if event is not None:
            event.set()

    def is_active(self, job_id: int) -> bool:
        thread = self._threads.get(job_id)
        return bool(thread and thread.is_alive())

    def active_jobs(self) -> list[int]:
        return [job_id for job_id, t in self._threads.items() if t.is_alive()]

    def wait(self, job_id: int, timeout: float | None = None) -> str:
        thread = self._threads.get(job_id)
        if thread is not None:
            thread.join(timeout)
        return self.project.get_job(job_id)["status"]

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel everything and wait for the workers (on window close)."""
        for event in self._cancel.values():
            event.set()
        deadline = time.monotonic() + timeout
        for thread in list(self._threads.values()):
            thread.join(max(0.0, deadline - time.monotonic()))
