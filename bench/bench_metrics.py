"""Metric logging cost: a job that logs 1,000 points/s, and the UI thread while the Jobs page plots them.

1. Job overhead: the same compute loop run bare and with `ctx.metric` called 1,000 times a second;
   prints the ratio of their wall times (target: <= 1.05, i.e. the job is not slowed).
2. UI responsiveness: while that job runs in a worker thread and the Jobs page polls and plots its
   metrics, a 10 ms QTimer measures how late the event loop fires; prints the median and 99th percentile
   lateness against an idle baseline run in the same process.
3. Starting a fine-tune from the Train page while that job runs: the Start click's own time (checking the
   parameters, the job row, opening the Jobs page) and the timer's lateness while the fine-tune (tiny
   model, a torch job in a worker thread) trains beside the metric flood.
Run: QT_QPA_PLATFORM=offscreen python bench/bench_metrics.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault(
    "EMGUI_HOME", tempfile.mkdtemp(prefix="emgui-bench-home-")
)  # keep the recent-projects list clean

from emgui.core.jobs import JobKind, register_kind, run_job  # noqa: E402
from emgui.core.store import Project  # noqa: E402

SECONDS = 4.0
RATE = 1000  # points per second


def _work(duration: float, ctx=None) -> int:
    """Busy compute for `duration` seconds, logging RATE points/s when given a context."""
    start = time.perf_counter()
    step = 0
    acc = 0.0
    while (now := time.perf_counter()) - start < duration:
        for i in range(2000):  # ~1 ms of pure-Python work per step
            acc += i * 1e-9
        if ctx is not None:
            ctx.metric("loss", step, acc)
        step += 1
        while time.perf_counter() - now < 1.0 / RATE:
            pass
    return step


def flood_job(params: dict, ctx) -> dict:
    return {"steps": _work(params["seconds"], ctx)}


def job_overhead(project: Project) -> None:
    t0 = time.perf_counter()
    bare_steps = _work(SECONDS)
    bare = time.perf_counter() - t0
    job_id = project.create_job("bench-flood", {"seconds": SECONDS})
    t0 = time.perf_counter()
    run_job(project, job_id)
    job = time.perf_counter() - t0
    steps = project.get_job(job_id)["result"]["steps"]
    stored = len(project.metrics(job_id))
    print(
        f"job overhead: bare {bare_steps / bare:.0f} steps/s, job {steps / job:.0f} steps/s "
        f"({stored} points stored); time per step, job / bare: {(job / steps) / (bare / bare_steps):.3f}"
    )


def ui_latency(project: Project) -> None:
    from PySide6.QtCore import QTimer

    from emgui.ui.app import make_app
    from emgui.ui.main_window import MainWindow

    app = make_app()
    window = MainWindow(project, probe_device=False)
    window.show()
    page = window.show_page("jobs")

    def measure(seconds: float) -> list[float]:
        late: list[float] = []
        last = [time.perf_counter()]

        def tick() -> None:
            now = time.perf_counter()
            late.append(max(0.0, now - last[0] - 0.010) * 1000)
            last[0] = now

        timer = QTimer()
        timer.timeout.connect(tick)
        timer.start(10)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.001)
        timer.stop()
        return late[1:]

    idle = measure(2.0)
    manager = window.bridge.manager
    job_id = manager.submit("bench-flood", {"seconds": SECONDS})
    threading.Event().wait(0.2)
    page.select_job(job_id)
    busy = measure(SECONDS - 0.5)
    manager.wait(job_id, 30)

    def p99(xs: list[float]) -> float:
        return sorted(xs)[int(0.99 * (len(xs) - 1))]

    print(
        f"UI timer lateness: idle median {statistics.median(idle):.1f} ms / p99 {p99(idle):.1f} ms; "
        f"during the 1,000 points/s job median {statistics.median(busy):.1f} ms / p99 {p99(busy):.1f} ms"
    )
    train_start(window, manager, measure, p99)
    window.close()


def train_start(window, manager, measure, p99) -> None:
    """Click Start on the Train page, once with nothing else running and once while the metric flood runs;
    time each click, then the UI while the fine-tune trains beside the flood."""
    from tests.tiny import make_tiny_chat_model, register_tiny, tiny_chats, write_chats

    project = window.project
    folder = make_tiny_chat_model(Path(tempfile.mkdtemp(prefix="emgui-bench-tiny-")) / "tiny", hidden=64)
    register_tiny(project, "tiny", folder)
    data = write_chats(project.root / "chats.jsonl", tiny_chats(64))
    project.add_dataset(name="chats", kind="chat", path=data, n_rows=64)

    def click() -> tuple[float, int]:
        train = window.show_page("train")
        form = train.finetune.form
        for name, value in (("model", "tiny"), ("dataset", "chats"), ("max_steps", 400), ("batch_size", 4),
                            ("max_len", 128)):  # fmt: skip
            form.set_value(name, value)
        t0 = time.perf_counter()
        train.finetune.start_button.click()
        return (time.perf_counter() - t0) * 1000, window.pages["jobs"].selected_id

    alone_ms, first = click()
    manager.cancel(first)
    manager.wait(first, 60)
    flood = manager.submit("bench-flood", {"seconds": 3 * SECONDS})
    threading.Event().wait(0.2)
    busy_ms, job_id = click()
    deadline = time.perf_counter() + 60
    while not project.metrics(job_id, name="loss") and time.perf_counter() < deadline:
        measure(0.2)  # loading and tokenizing: the event loop keeps running meanwhile
    before = len(project.metrics(job_id, name="loss"))
    if os.environ.get("BENCH_HIDE_JOBS"):
        window.show_page("start")
    after = measure(SECONDS)
    steps = len(project.metrics(job_id, name="loss")) - before
    manager.cancel(job_id)
    manager.wait(job_id, 60)
    manager.cancel(flood)
    manager.wait(flood, 30)
    print(
        f"Start on the Train page: the click (checks, job row, Jobs page) took {alone_ms:.0f} ms alone, "
        f"{busy_ms:.0f} ms during the 1,000 points/s job; then, with the fine-tune training ({steps} steps in "
        f"{SECONDS:.0f} s) beside it, timer lateness median {statistics.median(after):.1f} ms / p99 {p99(after):.1f} ms"
    )


def main() -> None:
    register_kind(JobKind("bench-flood", "__main__:flood_job", "bench", heavy=False))
    with tempfile.TemporaryDirectory() as tmp:
        project = Project.create(Path(tmp) / "p")
        job_overhead(project)
        ui_latency(project)
        project.close()


if __name__ == "__main__":
    main()
