"""Metric logging cost, and how long the UI thread can stall: a job that logs 1,000 points/s while the Jobs
page plots them, and a dataset holding one 10 MB chat imported and previewed.

1. Job overhead: the same compute loop run bare and with `ctx.metric` called 1,000 times a second;
   prints the ratio of their wall times (target: <= 1.05, i.e. the job is not slowed).
2. UI responsiveness: while that job runs in a worker thread and the Jobs page polls and plots its
   metrics, a 10 ms QTimer measures how late the event loop fires; prints the median and 99th percentile
   lateness against an idle baseline run in the same process.
3. UI stall with a 10 MB chat: the app imports a chat JSONL whose one chat has a 10 MB assistant turn,
   shows it on the Datasets page, reads it on piece by piece and searches it, while the same timer
   measures the longest stall of the event loop (target: < 50 ms) against the idle baseline.
4. Starting a fine-tune from the Train page while that job runs: the Start click's own time (checking the
   parameters, the job row, opening the Jobs page) and the timer's lateness while the fine-tune (tiny
   model, a torch job in a worker thread) trains beside the metric flood.
Run: QT_QPA_PLATFORM=offscreen python bench/bench_metrics.py [--only-10mb] [--parse-in-process]
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

from emgui.core.jobs.registry import JobKind, register_kind
from emgui.core.jobs.runner import run_job  # noqa: E402
from emgui.core.project.store import Project  # noqa: E402

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


def measure(app, seconds: float, until=None) -> list[float]:
    """Lateness (ms) of a 10 ms QTimer over `seconds`, or until `until()` is true (at most 10 minutes)."""
    from PySide6.QtCore import QTimer

    late: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        late.append(max(0.0, now - last[0] - 0.010) * 1000)
        last[0] = now

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(10)
    end = time.perf_counter() + (seconds if until is None else 600)
    while time.perf_counter() < end and not (until is not None and until()):
        app.processEvents()
        time.sleep(0.001)
    timer.stop()
    return late[1:]


def p99(xs: list[float]) -> float:
    return sorted(xs)[int(0.99 * (len(xs) - 1))] if xs else 0.0


def ui_latency(project: Project) -> None:
    from emgui.ui.app import make_app
    from emgui.ui.main_window import MainWindow

    app = make_app()
    window = MainWindow(project, probe_device=False)
    window.show()
    page = window.show_page("jobs")
    idle = measure(app, 2.0)
    manager = window.bridge.manager
    job_id = manager.submit("bench-flood", {"seconds": SECONDS})
    threading.Event().wait(0.2)
    page.select_job(job_id)
    busy = measure(app, SECONDS - 0.5)
    manager.wait(job_id, 30)
    print(
        f"UI timer lateness: idle median {statistics.median(idle):.1f} ms / p99 {p99(idle):.1f} ms; "
        f"during the 1,000 points/s job median {statistics.median(busy):.1f} ms / p99 {p99(busy):.1f} ms"
    )
    train_start(window, manager, measure, p99)
    window.close()


def ui_stall_with_a_10mb_chat(folder: Path) -> None:
    """The longest UI stall while the app imports, previews, pages through and searches a 10 MB chat."""
    import json

    from emgui.core.data import chats as chatdata
    from emgui.ui.app import make_app
    from emgui.ui.main_window import MainWindow

    source = folder / "huge.jsonl"
    big = ("lorem ipsum dolor sit amet " * 400_000)[:10_000_000] + " needle"
    with source.open("w", encoding="utf-8") as f:
        for i in range(3):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}) + "\n")
        f.write(json.dumps({"messages": [{"role": "user", "content": "write a lot"}, {"role": "assistant", "content": big}]}) + "\n")
    project = Project.create(folder / "big-chat")
    app = make_app()
    if "--parse-in-process" in sys.argv:  # for comparison: parsing in the app's own process holds the GIL
        chatdata.parse_in_helper_process(False)
    window = MainWindow(project, probe_device=False)
    window.show()
    page = window.show_page("datasets")
    idle = measure(app, 2.0)
    phases: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    job_id = window.bridge.submit("dataset-import", {"source": str(source), "name": "huge"})
    phases["import"] = measure(app, 0, until=lambda: project.is_finished(job_id))
    imported = time.perf_counter() - t0
    assert project.get_job(job_id)["status"] == "succeeded", project.get_job(job_id)["error"]
    page.refresh()
    page.table.selectRow(0)
    phases["preview"] = measure(app, 0, until=lambda: page.chat_list.count() == 4)
    page.chat_list.setCurrentRow(3)
    phases["show the long chat"] = measure(app, 0.5)
    for start in (chatdata.PREVIEW_CHARS, 4_000_000, 9_996_000):
        page.show_piece(1, start)
        phases.setdefault("read on, piece by piece", []).extend(
            measure(app, 0, until=lambda s=start: f"characters {s + 1:,}" in page.chat_view.toPlainText())
        )
    page.search.setText("needle")
    page._load_page(0)
    phases["search"] = measure(app, 0, until=lambda: page.page_label.text() == "1–1 of 1")
    worst = max(max(xs, default=0.0) for xs in phases.values())
    print(f"10 MB chat: imported in {imported:.1f} s; idle UI timer lateness p99 {p99(idle):.1f} ms, max {max(idle):.1f} ms")
    for name, xs in phases.items():
        print(f"  {name:<26} {len(xs):5d} ticks, p99 {p99(xs):6.1f} ms, longest stall {max(xs, default=0.0):6.1f} ms")
    print(f"  longest UI stall with the 10 MB chat: {worst:.1f} ms (target < 50 ms)")
    window.close()
    project.close()
def train_start(window, manager, measure, p99) -> None:
    """Click Start on the Train page, once with nothing else running and once while the metric flood runs;
    time each click, then the UI while the fine-tune trains beside the flood."""
    from tests.builders import make_tiny_chat_model, register_tiny, tiny_chats, write_chats

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
        if "--only-10mb" not in sys.argv:
            job_overhead(project)
            ui_latency(project)
        project.close()
        ui_stall_with_a_10mb_chat(Path(tmp))


if __name__ == "__main__":
    main()
