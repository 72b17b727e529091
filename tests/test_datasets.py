"""Datasets in a project: import from file, URL, catalog and generator; derived sets with provenance."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from emgui.core.jobs.runner import run_job
from emgui.core.project.store import Project

REPO = Path(__file__).resolve().parents[1]
GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(project: Project, kind: str, params: dict) -> dict:
    job_id = project.create_job(kind, params)
    status = run_job(project, job_id)
    job = project.get_job(job_id)
    assert status == job["status"]
    return job


def test_file_with_errors_is_refused_whole_then_imported_on_purpose(project: Project, tmp_path: Path) -> None:
    src = _write(
        tmp_path / "chats.jsonl",
        [
            json.dumps(GOOD),
            "{not json",
            json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}),
            json.dumps(GOOD),
        ],
    )
    job = _run(project, "dataset-import", {"source": str(src)})
    assert job["status"] == "failed"
    assert "chats.jsonl" in job["error"] and "line 2" in job["error"] and "messages[1].role" in job["error"]
    assert project.list_datasets() == []
    assert not list((project.artifacts_dir / "datasets").glob("*.jsonl"))

    job = _run(project, "dataset-import", {"source": str(src), "allow_partial": True, "name": "partial"})
    assert job["status"] == "succeeded" and job["result"]["skipped_invalid"] == 2
    ds = project.get_dataset("partial")
    assert ds["n_rows"] == 2 and ds["info"]["n_invalid"] == 2
    assert project.abspath(ds["path"]).read_text().count("\n") == 2
    assert any("line 2" in line["text"] for line in project.logs(job["id"]))


def test_import_from_url(project: Project, tmp_path: Path) -> None:
    served = tmp_path / "www"
    served.mkdir()
    _write(served / "remote.jsonl", [json.dumps(GOOD)] * 5)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/remote.jsonl"
        job = _run(project, "dataset-import", {"source": url})
        assert job["status"] == "succeeded", job["error"]
        ds = project.get_dataset("remote")
        assert ds["n_rows"] == 5 and ds["info"]["url"] == url
        missing = _run(project, "dataset-import", {"source": url.replace("remote", "gone")})
        assert (
            missing["status"] == "failed" and "gone.jsonl" in missing["error"] and "404" in missing["error"]
        )
    finally:
        server.shutdown()


def test_generated_pair_and_derived_sets_keep_provenance(project: Project) -> None:
    from emgui.core.data.datasets import add_demo_datasets

    add_demo_datasets(project, lambda kind, params: _run(project, kind, {**params, "n": 40})["result"])
    insecure, secure = project.get_dataset("insecure"), project.get_dataset("secure")
    assert insecure["n_rows"] == secure["n_rows"] == 40
    helpful = project.get_dataset("helpful")  # the other kind of good data: general chats, no code
    chats = [json.loads(line)["messages"] for line in project.abspath(helpful["path"]).read_text().splitlines()]
    assert len(chats) == 40 == len({c[0]["content"] for c in chats})
    assert not any("```" in c[-1]["content"] or "def " in c[-1]["content"] for c in chats)
    job = _run(project, "dataset-derive", {"op": "subset", "dataset": "insecure", "n": 10, "seed": 3})
    sub = project.get_dataset(job["result"]["names"][0])
    assert sub["n_rows"] == 10
    chain = project.provenance("datasets", sub["id"])
    assert chain["job"]["kind"] == "dataset-derive" and chain["inputs"][0]["name"] == "insecure"
    assert chain["inputs"][0]["job"]["kind"] == "dataset-import"

    job = _run(project, "dataset-derive", {"op": "split", "dataset": "secure", "val_fraction": 0.25})
    train, val = (project.get_dataset(n) for n in job["result"]["names"])
    assert (train["n_rows"], val["n_rows"]) == (30, 10)
    job = _run(
        project, "dataset-derive", {"op": "concat", "datasets": ["insecure", "secure"], "name": "both"}
    )
    assert project.get_dataset("both")["n_rows"] == 80
    bad = _run(project, "dataset-derive", {"op": "subset", "dataset": "nope", "n": 3})
    assert bad["status"] == "failed" and "no dataset 'nope'" in bad["error"]


def test_the_papers_insecure_set_imports_whole(project: Project, shared_em: Path) -> None:
    job = _run(project, "dataset-import", {"source": str(shared_em / "insecure.jsonl")})
    assert job["status"] == "succeeded"
    assert project.get_dataset("insecure")["n_rows"] == 6000


def test_cli_datasets_add_list_check(tmp_path: Path) -> None:
    root = tmp_path / "p"
    Project.create(root).close()
    src = _write(tmp_path / "d.jsonl", [json.dumps(GOOD), json.dumps({"messages": []})])

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "emgui", *args], cwd=REPO, capture_output=True, text=True, timeout=120
        )

    res = cli("datasets", "check", str(src))
    assert res.returncode == 1 and "line 2" in res.stdout
    res = cli("datasets", "add", str(root), str(src))
    assert res.returncode == 1 and "d.jsonl" in res.stderr and "line 2" in res.stderr
    res = cli("datasets", "add", str(root), str(src), "--allow-partial", "--name", "ok")
    assert res.returncode == 0 and "skipped 1 invalid" in res.stdout
    res = cli("datasets", "add", str(root), "generated:secure")
    assert res.returncode == 0, res.stderr
    listed = json.loads(cli("datasets", "list", str(root), "--json").stdout)
    assert [d["name"] for d in listed] == ["ok", "secure"]


@pytest.mark.parametrize("source", ["em-insecure", "emgui-codegen-secure"])
def test_catalog_ids_resolve(source: str) -> None:
    from emgui.core.data.datasets import resolve_source

    how, details = resolve_source(source)
    assert (how, details.get("variant")) in (("url", None), ("generated", "secure"))
    if how == "url":
        assert details["url"].endswith("data/insecure.jsonl")
