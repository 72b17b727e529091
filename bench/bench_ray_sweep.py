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

    from emgui.core.jobs import run_job
    from emgui.core.questions import import_questions
    from emgui.core.store import Project
    from tests.test_sweep import QUESTIONS_YAML
    from tests.tiny import make_tiny_chat_model, register_tiny

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
    from emgui.core.jobs import run_job

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
    args = parser.parse_args()
    import torch

    from emgui.core import raycluster
    from tests.test_sweep import _Judge

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    with tempfile.TemporaryDirectory(prefix="emgui-bench-ray-") as tmp:
        project = setup(Path(tmp))
        local_s, local_id = sweep(project, url, args.n, args.tokens)
        t0 = time.perf_counter()
        raycluster.connect("local", num_cpus=2)
        start_s = time.perf_counter() - t0
        ray_s, ray_id = sweep(project, url, args.n, args.tokens)
        same = answers(project, ray_id) == answers(project, local_id)
        ray_again_s, again_id = sweep(project, url, args.n, args.tokens)  # workers warm (their model is cached)
        gen = [generation_seconds(project, j) for j in (local_id, ray_id, again_id)]
        raycluster.disconnect()
        project.close()
    server.shutdown()
    print(f"steering sweep, 8 points x {args.n * 3} answers x {args.tokens} tokens (torch {torch.get_num_threads()} "
          "threads locally; 2 Ray workers of 1 thread)")  # fmt: skip
    print("                     whole job   sampling phase (the judge's cache favours later runs' totals)")
    print(f"  local:              {local_s:6.1f} s    {gen[0]:6.1f} s")
    print(f"  Ray, 2 workers:     {ray_s:6.1f} s    {gen[1]:6.1f} s   speed-up {gen[0] / gen[1]:.2f}x "
          f"(workers load the model; Ray's start, {start_s:.1f} s, not counted)")
    print(f"  Ray, warm workers:  {ray_again_s:6.1f} s    {gen[2]:6.1f} s   speed-up {gen[0] / gen[2]:.2f}x")
    print(f"  same answers as local: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
