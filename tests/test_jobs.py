"""The job machinery: progress, metrics batching, cancel, failures, the heavy-job queue, resume, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from emgui.core.jobs.runner import JobManager, prepare_resume, run_job
from emgui.core.project.store import Project

REPO = Path(__file__).resolve().parents[1]


def test_job_reports_progress_metrics_logs_and_result(project: Project) -> None:
    events = []
    manager = JobManager(project, listener=events.append)
    job_id = manager.submit("test-count", {"steps": 20})
    assert manager.wait(job_id, 30) == "succeeded"
    job = project.get_job(job_id)
    assert job["progress"] == 1.0 and job["result"] == {"counted": 20, "started_at_step": 0}
    assert job["started_at"] <= job["ended_at"]
    assert [m["value"] for m in project.metrics(job_id)] == [1.0 / (i + 1) for i in range(20)]
    assert project.logs(job_id)[0]["text"] == "starting at step 0"
    types = {e.type for e in events}
    assert {"status", "progress", "metrics", "log"} <= types
    assert events[-1].type == "status" and events[-1].data["status"] == "succeeded"


def test_metric_flood_is_batched(project: Project) -> None:
    """50,000 points: written in a handful of transactions, fast, all kept."""
    start = time.perf_counter()
    job_id = project.create_job("test-flood", {"n": 50000})
    events = []
    assert run_job(project, job_id, listener=events.append) == "succeeded"
    elapsed = time.perf_counter() - start
    assert len(project.metrics(job_id)) == 50000
    batches = [e for e in events if e.type == "metrics"]
    assert len(batches) < 100  # one event per batch, not per point
    assert elapsed < 20


def test_cancel_stops_within_seconds(project: Project) -> None:
    manager = JobManager(project)
    job_id = manager.submit("test-count", {"steps": 100000, "delay": 0.01})
    deadline = time.time() + 20
    while project.get_job(job_id)["status"] != "running":
        assert time.time() < deadline
        time.sleep(0.02)
    t0 = time.monotonic()
    manager.cancel(job_id)
    assert manager.wait(job_id, 10) == "cancelled"
    assert time.monotonic() - t0 < 2
    job = project.get_job(job_id)
    assert job["ended_at"] is not None and project.integrity_check() == "ok"


def test_exception_fails_job_with_traceback_and_manager_survives(project: Project) -> None:
    manager = JobManager(project)
    bad = manager.submit("test-fail", {})
    assert manager.wait(bad, 10) == "failed"
    job = project.get_job(bad)
    assert job["error"] == "ValueError: boom" and "Traceback" in job["traceback"] and "boom" in job["traceback"]
    user = manager.submit("test-fail", {"user_error": True})
    assert manager.wait(user, 10) == "failed"
    assert project.get_job(user)["error"] == "dataset 'x.jsonl' line 3: missing role"
    ok = manager.submit("test-count-light", {"steps": 3})
    assert manager.wait(ok, 10) == "succeeded"


def test_out_of_memory_gives_guidance(project: Project) -> None:
    job_id = project.create_job("test-oom", {})
    assert run_job(project, job_id) == "failed"
    error = project.get_job(job_id)["error"]
    assert "out of memory" in error and "LoRA" in error and "smaller batch" in error


def test_heavy_jobs_run_one_at_a_time_in_order(project: Project) -> None:
    manager = JobManager(project, max_heavy=1)
    ids = [manager.submit("test-count", {"steps": 5, "delay": 0.05}) for _ in range(3)]
    for job_id in ids:
        assert manager.wait(job_id, 30) == "succeeded"
    spans = [(project.get_job(i)["started_at"], project.get_job(i)["ended_at"]) for i in ids]
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end  # strictly one after another, first come first served


def test_light_jobs_do_not_wait_for_heavy_ones(project: Project) -> None:
    manager = JobManager(project, max_heavy=1)
    heavy = manager.submit("test-count", {"steps": 1000, "delay": 0.01})
    light = manager.submit("test-count-light", {"steps": 2})
    assert manager.wait(light, 10) == "succeeded"
    assert project.get_job(heavy)["status"] == "running"
    manager.cancel(heavy)
    assert manager.wait(heavy, 10) == "cancelled"


def test_cancelling_a_queued_job(project: Project) -> None:
    manager = JobManager(project, max_heavy=1)
    first = manager.submit("test-count", {"steps": 1000, "delay": 0.01})
    queued = manager.submit("test-count", {"steps": 3})
    time.sleep(0.3)
    assert project.get_job(queued)["status"] == "queued"
    manager.cancel(queued)
    assert manager.wait(queued, 10) == "cancelled"
    manager.cancel(first)
    manager.wait(first, 10)


def test_resume_continues_from_checkpoint(project: Project) -> None:
    manager = JobManager(project)
    job_id = manager.submit("test-count", {"steps": 400, "delay": 0.01, "every": 10})
    deadline = time.time() + 20
    while not (project.get_job(job_id)["checkpoint"] or {}).get("step", 0) >= 20:
        assert time.time() < deadline
        time.sleep(0.02)
    manager.cancel(job_id)
    assert manager.wait(job_id, 10) == "cancelled"
    saved = project.get_job(job_id)["checkpoint"]["step"]
    job = project.get_job(job_id)
    job["params"]["delay"] = 0
    project.update_job(job_id, params=job["params"])
    manager.resume(job_id)
    assert manager.wait(job_id, 30) == "succeeded"
    result = project.get_job(job_id)["result"]
    assert result["started_at_step"] == saved >= 20


def test_resume_refuses_running_and_succeeded(project: Project) -> None:
    from emgui.core.errors import EmguiError

    job_id = project.create_job("test-count", {"steps": 1})
    run_job(project, job_id)
    with pytest.raises(EmguiError, match="already succeeded"):
        prepare_resume(project, job_id)


def test_unknown_kind_is_refused_before_a_row_exists(project: Project) -> None:
    from emgui.core.errors import EmguiError

    with pytest.raises(EmguiError, match="unknown job kind 'nope'"):
        JobManager(project).submit("nope", {})
    assert project.list_jobs() == []


def test_flusher_writes_metrics_while_job_is_busy(project: Project) -> None:
    """A point logged before a long step appears in the store within a second, not at the end."""
    release = threading.Event()

    from emgui.core.jobs.registry import JobKind, register_kind

    def slow(params, ctx):
        ctx.metric("first", 0, 1.0)
        release.wait(10)
        return {}

    import tests.jobkinds_for_tests as mod

    mod.slow_job = slow
    register_kind(JobKind("test-slow", "tests.jobkinds_for_tests:slow_job", "test", heavy=False))
    manager = JobManager(project)
    job_id = manager.submit("test-slow", {})
    deadline = time.time() + 5
    while not project.metrics(job_id):
        assert time.time() < deadline, "metric not flushed during the job"
        time.sleep(0.05)
    release.set()
    assert manager.wait(job_id, 10) == "succeeded"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emgui", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_new_jobs_and_errors(tmp_path: Path) -> None:
    root = tmp_path / "cliproj"
    res = _cli("new", str(root))
    assert res.returncode == 0, res.stderr
    res = _cli("jobs", str(root), "--json")
    assert res.returncode == 0 and json.loads(res.stdout) == []
    res = _cli("run", str(root), "no-such-kind")
    assert res.returncode == 1 and "unknown job kind 'no-such-kind'" in res.stderr
    res = _cli("models", "add", str(root), str(tmp_path / "missing.gguf"))
    assert res.returncode == 1 and "missing.gguf" in res.stderr
    res = _cli("models", "list", str(tmp_path / "nothere"), "--json")
    assert res.returncode == 1 and "not an emgui project" in res.stderr
    res = _cli("run", str(root), "model-import", "--param", "path=/no/such/folder")
    assert res.returncode == 1 and "/no/such/folder" in res.stderr
    jobs = json.loads(_cli("jobs", str(root), "--json").stdout)
    assert jobs[-1]["status"] == "failed"


def test_params_reader_names_the_field() -> None:
    from emgui.core.errors import EmguiError
    from emgui.core.jobs.params import Params, parse_cli_params

    params = parse_cli_params(["lr=1e-4", "steps=10", "name=abc", "flag=true", "layers=[1,2]"])
    assert params == {"lr": 1e-4, "steps": 10, "name": "abc", "flag": True, "layers": [1, 2]}
    p = Params({"steps": "ten", "extra": 1}, "finetune")
    with pytest.raises(EmguiError, match="finetune: parameter 'steps' must be an integer, got 'ten'"):
        p.int("steps")
    p = Params({"steps": 5, "extra": 1}, "finetune")
    assert p.int("steps", min=1) == 5
    with pytest.raises(EmguiError, match="unknown parameter\\(s\\) extra"):
        p.done()
    with pytest.raises(EmguiError, match="missing parameter 'model'"):
        Params({}, "sample").str("model")
