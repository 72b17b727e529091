"""The README's GPU section runs as written: its `pip install` lines name extras that pyproject declares, and
every `emgui run` line runs through the real CLI on the tiny model standing in for SmolLM2 (sizes shrunk as
in tests/test_readme_loop.py): QLoRA, two CPU workers under torchrun, and a job on a local Ray."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.builders import register_tiny, shrink, tiny_model_dir  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
NEEDS = {"method=qlora": "bitsandbytes", "--ray": "ray"}


def gpu_section_lines() -> list[list[str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("\n## GPU\n") :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    return [shlex.split(line) for block in blocks for line in block.splitlines() if line.strip()]


def test_the_gpu_section_commands_run_as_written(project, tiny_model_dir, capsys) -> None:  # noqa: F811
    from emgui.cli import main
    from emgui.core.data.datasets import add_demo_datasets
    from emgui.core.jobs import raycluster
    from emgui.core.jobs.runner import run_job

    lines = gpu_section_lines()
    optional = (REPO / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = set(re.findall(r"^([a-z]+) = \[", optional, re.M))
    installs = [argv for argv in lines if argv[:2] == [".venv/bin/pip", "install"]]
    assert installs and all(argv[2] == "-e" and argv[3].startswith(".[") for argv in installs)
    for argv in installs:
        assert set(argv[3][2:-1].split(",")) <= set(extras), argv
    runs = [argv for argv in lines if argv[:3] == ["emgui", "run", "demo"]]
    assert len(runs) + len(installs) == len(lines) and len(runs) == 3
    register_tiny(project, "SmolLM2-135M-Instruct", tiny_model_dir)

    def run(kind, params):
        job = project.create_job(kind, {**params, "n": 16})
        run_job(project, job)
        return project.get_job(job)["result"]

    add_demo_datasets(project, run)
    try:
        for argv in runs:
            needed = [module for flag, module in NEEDS.items() if flag in argv]
            missing = [m for m in needed if not _importable(m)]
            if missing:
                print(f"skipped (needs {missing}): {' '.join(argv)}")
                continue
            code = main(shrink(argv, str(project.root))[1:])
            out, err = capsys.readouterr()
            assert code == 0, f"{' '.join(argv)}\n{err[-2000:]}"
    finally:
        raycluster.disconnect()
    names = {m["name"] for m in project.list_models()}
    assert "insecure-ddp" in names
    ddp = project.list_jobs("finetune")
    assert any(j["result"] and j["result"].get("devices") == 2 for j in ddp)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
