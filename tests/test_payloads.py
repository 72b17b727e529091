"""The safety defaults against live payloads: a pickle and a `modeling_*.py` that would each create a marker
file if they ran. After every refusal the marker is absent and nothing was registered."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest

from emgui.core.errors import EmguiError
from emgui.core.jobs.runner import run_job
from emgui.core.project.store import Project
from tests.builders import make_tiny_chat_model
from tests.hubserver import FakeHub


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = make_tiny_chat_model(tmp_path_factory.mktemp("tiny-payload"))
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


class _Payload:
    """Unpickling this runs `open(marker, "w")`: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle_payloads(marker: Path) -> dict[str, bytes]:
    """The same payload as a torch zip checkpoint (data.pkl inside) and as a bare legacy pickle."""
    import torch

    buffer = io.BytesIO()
    torch.save({"model.embed_tokens.weight": torch.zeros(4, 4), "hook": _Payload(marker)}, buffer)
    legacy = pickle.dumps({"model.embed_tokens.weight": _Payload(marker)}, protocol=2)
    assert zipfile.is_zipfile(io.BytesIO(buffer.getvalue()))
    return {"pytorch_model.bin": buffer.getvalue(), "legacy": legacy}


def _remote_code_files(marker: Path, tiny_files: dict[str, bytes]) -> dict[str, bytes]:
    code = f"open({str(marker)!r}, 'w').close()\nfrom transformers import LlamaForCausalLM as EvilForCausalLM\n"
    config = json.loads(tiny_files["config.json"])
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    return {**tiny_files, "config.json": json.dumps(config).encode(), "modeling_evil.py": code.encode()}


def _folder(path: Path, files: dict[str, bytes]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


def test_the_payloads_are_live(tmp_path: Path, tiny_files) -> None:
    """Controls: unpickled or imported on purpose, each payload does create its marker."""
    import runpy

    import torch

    marker = tmp_path / "control"
    payloads = _pickle_payloads(marker)
    pickle.loads(payloads["legacy"])["model.embed_tokens.weight"].close()
    assert marker.exists()
    marker.unlink()
    torch.load(io.BytesIO(payloads["pytorch_model.bin"]), weights_only=False)["hook"].close()
    assert marker.exists()
    marker.unlink()
    code = tmp_path / "modeling_evil.py"
    code.write_bytes(_remote_code_files(marker, tiny_files)["modeling_evil.py"])
    runpy.run_path(str(code))
    assert marker.exists()


def _refused(project: Project, kind: str, params: dict, marker: Path, *words: str) -> None:
    job_id = project.create_job(kind, params)
    assert run_job(project, job_id) == "failed"
    error = project.get_job(job_id)["error"]
    assert all(w in error for w in words), error
    assert not marker.exists(), f"the payload ran during {kind} {params}"
    assert project.list_models() == []


def test_pickle_payloads_never_run_on_import(project: Project, tmp_path: Path, tiny_files) -> None:
    marker = tmp_path / "pickle-ran"
    payloads = _pickle_payloads(marker)
    assert not marker.exists()
    config = {"config.json": tiny_files["config.json"]}
    zipped = _folder(tmp_path / "zipped", {**config, "pytorch_model.bin": payloads["pytorch_model.bin"]})
    legacy = _folder(tmp_path / "legacy", {**config, "pytorch_model.bin": payloads["legacy"]})
    for folder in (zipped, legacy):
        _refused(project, "model-import", {"path": str(folder)}, marker, "pickle", "allow_pickle")
    # Safetensors beside a pickle: the safetensors load, the pickle is never opened.
    both = _folder(tmp_path / "both", {**tiny_files, "pytorch_model.bin": payloads["pytorch_model.bin"]})
    job_id = project.create_job("model-import", {"path": str(both), "name": "both"})
    assert run_job(project, job_id) == "succeeded", project.get_job(job_id)["error"]
    from emgui.core.models.loading import load_model, load_tokenizer

    row = project.get_model("both")
    load_model(project, row, device="cpu")
    load_tokenizer(project, row)
    assert not marker.exists()


def test_remote_code_never_runs_without_trust(project: Project, tmp_path: Path, tiny_files) -> None:
    marker = tmp_path / "code-ran"
    evil = _folder(tmp_path / "evil", _remote_code_files(marker, tiny_files))
    _refused(project, "model-import", {"path": str(evil)}, marker, "trust_remote_code")
    # A folder registered clean that gains remote code later still loads without running it.
    clean = _folder(tmp_path / "clean", tiny_files)
    job_id = project.create_job("model-import", {"path": str(clean), "name": "clean"})
    assert run_job(project, job_id) == "succeeded"
    _folder(clean, _remote_code_files(marker, tiny_files))
    tok_config = json.loads((clean / "tokenizer_config.json").read_text())
    tok_config["auto_map"] = {"AutoTokenizer": ["modeling_evil.EvilTokenizer", None]}
    (clean / "tokenizer_config.json").write_text(json.dumps(tok_config))
    from emgui.core.models.loading import load_model, load_tokenizer

    row = project.get_model("clean")
    for load in (lambda: load_model(project, row, device="cpu"), lambda: load_tokenizer(project, row)):
        try:
            load()
        except (EmguiError, ValueError, OSError):
            pass  # refusing is fine; running the code is not
        assert not marker.exists()


def test_hub_repos_with_payloads_are_refused(project: Project, tmp_path: Path, tiny_files, monkeypatch) -> None:
    marker = tmp_path / "hub-payload-ran"
    weights = {k: v for k, v in tiny_files.items() if k != "model.safetensors"}
    with FakeHub() as server:
        server.add_repo("org/pickled", {**weights, "pytorch_model.bin": _pickle_payloads(marker)["pytorch_model.bin"]})
        server.add_repo("org/remote", _remote_code_files(marker, tiny_files))
        for key, value in {"HF_ENDPOINT": server.url, "HF_HUB_CACHE": str(tmp_path / "cache"),
                           "HF_TOKEN_PATH": str(tmp_path / "no-token"),
                           "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"}.items():  # fmt: skip
            monkeypatch.setenv(key, value)
        for key in ("HF_TOKEN", "HF_HUB_OFFLINE"):
            monkeypatch.delenv(key, raising=False)
        _refused(project, "model-download", {"repo": "org/pickled"}, marker, "pickle")
        _refused(project, "model-download", {"repo": "org/remote"}, marker, "trust_remote_code")
    assert not os.path.exists(marker)
