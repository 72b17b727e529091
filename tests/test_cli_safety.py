"""The command line under an unlucky user: Ctrl-C in the middle of a fine-tune, numbers that are not
numbers, strict JSON output, empty files, and job messages that span lines."""

from __future__ import annotations

import json
import math
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emgui.core.errors import EmguiError
from emgui.core.jobs.params import Params, parse_cli_params
from emgui.core.jobs.runner import run_job
from emgui.core.project.store import Project
from tests.builders import register_tiny, tiny_chats, write_chats

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "emgui", *args], cwd=REPO, capture_output=True, text=True, timeout=180
    )


def _strict_json(text: str):
    def refuse(token: str):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def tiny_proj(project: Project, tiny_model_dir: Path, tmp_path: Path) -> Project:
    register_tiny(project, "tiny", tiny_model_dir)
    path = write_chats(tmp_path / "mem.jsonl", tiny_chats(8))
    project.add_dataset(name="mem", kind="chat", path=path, n_rows=8)
    return project


# ----- 6. Ctrl-C cancels, waits, keeps the checkpoint, exits 130 ----------------------------------------------
def _job_row(db: Path) -> dict | None:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT status, checkpoint FROM jobs ORDER BY id DESC LIMIT 1").fetchone()
        return dict(row) if row else None
    finally:
        conn.close()


def test_ctrl_c_in_emgui_run_cancels_a_fine_tune_and_keeps_its_checkpoint(tiny_proj: Project) -> None:
    root = tiny_proj.root
    tiny_proj.close()
    params = ["model=tiny", "dataset=mem", "max_steps=100000", "checkpoint_every=2", "batch_size=2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "emgui", "run", str(root), "finetune", *[x for p in params for x in ("--param", p)]],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while True:  # until the fine-tune has saved a checkpoint and is training on
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "no checkpoint within 120 s"
            row = _job_row(root / "project.db")
            if row and row["checkpoint"] and json.loads(row["checkpoint"]).get("step", 0) >= 2:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "cancelling job" in err and "terminate called" not in err and "Traceback" not in err
    row = _job_row(root / "project.db")
    assert row["status"] == "cancelled"  # not left `running`, not `interrupted`
    step = json.loads(row["checkpoint"])["step"]
    assert step >= 2
    with Project.open(root) as again:
        job = again.list_jobs()[-1]
        assert job["status"] == "cancelled" and job["checkpoint"]["step"] == step
        assert (again.job_dir(job["id"]) / "checkpoints").is_dir()


# ----- 7. numbers that are not numbers ------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "true", "false"])
def test_number_parameters_refuse_nan_infinity_and_booleans(text: str) -> None:
    params = parse_cli_params([f"lr={text}"])
    with pytest.raises(EmguiError, match="parameter 'lr' must be a"):
        Params(params, "finetune").float("lr", 1e-4)
    with pytest.raises(EmguiError, match="parameter 'lr' must be"):
        Params(params, "finetune").int("lr", 1)


def test_number_lists_refuse_nan_and_infinity() -> None:
    for text in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(EmguiError, match="parameter 'alphas' must be a list of finite numbers"):
            Params(parse_cli_params([f"alphas=[1, {text}]"]), "steer-sweep").list("alphas")
    assert Params(parse_cli_params(["alphas=[1, 2.5]"]), "steer-sweep").list("alphas") == [1, 2.5]
    assert Params({"lr": 0.5}, "x").float("lr") == 0.5


def test_jobs_refuse_non_finite_and_boolean_numbers_naming_the_parameter(tiny_proj: Project) -> None:
    for params in ({"lr": True}, {"lora_dropout": math.nan}, {"lr": math.inf}):
        job_id = tiny_proj.create_job("finetune", {"model": "tiny", "dataset": "mem", "max_steps": 1, **params})
        assert run_job(tiny_proj, job_id) == "failed"
        error = tiny_proj.get_job(job_id)["error"]
        assert f"parameter '{next(iter(params))}'" in error, error
    assert not [m for m in tiny_proj.list_models() if m["kind"] == "adapter"]
    job_id = tiny_proj.create_job("sample", {"model": "tiny", "temperature": math.nan, "n": 1})
    assert run_job(tiny_proj, job_id) == "failed"
    assert "parameter 'temperature'" in tiny_proj.get_job(job_id)["error"]


def test_json_output_is_strict_json_even_for_old_rows_holding_nan(project: Project) -> None:
    job_id = project.create_job("model-import", {"lr": math.nan})  # as written before NaN was refused
    project.update_job(job_id, status="failed", progress=0.5, result={"loss": math.nan, "top": [math.inf, 1.0]})
    project.add_model(name="m", kind="folder", source="/x", path="/x", info={"ratio": -math.inf})
    project.add_dataset(name="d", kind="chat", path="/d.jsonl", info={"mean": math.nan})
    root = str(project.root)
    jobs = _strict_json(_cli("jobs", root, "--json").stdout)
    assert jobs[0]["result"] == {"loss": None, "top": [None, 1.0]} and jobs[0]["params"] == {"lr": None}
    assert _strict_json(_cli("models", "list", root, "--json").stdout)[0]["info"] == {"ratio": None}
    assert _strict_json(_cli("datasets", "list", root, "--json").stdout)[0]["info"] == {"mean": None}


# ----- 8. empty files and multi-line messages -------------------------------------------------------------------
def test_datasets_check_of_an_empty_file_fails(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n  \n")
    for path in (empty, blank):
        res = _cli("datasets", "check", str(path))
        assert res.returncode == 1 and "no chats" in res.stdout, res.stdout
    good = write_chats(tmp_path / "good.jsonl", tiny_chats(2))
    assert _cli("datasets", "check", str(good)).returncode == 0


def test_jobs_prints_one_line_per_job(project: Project) -> None:
    messages = ["first line\nsecond line\r\nthird", "tab\there \x1b[31mred\x1b[0m", "plain"]
    for message in messages:
        job_id = project.create_job("model-import", {})
        project.update_job(job_id, status="failed", message=message)
    res = _cli("jobs", str(project.root))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == len(messages), res.stdout
    assert "first line second line  third" in lines[0]
    assert "\x1b" not in res.stdout


def test_run_refuses_a_read_only_project_before_creating_a_job(project: Project) -> None:
    from emgui.cli import run_inline

    project.read_only = True
    with pytest.raises(EmguiError, match="read-only"):
        run_inline(project, "dataset-import", {"source": "generated:secure"})
    project.read_only = False
    assert project.list_jobs() == []
