"""Nothing lost, nothing leaked: unique on-disk names, deletes that take only what a row owns, damaged and
read-only project databases, and the leftovers of interrupted imports."""

from __future__ import annotations

import http.server
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from emgui.core.errors import EmguiError
from emgui.core.jobs.runner import JobManager, run_job
from emgui.core.project.store import Project
from tests.builders import make_tiny_chat_model, tiny_chats, write_chats

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "emgui", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
        **kwargs,
    )


def _run(project: Project, kind: str, params: dict) -> dict:
    job_id = project.create_job(kind, params)
    run_job(project, job_id)
    return project.get_job(job_id)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# ----- 1. on-disk names are unique per row ---------------------------------------------------------------------
def test_dataset_names_that_slug_alike_get_files_of_their_own(project: Project, tmp_path: Path) -> None:
    first = write_chats(tmp_path / "f1.jsonl", tiny_chats(3))
    second = write_chats(tmp_path / "f2.jsonl", tiny_chats(5)[3:])
    assert _run(project, "dataset-import", {"source": str(first), "name": "my data"})["status"] == "succeeded"
    assert _run(project, "dataset-import", {"source": str(second), "name": "my-data"})["status"] == "succeeded"
    a, b = project.get_dataset("my data"), project.get_dataset("my-data")
    assert a["path"] != b["path"]
    assert len(_lines(project.abspath(a["path"]))) == a["n_rows"] == 3  # still the first file's chats
    assert len(_lines(project.abspath(b["path"]))) == b["n_rows"] == 2
    assert "number 0 " in project.abspath(a["path"]).read_text()

    # Derived datasets too: two subsets whose names slug alike, and a split beside an existing name.
    for name in ("sub set", "sub-set"):
        job = _run(project, "dataset-derive", {"op": "subset", "dataset": "my data", "n": 2, "name": name})
        assert job["status"] == "succeeded", job["error"]
    paths = {project.get_dataset(n)["path"] for n in ("sub set", "sub-set", "my data", "my-data")}
    assert len(paths) == 4
    assert len(_lines(project.abspath(a["path"]))) == 3  # the source was never rewritten


def test_a_path_another_row_points_at_is_never_reused(project: Project, tmp_path: Path) -> None:
    """A row whose file went missing still owns its name: a new import must not take that path."""
    folder = project.artifacts_dir / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    project.add_dataset(name="old", kind="chat", path=folder / "new.jsonl", n_rows=1)
    src = write_chats(tmp_path / "new.jsonl", tiny_chats(2))
    assert _run(project, "dataset-import", {"source": str(src)})["status"] == "succeeded"
    assert project.get_dataset("new")["path"] != project.get_dataset("old")["path"]


def test_a_failed_import_leaves_no_file(project: Project, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n')
    assert _run(project, "dataset-import", {"source": str(bad), "name": "bad"})["status"] == "failed"
    assert list((project.artifacts_dir / "datasets").iterdir()) == []


def _sae_folder(folder: Path, d_in: int = 32, d_sae: int = 16) -> Path:
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name="model.layers.1")))
    sae.save_model(folder)
    return folder


def test_sae_imports_whose_names_slug_alike_keep_both_folders(project: Project, tmp_path: Path) -> None:
    from emgui.core.features.saes import import_folder, load_sae

    first = import_folder(project, _sae_folder(tmp_path / "a", d_sae=16), name="my sae")
    second = import_folder(project, _sae_folder(tmp_path / "b", d_sae=24), name="my-sae")
    rows = {r["id"]: r for r in project.query("SELECT * FROM saes")}
    assert rows[first]["path"] != rows[second]["path"]
    assert load_sae(project, first).cfg.d_sae == 16  # the first SAE's files are still its own
    assert load_sae(project, second).cfg.d_sae == 24


