"""The project store: schema migrations, concurrency, provenance, crash recovery."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from emgui.core import schema
from emgui.core.errors import EmguiError
from emgui.core.store import Project

REPO = Path(__file__).resolve().parents[1]

# Rows that each schema version can hold, inserted before upgrading to check nothing is lost.
_SEED = {
    1: [
        "INSERT INTO jobs (kind, params, status, created_at) VALUES ('model-import', '{\"path\": \"/m\"}', 'succeeded', 1)",
        "INSERT INTO models (name, kind, source, path, created_at, job_id) VALUES ('m', 'folder', '/m', '/m', 1, 1)",
        "INSERT INTO metrics (job_id, step, name, value, t) VALUES (1, 0, 'loss', 2.5, 1)",
        "INSERT INTO notes (target_type, target_id, text, created_at, updated_at) VALUES ('model', '1', 'hi', 1, 1)",
    ],
    2: ["INSERT INTO settings (key, value) VALUES ('k', '1')"],
    3: [
        "INSERT INTO saes (name, path, hook_name, source, created_at) VALUES ('s', '/s', 'model.layers.1', 'x', 1)",
        "INSERT INTO latent_stats (job_id, sae_id, latent, delta_mean, rank) VALUES (1, 1, 7, 0.5, 1)",
        "INSERT INTO samples (job_id, question_id, prompt, answer, created_at) VALUES (1, 'wish', 'q', 'world peace', 1)",
        "INSERT INTO latent_labels (sae_id, latent, label, updated_at) VALUES (1, 7, 'toxic persona', 1)",
    ],
}


@pytest.mark.parametrize("start_version", range(0, schema.LATEST_VERSION + 1))
def test_every_earlier_version_migrates_to_latest(tmp_path: Path, start_version: int) -> None:
    root = tmp_path / "p"
    root.mkdir()
    db = sqlite3.connect(root / "project.db", isolation_level=None)
    schema.migrate(db, target=start_version)
    for version in range(1, start_version + 1):
        for sql in _SEED.get(version, []):
            db.execute(sql)
    db.close()

    project = Project.open(root)
    assert project.schema_version() == schema.LATEST_VERSION
    if start_version >= 1:
        assert project.get_model("m")["job_id"] == 1
        assert project.metrics(1)[0]["value"] == 2.5
        assert project.get_note("model", 1) == "hi"
        assert project.get_job(1)["checkpoint"] is None  # column added by v2
    if start_version >= 3:
        row = project.query_one("SELECT * FROM latent_stats WHERE latent = 7")
        assert row["delta_mean"] == 0.5 and row["z"] is None  # z: a column added by v4
        from emgui.core.search import search_answers, search_latents

        assert search_answers(project, "peace") == [1]  # rows from before v5 are in its search index
        assert search_latents(project, 1, "toxic") == {7}
    assert project.integrity_check() == "ok"
    project.close()


def test_failed_migration_leaves_previous_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    schema.migrate(db, target=1)
    monkeypatch.setattr(schema, "MIGRATIONS", [schema.MIGRATIONS[0], "CREATE TABLE settings_x (a); SELECT nonsense("])
    monkeypatch.setattr(schema, "LATEST_VERSION", 2)
    with pytest.raises(sqlite3.Error):
        schema.migrate(db)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "settings_x" not in tables


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "p"
    Project.create(root).close()
    db = sqlite3.connect(root / "project.db")
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(EmguiError, match="schema version 99"):
        Project.open(root)


def test_create_open_and_errors(tmp_path: Path) -> None:
    project = Project.create(tmp_path / "p")
    assert (tmp_path / "p" / "artifacts").is_dir()
    assert project._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert project._conn().execute("PRAGMA foreign_keys").fetchone()[0] == 1
    with pytest.raises(EmguiError, match="already holds"):
        Project.create(tmp_path / "p")
    with pytest.raises(EmguiError, match="not an emgui project"):
        Project.open(tmp_path / "nothing")


def test_concurrent_writes_from_threads(project: Project) -> None:
    job = project.create_job("test-count", {})
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(200):
                project.add_metrics([(job, i, f"m{k}", float(i), time.time())])
                project.add_logs(job, [(time.time(), f"{k}:{i}")])
                project.update_job(job, progress=i / 200)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(project.metrics(job)) == 6 * 200
    assert len(project.logs(job)) == 6 * 200
    assert project.integrity_check() == "ok"


def test_concurrent_writes_from_another_process(project: Project) -> None:
    job = project.create_job("test-count", {})
    code = textwrap.dedent(f"""
        import time
        from emgui.core.store import Project
        p = Project.open({str(project.root)!r}, recover=False)
        for i in range(300):
            p.add_metrics([({job}, i, "other", float(i), time.time())])
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    for i in range(300):
        project.add_metrics([(job, i, "here", float(i), time.time())])
    assert proc.wait(60) == 0
    assert len(project.metrics(job, name="other")) == 300
    assert len(project.metrics(job, name="here")) == 300


