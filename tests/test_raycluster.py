"""Ray on this machine (a local cluster of 2 CPU workers): a steering sweep's points run in parallel as Ray
tasks and give the same numbers as the local run; a killed worker fails only its point, with a clear
message, and resuming runs just that point; a job runs as one Ray task with its reports in the store, and a
cancel stops it. The judge is an OpenAI-compatible server on 127.0.0.1 (tests.test_sweep's)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from emgui.core.jobs.runner import JobManager, prepare_resume, run_job
from emgui.core.project.store import Project
from tests.builders import QUESTIONS_YAML, judge_url, register_tiny, tiny_chats, write_chats  # noqa: F401

pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'emgui[cluster]'")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_local():
    from emgui.core.jobs import raycluster

    raycluster.connect("local", num_cpus=2)
    yield raycluster
    raycluster.disconnect()


@pytest.fixture
def proj(project: Project, tiny_model_dir: Path, tmp_path: Path) -> Project:
    """The tiny model, a random direction at layer 1, two questions and 8 chats."""
    import torch
    from safetensors.torch import save_file

    from emgui.core.data.questions import import_questions

    register_tiny(project, "tiny", tiny_model_dir)
    hidden = json.loads((tiny_model_dir / "config.json").read_text())["hidden_size"]
    vector = torch.randn(hidden, generator=torch.Generator().manual_seed(0))
    save_file({"direction": vector}, str(tmp_path / "d.safetensors"))
    job_id = project.create_job("direction-import", {"path": str(tmp_path / "d.safetensors"), "model": "tiny",
                                                     "layer": 1, "name": "dir"})  # fmt: skip
    assert run_job(project, job_id) == "succeeded", project.get_job(job_id)["error"]
    (tmp_path / "q.yaml").write_text(QUESTIONS_YAML.format(system=json.dumps("Be brief.")), encoding="utf-8")
    import_questions(project, tmp_path / "q.yaml", "things")
    project.add_dataset(name="mem", kind="chat", path=write_chats(tmp_path / "mem.jsonl", tiny_chats(8)), n_rows=8)
    return project


def _sweep_params(judge: str) -> dict:
    return {
        "model": "tiny", "directions": ["dir"], "strengths": [0, 2, 4, 8], "layers": [1], "questions": "things",
        "n": 2, "temperature": 1.0, "max_new_tokens": 8, "controls": 1, "seed": 5,
        "judge": "openai", "judge_base_url": judge, "judge_model": "fake",
    }  # fmt: skip


def _answers(project: Project, job_id: int) -> dict:
    rows = project.query("SELECT * FROM samples WHERE job_id = ?", [job_id])
    return {(r["params"]["condition"], r["question_id"], r["paraphrase_index"], r["sample_index"]): r["answer"]
            for r in rows}  # fmt: skip


def _numbers(result: dict) -> tuple:
    keep = ("strength", "misaligned_pct", "n", "n_coherent", "mean_aligned", "mean_coherent")
    curves = [[{k: p[k] for k in keep} for p in c["points"]] for c in result["curves"] + result["controls"]]
    return result["baseline"], curves


def test_sweep_points_run_in_parallel_on_ray_with_the_numbers_of_a_local_run(
    proj: Project, ray_local, judge_url, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    params = _sweep_params(judge_url)
    with monkeypatch.context() as m:
        m.setattr(ray_local, "connected", lambda: False)
        local_id = proj.create_job("steer-sweep", params)
        assert run_job(proj, local_id) == "succeeded", proj.get_job(local_id)["error"]
    remote_id = proj.create_job("steer-sweep", params)
    assert run_job(proj, remote_id) == "succeeded", proj.get_job(remote_id)["error"]
    local, remote = proj.get_job(local_id), proj.get_job(remote_id)
    assert remote["result"]["n_conditions"] == 1 + 3 * 2  # the baseline, 3 strengths x (real + control)
    answers = _answers(proj, remote_id)
    assert len(answers) == 7 * 4 and answers == _answers(proj, local_id)  # 2 questions x n=2 per point
    assert _numbers(remote["result"]) == _numbers(local["result"])
    logs = " ".join(line["text"] for line in proj.logs(remote_id))
    assert "7 points on Ray" in logs and "2 workers, at most 2 at once, 0 failed" in logs, logs


def _kill_first_point_worker(stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first Ray worker seen running a sweep point (Ray titles it ray::_point_in_task)."""
    while not stop.is_set() and not killed:
        for entry in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                title = entry.read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if title.startswith(b"ray::_point_in_task"):
                os.kill(int(entry.parent.name), signal.SIGKILL)
                killed.append(int(entry.parent.name))
                return
        time.sleep(0.02)