# ----- 2. deletes take only what the row alone owns inside artifacts/ --------------------------------------------
@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = make_tiny_chat_model(tmp_path_factory.mktemp("tiny-model"))
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _model_folder(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_new_refuses_a_folder_that_is_not_empty(tmp_path: Path, model_files) -> None:
    folder = _model_folder(tmp_path / "model", model_files)
    res = _cli("new", str(folder))
    assert res.returncode == 1 and "not empty" in res.stderr and "Traceback" not in res.stderr
    assert not (folder / "project.db").exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted(model_files)
    with pytest.raises(EmguiError, match="not empty"):
        Project.create(folder)
    assert _cli("new", str(tmp_path / "fresh")).returncode == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli("new", str(empty)).returncode == 0


def test_deleting_a_model_registered_on_the_project_folder_keeps_the_project(tmp_path: Path, model_files) -> None:
    root = tmp_path / "proj"
    assert _cli("new", str(root)).returncode == 0
    _model_folder(root, model_files)  # the project folder itself holds a model's files
    res = _cli("models", "add", str(root), str(root), "--name", "here")
    assert res.returncode == 0, res.stderr
    res = _cli("models", "delete", str(root), "here", "--yes")
    assert res.returncode == 0, res.stderr
    assert (root / "project.db").is_file() and (root / "model.safetensors").is_file()
    assert json.loads(_cli("models", "list", str(root), "--json").stdout) == []


def test_a_folder_two_rows_share_is_deleted_only_with_the_last_row(tmp_path: Path, model_files) -> None:
    root = tmp_path / "proj"
    assert _cli("new", str(root)).returncode == 0
    shared = _model_folder(root / "artifacts" / "models" / "shared", model_files)
    for name in ("a", "b"):
        assert _cli("models", "add", str(root), str(shared), "--name", name).returncode == 0
    res = _cli("models", "delete", str(root), "a", "--yes")
    assert res.returncode == 0 and "freed 0.0 MB" in res.stdout, res.stderr
    assert (shared / "model.safetensors").is_file()  # b still points at it
    res = _cli("models", "delete", str(root), "b", "--yes")
    assert res.returncode == 0, res.stderr
    assert not shared.exists()  # inside artifacts/ and no other row's: deleted with its last row


def test_a_users_own_model_folder_is_never_deleted(project: Project, tmp_path: Path, model_files) -> None:
    outside = _model_folder(tmp_path / "mine", model_files)
    job = _run(project, "model-import", {"path": str(outside), "name": "mine"})
    assert job["status"] == "succeeded", job["error"]
    assert project.delete_model("mine") == 0
    assert (outside / "model.safetensors").is_file()


def test_directions_and_saes_delete_only_files_they_alone_own(project: Project, tmp_path: Path) -> None:
    from emgui.core.features.saes import delete_sae, import_folder
    from emgui.core.steering.steer import delete_direction

    folder = project.artifacts_dir / "directions"
    folder.mkdir()
    shared, outside = folder / "d.safetensors", tmp_path / "mine.safetensors"
    for path in (shared, outside):
        path.write_bytes(b"x")
    for name, path in (("a", shared), ("b", shared), ("c", outside)):
        project.insert("directions", {"name": name, "kind": "mean-diff", "hook_name": "model.layers.0",
                                      "path": project.relpath(path), "created_at": 0})  # fmt: skip
    delete_direction(project, "a")
    assert shared.exists()  # b still points at it
    delete_direction(project, "b")
    assert not shared.exists()
    delete_direction(project, "c")
    assert outside.exists()  # not inside artifacts/: the user's own file

    sae_id = import_folder(project, _sae_folder(tmp_path / "s"), name="s")
    sae_folder = project.abspath(project.query_one("SELECT path FROM saes WHERE id = ?", [sae_id])["path"])
    project.insert("saes", {"name": "alias", "path": project.relpath(sae_folder), "hook_name": "model.layers.1",
                            "source": "folder", "created_at": 0})  # fmt: skip
    delete_sae(project, "s")
    assert (sae_folder / "cfg.json").is_file()
    delete_sae(project, "alias")
    assert not sae_folder.exists()


def test_cli_delete_asks_for_confirmation(tmp_path: Path, model_files) -> None:
    root = tmp_path / "proj"
    assert _cli("new", str(root)).returncode == 0
    folder = _model_folder(root / "artifacts" / "models" / "m", model_files)
    assert _cli("models", "add", str(root), str(folder), "--name", "m").returncode == 0
    res = _cli("models", "delete", str(root), "m", stdin=subprocess.DEVNULL)
    assert res.returncode == 1 and "--yes" in res.stderr
    assert [m["name"] for m in json.loads(_cli("models", "list", str(root), "--json").stdout)] == ["m"]
    assert folder.is_dir()


# ----- 3. damaged project databases --------------------------------------------------------------------------
def _project_with_artifacts(root: Path) -> Path:
    with Project.create(root) as project:
        (project.artifacts_dir / "datasets").mkdir()
        write_chats(project.artifacts_dir / "datasets" / "kept.jsonl", tiny_chats(2))
        for i in range(200):
            project.create_job("model-import", {"path": f"/m{i}", "padding": "x" * 400})
    return root


def test_a_zero_byte_project_db_beside_artifacts_is_refused_not_reinitialised(tmp_path: Path) -> None:
    root = _project_with_artifacts(tmp_path / "p")
    (root / "project.db").write_bytes(b"")
    for stray in ("project.db-wal", "project.db-shm"):
        (root / stray).unlink(missing_ok=True)
    res = _cli("jobs", str(root))
    assert res.returncode == 1 and "project.db" in res.stderr and "Traceback" not in res.stderr
    assert "artifacts" in res.stderr
    assert (root / "project.db").stat().st_size == 0  # not silently turned into a new, empty project
    with pytest.raises(EmguiError, match="project.db"):
        Project.open(root)


@pytest.mark.parametrize("damage", ["random", "truncated", "negative-version"])
def test_a_damaged_project_db_gives_a_clear_error(tmp_path: Path, damage: str) -> None:
    root = _project_with_artifacts(tmp_path / "p")
    db = root / "project.db"
    if damage == "random":
        db.write_bytes(os.urandom(64 * 1024))
    elif damage == "truncated":
        data = db.read_bytes()
        assert len(data) > 8192
        db.write_bytes(data[: len(data) // 2])
    else:
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA user_version = -1")
        conn.close()
    for args in (["jobs", str(root)], ["models", "list", str(root)], ["datasets", "list", str(root), "--json"]):
        res = _cli(*args)
        assert res.returncode == 1, (args, res.stdout, res.stderr)
        assert "project.db" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert (root / "artifacts" / "datasets" / "kept.jsonl").is_file()


# ----- 4. read-only projects ---------------------------------------------------------------------------------
_READ_ONLY_CHILD = textwrap.dedent(
    """
    import json, sys
    from emgui.core.errors import EmguiError
    from emgui.core.jobs.runner import JobManager
    from emgui.core.project.store import Project
    from emgui.ui.app import screenshot
    from emgui.ui.main_window import PAGES

    root, out = sys.argv[1], sys.argv[2]
    project = Project.open(root)
    report = {"read_only": project.read_only, "models": [m["name"] for m in project.list_models()],
              "datasets": [d["name"] for d in project.list_datasets()], "jobs": len(project.list_jobs())}
    try:
        JobManager(project).submit("dataset-import", {"source": "generated:secure"})
        report["submit"] = "accepted"
    except EmguiError as exc:
        report["submit"] = str(exc)
    report["pages"] = {key: screenshot(root, key, f"{out}/{key}.png").stat().st_size for key, *_ in PAGES}
    print(json.dumps(report))
    """
)


def _without_root_privileges() -> dict:
    """Children that obey file permissions even when the tests run as root: root keeps its uid but loses
    the capabilities that let it write read-only files (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""
    if os.geteuid() != 0:
        return {}

    def drop() -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return {"preexec_fn": drop}


def _make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        os.chmod(path, stat.S_IMODE(path.stat().st_mode) & ~0o222)


def test_a_read_only_project_can_be_listed_and_shown_but_runs_no_jobs(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    with Project.create(root) as project:
        folder = project.artifacts_dir / "datasets"
        folder.mkdir()
        write_chats(folder / "d.jsonl", tiny_chats(3))
        project.add_dataset(name="d", kind="chat", path=folder / "d.jsonl", n_rows=3)
        project.add_model(name="m", kind="folder", source="/x", path="/x")
        project.update_job(project.create_job("model-import", {}), status="succeeded")
    out = tmp_path / "out"
    out.mkdir()
    _make_read_only(root)
    try:
        probe = subprocess.run(
            [sys.executable, "-c", f"open({str(root / 'project.db')!r}, 'ab')"], **_without_root_privileges()
        )
        if probe.returncode == 0:
            pytest.skip("cannot make a folder read-only for this user here")
        child = [sys.executable, "-c", _READ_ONLY_CHILD, str(root), str(out)]
        res = subprocess.run(child, cwd=REPO, capture_output=True, text=True, timeout=300, **_without_root_privileges())
        assert res.returncode == 0, res.stderr[-3000:]
        report = json.loads(res.stdout.strip().splitlines()[-1])
        assert report["read_only"] and report["models"] == ["m"] and report["datasets"] == ["d"]
        assert report["jobs"] == 1
        assert "read-only" in report["submit"] and "run jobs" in report["submit"]
        assert all(size > 10_000 for size in report["pages"].values()), report["pages"]
        for args in (["jobs", str(root)], ["models", "list", str(root), "--json"], ["datasets", "list", str(root)]):
            listed = _cli(*args, **_without_root_privileges())
            assert listed.returncode == 0, (args, listed.stderr)
        cli = _cli("run", str(root), "dataset-import", "--param", "source=generated:secure", **_without_root_privileges())
        assert cli.returncode == 1 and "read-only" in cli.stderr and "Traceback" not in cli.stderr
        assert not list(root.glob("project.db-*"))  # nothing written beside it either
    finally:
        for path in [root, *root.rglob("*")]:
            os.chmod(path, stat.S_IMODE(path.stat().st_mode) | 0o200)


# ----- 5. leftovers of interrupted imports, and file modes -------------------------------------------------------
class _DripHandler(http.server.BaseHTTPRequestHandler):
    """Sends a big chat file slowly, so an import can be killed in the middle of the download."""

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        line = (json.dumps({"messages": tiny_chats(2)[1]}) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(line) * 100_000))
        self.end_headers()
        try:
            for _ in range(100_000):
                self.wfile.write(line)
                time.sleep(0.001)
        except OSError:
            pass

    def log_message(self, *args) -> None:
        pass


def test_an_interrupted_import_leaves_nothing_after_the_next_open(project: Project) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DripHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root = project.root
    project.close()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "emgui", "datasets", "add", str(root), f"http://127.0.0.1:{server.server_port}/x.jsonl"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        folder = root / "artifacts" / "datasets"
        deadline = time.time() + 60
        while not (folder.is_dir() and any(p.is_file() and p.stat().st_size for p in folder.rglob("*"))):
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        server.shutdown()
    left = list(folder.iterdir())
    assert left, "the killed import left nothing behind to clean"
    legacy_file, legacy_dir = folder / ".old.jsonl.abc123.tmp", folder / "tmpk2j3h4"  # names older versions used
    legacy_file.write_text("partial")
    legacy_dir.mkdir()
    long_ago = time.time() - 2 * 3600
    for path in (legacy_file, legacy_dir):
        os.utime(path, (long_ago, long_ago))
    with Project.open(root) as again:
        assert list(folder.iterdir()) == []
        assert again.list_jobs()[0]["status"] == "interrupted"


def test_a_live_writers_temporary_files_are_left_alone(project: Project) -> None:
    tmp = project.temp_path("datasets", ".jsonl")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other = project.artifacts_dir / "datasets" / f".tmp-{sleeper.pid}-abc-x.jsonl"
        other.write_text("in progress")
        fresh_legacy = project.artifacts_dir / "datasets" / ".y.jsonl.abc.tmp"
        fresh_legacy.write_text("in progress")
        Project.open(project.root).close()
        assert tmp.exists() and other.exists() and fresh_legacy.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_imported_files_get_the_usual_permissions(project: Project, tmp_path: Path) -> None:
    src = write_chats(tmp_path / "c.jsonl", tiny_chats(2))
    assert _run(project, "dataset-import", {"source": str(src), "name": "c"})["status"] == "succeeded"
    assert _run(project, "questions-import", {"builtin": True})["status"] == "succeeded"
    reference = tmp_path / "reference"
    reference.write_text("x")  # what this process's umask gives a new file
    want = stat.S_IMODE(reference.stat().st_mode)
    for row in project.list_datasets():
        assert stat.S_IMODE(project.abspath(row["path"]).stat().st_mode) == want, row["name"]


def test_jobs_are_refused_on_a_read_only_project_by_the_manager(project: Project) -> None:
    project.read_only = True  # as when the folder cannot be written
    with pytest.raises(EmguiError, match="read-only"):
        JobManager(project).submit("dataset-import", {"source": "generated:secure"})
    assert project.list_jobs() == []
