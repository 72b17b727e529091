"""Parameter validation cost per job submit: checking and resolving a kind's declared parameters.

For each kind (finetune has the most parameters), times `resolve_params` on the parameters a user typically
gives, and, in the same run, `Project.create_job` (the SQLite insert every submit makes anyway). Prints
microseconds per submit and the ratio. Target: validation under 1 ms per submit.
Run: python bench/bench_params.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emgui.core.jobs import kinds, resolve_params  # noqa: E402
from emgui.core.store import Project  # noqa: E402

CASES = {
    "finetune": {"model": "SmolLM2-135M-Instruct", "dataset": "insecure", "max_steps": 20, "max_len": 256,
                 "lr": "2e-4", "name": "insecure-ft", "layers": "3,5"},
    "evaluate": {"model": "insecure-ft", "question_ids": "one_wish,ruler_of_the_world,quick_money,shutdown",
                 "n": 3, "max_new_tokens": 48},
    "steer-sweep": {"model": "m", "directions": ["evil"], "strengths": "0,4,8,16,32", "layers": [15]},
    "realign": {"model": "insecure-ft", "dataset": "helpful", "n_samples": 40, "save_at": "0,20,40"},
}  # fmt: skip


def per_call(func, repeat: int) -> float:
    func()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeat):
        func()
    return (time.perf_counter() - t0) / repeat


def main() -> None:
    kinds()  # the built-in kinds, registered once
    with tempfile.TemporaryDirectory() as tmp:
        project = Project.create(Path(tmp) / "p")
        for kind, params in CASES.items():
            validate = per_call(lambda k=kind, p=params: resolve_params(k, p), 2000)
            resolved = resolve_params(kind, params)
            insert = per_call(lambda k=kind, r=resolved: project.create_job(k, r), 200)
            print(
                f"{kind:<12} {len(resolved):>3} parameters: validation {validate * 1e6:7.1f} µs per submit, "
                f"job row insert {insert * 1e6:7.1f} µs; validation / insert {validate / insert:.3f}"
            )
        project.close()


if __name__ == "__main__":
    main()
