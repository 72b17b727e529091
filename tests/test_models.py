"""The model manager end to end: CLI and jobs over a local hub server, folders, GGUF, safety defaults."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emgui.core.jobs.runner import JobManager, run_job
from emgui.core.project.store import Project
from tests.builders import make_tiny_chat_model
from tests.hubserver import FakeHub

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = make_tiny_chat_model(tmp_path_factory.mktemp("tiny-hub"))
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture
def hub_env(tiny_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A local hub serving org/tiny (a real tiny chat model) and a private cache; no token anywhere."""
    with FakeHub() as server:
        server.add_repo("org/tiny", tiny_files)
        server.add_repo("org/secret", tiny_files, private=True)
        env = {"HF_ENDPOINT": server.url, "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
               "HF_TOKEN_PATH": str(tmp_path / "no-token"), "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        for key in ("HF_TOKEN", "HF_HUB_OFFLINE"):
            monkeypatch.delenv(key, raising=False)
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read once, when it was imported
        yield server, env


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "emgui", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=180, env=full_env)


def test_cli_downloads_from_the_hub_and_lists_the_model(hub_env, tmp_path: Path) -> None:
    server, env = hub_env
    root = tmp_path / "proj"
    assert _cli("new", str(root)).returncode == 0
    res = _cli("models", "add", str(root), "org/tiny@main", "--name", "tiny", env=env)
    assert res.returncode == 0, res.stderr
    assert "added model 'tiny'" in res.stdout and "LlamaForCausalLM" in res.stdout
    assert "%" in res.stderr  # progress went to stderr
    models = json.loads(_cli("models", "list", str(root), "--json").stdout)
    assert len(models) == 1
    model = models[0]
    assert model["kind"] == "hub" and model["source"] == "org/tiny" and model["revision"] == "main"
    assert model["path"].startswith(env["HF_HUB_CACHE"])  # the standard cache, shared with other tools
    assert model["n_params"] > 0 and model["size_bytes"] > 0
    jobs = json.loads(_cli("jobs", str(root), "--json").stdout)
    assert jobs[0]["kind"] == "model-download" and jobs[0]["status"] == "succeeded"


def test_cli_errors_name_the_repo(hub_env, tmp_path: Path) -> None:
    _, env = hub_env
    root = tmp_path / "proj"
    _cli("new", str(root))
    res = _cli("models", "add", str(root), "org/missing", env=env)
    assert res.returncode == 1 and "org/missing" in res.stderr
    res = _cli("models", "add", str(root), "org/secret", env=env)
    assert res.returncode == 1 and "org/secret" in res.stderr and "token" in res.stderr.lower()
    assert json.loads(_cli("models", "list", str(root), "--json").stdout) == []


def test_download_cancel_then_resume_in_the_app_job_queue(hub_env, project: Project) -> None:
    server, _ = hub_env
    server.throttle = 200_000  # bytes/s: slow enough to cancel mid-file
    manager = JobManager(project)
    job_id = manager.submit("model-download", {"repo": "org/tiny"})
    deadline = time.time() + 20
    while project.get_job(job_id)["progress"] <= 0.05:
        assert time.time() < deadline, project.get_job(job_id)
        time.sleep(0.05)
    manager.cancel(job_id)
    assert manager.wait(job_id, 10) == "cancelled"
    assert project.list_models() == []  # never registered half-written
    server.throttle = None
    manager.resume(job_id)
    assert manager.wait(job_id, 60) == "succeeded"
    ranged = [r for r in server.requests if r.range and "/resolve/" in r.path]
    assert ranged, "the second attempt did not resume with a Range request"
    assert project.get_model("tiny")["job_id"] == job_id


def test_import_folder_and_safety_defaults(project: Project, tmp_path: Path, tiny_files) -> None:
    import torch

    folder = tmp_path / "plain"
    folder.mkdir()
    for name, data in tiny_files.items():
        (folder / name).write_bytes(data)
    job = project.create_job("model-import", {"path": str(folder), "name": "plain"})
    assert run_job(project, job) == "succeeded"
    assert project.get_model("plain")["kind"] == "folder"

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_bytes(tiny_files["config.json"])
    buffer = io.BytesIO()
    torch.save({"model.embed_tokens.weight": torch.zeros(4, 4)}, buffer)
    (pickled / "pytorch_model.bin").write_bytes(buffer.getvalue())
    job = project.create_job("model-import", {"path": str(pickled)})
    assert run_job(project, job) == "failed"
    assert "pickle" in project.get_job(job)["error"] and "allow_pickle" in project.get_job(job)["error"]
    job = project.create_job("model-import", {"path": str(pickled), "allow_pickle": True})
    assert run_job(project, job) == "succeeded"

    remote = tmp_path / "remote"
    remote.mkdir()
    config = json.loads(tiny_files["config.json"])
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "model.safetensors").write_bytes(tiny_files["model.safetensors"])
    job = project.create_job("model-import", {"path": str(remote)})
    assert run_job(project, job) == "failed" and "trust_remote_code" in project.get_job(job)["error"]


def test_gguf_import_converts_once_and_registers(project: Project, tmp_path: Path) -> None:
    from tests.builders import TINY_TOKENS, tiny_llama, write_tiny_gguf

    gguf = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf, tiny_llama(vocab_size=len(TINY_TOKENS), seed=1), TINY_TOKENS)
    res = _cli("models", "add", str(project.root), str(gguf), "--name", "from-gguf")
    assert res.returncode == 0, res.stderr
    model = Project.open(project.root).get_model("from-gguf")
    assert model["kind"] == "gguf" and model["architecture"] == "LlamaForCausalLM"
    assert model["info"]["gguf"]["architecture"] == "llama"
    assert (Path(model["path"]) / "model.safetensors").is_file()