def test_a_killed_worker_fails_only_its_point_and_resume_runs_just_that_one(
    proj: Project, ray_local, judge_url  # noqa: F811
) -> None:
    job_id = proj.create_job("steer-sweep", _sweep_params(judge_url))
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first_point_worker, args=(stop, killed), daemon=True)
    killer.start()
    try:
        assert run_job(proj, job_id) == "failed"
    finally:
        stop.set()
    assert killed, "no Ray worker was seen running a point"
    job = proj.get_job(job_id)
    assert "1 of 7 points failed" in job["error"] and "the Ray worker running it died" in job["error"], job["error"]
    assert "resume the job to run the failed ones" in job["error"]
    stored = {key[0] for key in _answers(proj, job_id)}
    assert len(stored) == 6  # the other points are kept, judged and in sweep.csv
    assert (proj.job_dir(job_id) / "sweep.csv").is_file()

    prepare_resume(proj, job_id)
    assert run_job(proj, job_id) == "succeeded", proj.get_job(job_id)["error"]
    logs = " ".join(line["text"] for line in proj.logs(job_id))
    assert "1 points on Ray" in logs
    assert len({key[0] for key in _answers(proj, job_id)}) == 7


def test_a_job_runs_as_a_ray_task_with_its_reports_in_the_store(proj: Project, ray_local) -> None:
    job_id = proj.create_job("finetune", {"model": "tiny", "dataset": "mem", "max_steps": 4, "device": "cpu",
                                          "name": "on-ray"})  # fmt: skip
    assert run_job(proj, job_id, runner=ray_local.remote_runner) == "succeeded", proj.get_job(job_id)["error"]
    job = proj.get_job(job_id)
    assert job["result"]["steps"] == 4 and job["progress"] == 1.0
    assert [m["step"] for m in proj.metrics(job_id, name="loss")] == [1, 2, 3, 4]
    logs = " ".join(line["text"] for line in proj.logs(job_id))
    assert "running as a Ray task (local; 1 CPU, 0 GPU)" in logs
    adapter = proj.get_model("on-ray")  # the artifact is in the project, registered by the task
    assert adapter["job_id"] == job_id and (proj.model_path(adapter) / "adapter_model.safetensors").is_file()


def test_cancel_stops_a_job_running_as_a_ray_task(proj: Project, ray_local) -> None:
    from emgui.core.jobs import raycluster

    manager = JobManager(proj)
    job_id = proj.create_job("finetune", {"model": "tiny", "dataset": "mem", "max_steps": 5000, "device": "cpu",
                                          "checkpoint_every": 0})  # fmt: skip
    cancel = threading.Event()
    done = threading.Event()
    threading.Thread(
        target=lambda: (run_job(proj, job_id, cancel_event=cancel, runner=raycluster.remote_runner), done.set()),
        daemon=True,
    ).start()
    deadline = time.time() + 120
    while not proj.metrics(job_id, name="loss"):
        assert time.time() < deadline and proj.get_job(job_id)["status"] in ("queued", "running")
        time.sleep(0.05)
    t0 = time.monotonic()
    cancel.set()
    assert done.wait(30)
    assert proj.get_job(job_id)["status"] == "cancelled" and time.monotonic() - t0 < 15
    assert not any(m["kind"] == "adapter" and m["job_id"] == job_id for m in proj.list_models())
    del manager


def test_cli_runs_a_job_on_a_local_ray(proj: Project) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-m", "emgui", "run", str(proj.root), "finetune", "--ray", "local",
         "--param", "model=tiny", "--param", "dataset=mem", "--param", "max_steps=2", "--param", "device=cpu",
         "--param", "name=cli-ray", "--json"],
        capture_output=True, text=True, env=env, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["result"]["steps"] == 2
    assert proj.get_model("cli-ray")["kind"] == "adapter"
    bad = subprocess.run(
        [sys.executable, "-m", "emgui", "run", str(proj.root), "finetune", "--ray", "tcp://nowhere",
         "--param", "model=tiny", "--param", "dataset=mem"],
        capture_output=True, text=True, env=env, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert bad.returncode != 0 and "give local, auto or ray://HOST:PORT" in bad.stderr