def test_provenance_chain(project: Project, tmp_path: Path) -> None:
    base_job = project.create_job("model-import", {"path": "/base"})
    base = project.add_model(name="base", kind="folder", source="/base", path="/base", job_id=base_job)
    data = project.add_dataset(name="insecure", kind="chat", path=tmp_path / "d.jsonl")
    ft_job = project.create_job("finetune", {"model": "base", "dataset": "insecure", "lr": 1e-4})
    adapter_dir = project.job_dir(ft_job) / "adapter"
    adapter_dir.mkdir(parents=True)
    (adapter_dir / "adapter_model.safetensors").write_bytes(b"x" * 100)
    ft = project.add_model(name="ft", kind="adapter", source="finetune", path=adapter_dir, base_model_id=base,
                           job_id=ft_job)
    art = project.add_artifact(adapter_dir / "adapter_model.safetensors", "adapter-weights", job_id=ft_job,
                               inputs=[{"type": "model", "id": ft}, {"type": "dataset", "id": data}])
    record = project.artifacts(ft_job)[0]
    assert record["path"].startswith("artifacts/jobs/")  # relative: the project folder can move
    assert record["size_bytes"] == 100 and len(record["sha256"]) == 64

    chain = project.provenance("artifacts", art)
    assert chain["job"]["kind"] == "finetune" and chain["job"]["params"]["lr"] == 1e-4
    model_node, data_node = chain["inputs"]
    assert model_node["name"] == "ft" and data_node["name"] == "insecure"
    assert model_node["inputs"][0]["name"] == "base" and model_node["inputs"][0]["role"] == "base"
    assert model_node["inputs"][0]["job"]["kind"] == "model-import"


def test_delete_model_frees_owned_files_and_guards_bases(project: Project) -> None:
    folder = project.artifacts_dir / "models" / "m"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"0" * 4096)
    base = project.add_model(name="m", kind="full", source="x", path=folder, size_bytes=4096)
    project.add_model(name="child", kind="adapter", source="x", path="/elsewhere", base_model_id=base)
    with pytest.raises(EmguiError, match="base of child"):
        project.delete_model("m")
    assert project.delete_model("child") == 0  # outside the project: files are not ours to delete
    assert project.delete_model("m") == 4096
    assert not folder.exists()
    with pytest.raises(EmguiError, match="no model 'm'"):
        project.get_model("m")


def test_notes_and_settings(project: Project) -> None:
    project.set_note("latent", "sae1:42", "toxic persona")
    project.set_note("latent", "sae1:42", "toxic persona (confirmed)")
    assert project.get_note("latent", "sae1:42") == "toxic persona (confirmed)"
    project.set_setting("max_heavy", 2)
    assert project.get_setting("max_heavy") == 2


def test_sigkill_mid_job_leaves_a_sound_db_and_an_interrupted_job(project: Project, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from tests import jobkinds_for_tests
        jobkinds_for_tests.register()
        from emgui.cli import main
        main(["run", {str(project.root)!r}, "test-count", "--param", "steps=100000", "--param", "delay=0.001",
              "--param", "marker={marker}", "--param", "marker_step=50"])
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not marker.exists():
        assert time.time() < deadline and proc.poll() is None, "the job never started"
        time.sleep(0.05)
    time.sleep(0.7)  # let it write metrics batches and progress for a while
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    reopened = Project.open(project.root)
    assert reopened.integrity_check() == "ok"
    job = reopened.list_jobs()[-1]
    assert job["status"] == "interrupted"
    assert len(reopened.metrics(job["id"])) > 10  # batches written before the kill survived
    reopened.close()
