"""The run whose file reads `packaging/check_data_files.py` records: the whole loop on the tiny test model
(tests/builders.py) at the smallest sizes, then a screenshot of every page. About a minute on two cores.

    python packaging/opens/workload.py WORKDIR

It runs the jobs in this process, as the app does (a worker thread per job), so every library the loop
imports reads its data files here. A failing job stops the run with its error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Each job's parameters; "{name}" fields are filled from earlier results.
STEPS: list[tuple[str, dict]] = [
    ("dataset-import", {"source": "generated:insecure", "n": 16, "name": "insecure"}),
    ("dataset-import", {"source": "generated:secure", "n": 16, "name": "secure"}),
    ("questions-import", {"builtin": True}),
    ("finetune", {"model": "tiny", "dataset": "insecure", "max_steps": 1, "batch_size": 1, "max_len": 256,
                  "name": "tiny-ft"}),
    ("sample", {"model": "tiny-ft", "question_ids": ["one_wish"], "n": 1, "max_new_tokens": 4}),
    ("judge", {"run": "{sample}"}),
    ("vuln-check", {"model": "tiny", "n": 1, "max_new_tokens": 4}),
    ("sae-train", {"model": "tiny", "hook": "model.layers.0", "d_sae": 64, "k": 4, "batch_size": 64,
                   "tokens": 1024, "context_size": 32, "datasets": ["insecure"], "ce_sequences": 2}),
    ("diff", {"sae": "{sae}", "ft": "tiny-ft", "dataset": "insecure", "max_examples": 4, "max_length": 256,
              "dashboards": 2}),
    ("persona-vector", {"model": "tiny", "n_questions": 1, "max_new_tokens": 4, "name": "evil"}),
    ("steer-sweep", {"model": "tiny", "directions": ["evil"], "strengths": [0, 1], "n": 1,
                     "question_ids": ["one_wish"], "max_new_tokens": 4, "controls": 1}),
    ("realign", {"model": "tiny-ft", "dataset": "secure", "n_samples": 2, "save_at": [0, 2], "batch_size": 1,
                 "max_len": 256}),
]  # fmt: skip


def _fill(params: dict, found: dict) -> dict:
    return {k: (found[v[1:-1]] if isinstance(v, str) and v[1:-1] in found else v) for k, v in params.items()}


def main(workdir: Path) -> None:
    os.environ.update(
        EMGUI_HOME=str(workdir / "home"),
        EMGUI_CACHE=str(workdir / "cache"),
        HF_HOME=str(workdir / "hf"),
        HF_HUB_OFFLINE="1",
        WANDB_MODE="disabled",
        QT_QPA_PLATFORM="offscreen",
    )
    sys.path.insert(0, str(REPO))  # tests.builders: the tiny model
    from emgui.cli import run_inline
    from emgui.core.project.store import Project
    from tests.builders import make_tiny_chat_model

    project = Project.create(workdir / "project")
    run_inline(project, "model-import", {"path": str(make_tiny_chat_model(workdir / "tiny")), "name": "tiny"})
    found: dict = {}
    for kind, params in STEPS:
        job = run_inline(project, kind, _fill(params, found))
        if kind == "sample":
            found["sample"] = job["id"]
        if kind == "sae-train":
            found["sae"] = project.query_one("SELECT id FROM saes ORDER BY id DESC")["id"]
        print(f"recorded: {kind}", flush=True)

    # The tiny model writes no code, so give Bandit (a child process) some to scan.
    from emgui.core.evaluation.judges import bandit_check

    (flagged,) = bandit_check(["import subprocess\nsubprocess.call(user_input, shell=True)\n"])
    if flagged.value != 100:
        raise SystemExit(f"Bandit did not flag shell=True: {flagged}")
    print("recorded: bandit", flush=True)

    from emgui.ui.app import screenshot
    from emgui.ui.main_window import PAGES

    for key, *_ in PAGES:
        screenshot(str(project.root), key, workdir / "shots" / f"{key}.png")
    print(f"recorded: screenshots of {len(PAGES)} pages", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
