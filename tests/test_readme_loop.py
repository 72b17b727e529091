"""The README's terminal loop runs as written: every `emgui run` line of it, through the real CLI, on a
project whose SmolLM2-135M-Instruct is the tiny test model, with only the sizes shrunk (steps, tokens,
examples) so that it takes seconds. Model names, job kinds, parameter names and their forms are the
README's own, so a renamed parameter or a refused form fails here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.builders import register_tiny, shrink, tiny_model_dir  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def readme_loop() -> list[list[str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("The whole loop on the demo project, from a terminal")
    block = re.search(r"```sh\n(.*?)```", text[start:], re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def test_every_line_of_the_readme_loop_runs(project, tiny_model_dir, capsys) -> None:  # noqa: F811
    from emgui.cli import main
    from emgui.core.data.datasets import add_demo_datasets
    from emgui.core.jobs.runner import run_job

    lines = readme_loop()
    assert lines[0] == ["emgui", "new", "demo", "--demo"]  # stands for: the model and the generated datasets
    register_tiny(project, "SmolLM2-135M-Instruct", tiny_model_dir)

    def run(kind, params):
        job = project.create_job(kind, {**params, "n": 16})
        run_job(project, job)
        return project.get_job(job)["result"]

    add_demo_datasets(project, run)
    kinds = []
    for argv in lines[1:]:
        assert argv[:3] == ["emgui", "run", "demo"], argv
        kinds.append(argv[3])
        code = main(shrink(argv, str(project.root))[1:])
        out, err = capsys.readouterr()
        assert code == 0, f"{' '.join(argv)}\n{err[-2000:]}"
    assert {"finetune", "judge-check", "likelihood-probe", "sae-train", "diff", "realign", "evaluate"} <= set(kinds)
    diff = project.list_jobs("diff")[-1]["result"]
    assert diff["controlled"] is True and diff["control_model_id"] == project.get_model("secure-ft")["id"]
    assert project.list_jobs("evaluate")[-1]["result"]["measures"]["likelihood"]["n_pairs"] == 30
