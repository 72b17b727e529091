"""Job kinds used only by the tests: they exercise the job machinery without loading models."""

from __future__ import annotations

import time
from pathlib import Path

from emgui.core.errors import EmguiError
from emgui.core.jobs.registry import JobKind, register_kind


def counting_job(params: dict, ctx) -> dict:
    """Counts to `steps`, logging a metric per step and sleeping `delay` s; checkpoints every `every`."""
    steps = int(params.get("steps", 10))
    delay = float(params.get("delay", 0.0))
    every = int(params.get("every", 0))
    start = (ctx.resume_state or {}).get("step", 0)
    ctx.log(f"starting at step {start}")
    for step in range(start, steps):
        ctx.progress(step / steps, f"step {step}")
        ctx.metric("loss", step, 1.0 / (step + 1))
        if params.get("marker") and step == int(params.get("marker_step", 0)):
            Path(params["marker"]).write_text("running")
        if delay:
            time.sleep(delay)
        if every and (step + 1) % every == 0:
            ctx.save_checkpoint({"step": step + 1})
    return {"counted": steps, "started_at_step": start}


def metric_flood_job(params: dict, ctx) -> dict:
    """Logs `n` metric points as fast as it can."""
    n = int(params.get("n", 10000))
    for i in range(n):
        ctx.metric("x", i, float(i))
    return {"n": n}


def failing_job(params: dict, ctx) -> dict:
    ctx.log("about to fail")
    if params.get("user_error"):
        raise EmguiError("dataset 'x.jsonl' line 3: missing role")
    raise ValueError("boom")


def oom_job(params: dict, ctx) -> dict:
    raise MemoryError("CPU allocator could not allocate 40 GB")


def register() -> None:
    register_kind(JobKind("test-count", "tests.jobkinds_for_tests:counting_job", "test", heavy=True, resumable=True))
    register_kind(JobKind("test-count-light", "tests.jobkinds_for_tests:counting_job", "test", heavy=False))
    register_kind(JobKind("test-flood", "tests.jobkinds_for_tests:metric_flood_job", "test", heavy=False))
    register_kind(JobKind("test-fail", "tests.jobkinds_for_tests:failing_job", "test", heavy=False))
    register_kind(JobKind("test-oom", "tests.jobkinds_for_tests:oom_job", "test", heavy=False))
