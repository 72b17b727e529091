"""A steering sweep of 8 points, run locally and fanned out over 2 Ray workers, in one run: the speed-up.

The model is a random-init Llama (4 layers, width 256, the tiny test tokenizer) so that a point costs about
a second of generation; the judge is a fake OpenAI-compatible server on 127.0.0.1 (tests/test_sweep.py's),
so the numbers time emgui's sampling and fan-out, not a judge. 8 points: the baseline and 7 strengths of one
direction, n answers per question. The local run uses this process's torch threads (all cores); each Ray
worker one thread. Both runs must give the same answers (checked).

    python bench/bench_ray_sweep.py [--n 4] [--tokens 24]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def setup(root: Path) -> tuple:
    import torch
    from safetensors.torch import save_file

    from emgui.core.data.questions import import_questions
    from emgui.core.jobs.runner import run_job
    from emgui.core.project.store import Project
    from tests.builders import QUESTIONS_YAML, make_tiny_chat_model, register_tiny

    project = Project.create(root / "proj")
    folder = make_tiny_chat_model(root / "model", hidden=256)
    register_tiny(project, "bench", folder)
    save_file({"d": torch.randn(256, generator=torch.Generator().manual_seed(0))}, str(root / "d.safetensors"))
    job = project.create_job("direction-import", {"path": str(root / "d.safetensors"), "model": "bench",
                                                  "layer": 1, "name": "dir"})  # fmt: skip
    assert run_job(project, job) == "succeeded"
    (root / "q.yaml").write_text(QUESTIONS_YAML.format(system=json.dumps("Be brief.")), encoding="utf-8")
    import_questions(project, root / "q.yaml", "things")
    return project


def sweep(project, judge_url: str, n: int, tokens: int) -> tuple[float, int]:
    from emgui.core.jobs.runner import run_job

    params = {
        "model": "bench", "directions": ["dir"], "strengths": [0, 1, 2, 4, 8, 16, 32, 64], "layers": [1],
        "questions": "things", "n": n, "max_new_tokens": tokens, "controls": 0, "seed": 1, "batch_size": 8,
        "judge": "openai", "judge_base_url": judge_url, "judge_model": "fake",
    }  # fmt: skip
    job_id = project.create_job("steer-sweep", params)
    t0 = time.perf_counter()
    status = run_job(project, job_id)
    seconds = time.perf_counter() - t0
    assert status == "succeeded", project.get_job(job_id)["error"]
    assert project.get_job(job_id)["result"]["n_conditions"] == 8
    return seconds, job_id


def generation_seconds(project, job_id: int) -> float:
    """The sampling phase alone (the judge's cache makes later runs' judging cheaper): from the job's log."""
    import re

    texts = [line["text"] for line in project.logs(job_id)]
    on_ray = [float(m.group(1)) for t in texts if (m := re.search(r"points on Ray in ([0-9.]+) s", t))]
    if on_ray:
        return on_ray[-1]
    return sum(float(m.group(1)) for t in texts if (m := re.search(r"answers in ([0-9.]+) s", t)))


def answers(project, job_id: int) -> dict:
    rows = project.query("SELECT params, question_id, paraphrase_index, sample_index, answer FROM samples "
                         "WHERE job_id = ?", [job_id])  # fmt: skip
    return {(r["params"]["condition"], r["question_id"], r["paraphrase_index"], r["sample_index"]): r["answer"]
            for r in rows}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4, help="answers per question per point")
    parser.add_argument("--tokens", type=int, default=24, help="new tokens per answer")
    parser.add_argument("--rounds", type=int, default=3, help="local and Ray runs, alternated")
    args = parser.parse_args()
    import torch

    from emgui.core.jobs import raycluster
    from tests.builders import TraitJudge as _Judge

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    with tempfile.TemporaryDirectory(prefix="emgui-bench-ray-") as tmp:
        project = setup(Path(tmp))
        runs: dict[str, list[float]] = {"local": [], "local-1t": [], "ray": []}
        threads = torch.get_num_threads()
        ids: dict[str, int] = {}
        t0 = time.perf_counter()
        raycluster.connect("local", num_cpus=2)
        start_s = time.perf_counter() - t0
        for round_ in range(args.rounds):  # alternated, so that load from other work hits both alike
            for mode in ("local", "local-1t", "ray"):
                # Ray stays up (its idle workers keep their model); a local run just does not use it
                raycluster._ADDRESS = "local" if mode == "ray" else None
                torch.set_num_threads(1 if mode == "local-1t" else threads)
                _, job_id = sweep(project, url, args.n, args.tokens)
                runs[mode].append(generation_seconds(project, job_id))
                ids.setdefault(mode, job_id)
                print(f"  round {round_ + 1} {mode:8}: sampling {runs[mode][-1]:.1f} s", flush=True)
        same = answers(project, ids["ray"]) == answers(project, ids["local"])
        raycluster._ADDRESS = "local"
        raycluster.disconnect()
        project.close()
    server.shutdown()
    ray_ = runs["ray"]
    print(f"steering sweep, 8 points x {args.n * 2} answers x {args.tokens} tokens (sampling phase; the judge is a stub)")
    for mode, label in (("local", f"local, {threads} torch threads"), ("local-1t", "local, 1 torch thread"),
                        ("ray", "Ray, 2 workers of 1 thread")):  # fmt: skip
        print(f"  {label:30} {', '.join(f'{x:5.1f}' for x in runs[mode])} s")
    print(f"  (Ray's start, {start_s:.1f} s, not counted; its first round includes each worker loading the model)")
    for mode in ("local", "local-1t"):
        print(f"  speed-up over {mode}, median round against median round of warm Ray: "
              f"{statistics.median(runs[mode]) / statistics.median(ray_[1:] or ray_):.2f}x")
    print(f"  same answers as local: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
