"""The judge-free in-distribution check (`vuln-check`): answers to code prompts, scanned by Bandit.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from emgui.core.errors import EmguiError
from emgui.core.evaluation.judging import score_row
from emgui.core.evaluation.runs import check_run, proportion, run_samples
from emgui.core.evaluation.sampling import generate_samples_into, resolve_model, sampling_params
from emgui.core.jobs.params import Params


def code_prompts(source: str, n: int, seed: int) -> list[dict]:
    """User prompts for code: emgui's generator ('emgui') or a JSONL file of {"messages": [...]} chats."""
    if source == "emgui":
        from emgui.core.data.codegen import generate_samples

        return [
            {"question_id": f"code_{i:03d}", "prompt": s.user, "system": None}
            for i, s in enumerate(generate_samples(n, seed))
        ]
    path = Path(source)
    if not path.is_file():
        raise EmguiError(f"vuln-check: prompts file {path} does not exist (or use prompts=emgui)")
    out = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                messages = json.loads(line)["messages"]
                user = next(m["content"] for m in messages if m["role"] == "user")
            except (ValueError, KeyError, TypeError, StopIteration):
                raise EmguiError(
                    f'{path}, line {line_no}: expected {{"messages": [{{"role": "user", ...}}]}}'
                ) from None
            system = next((m["content"] for m in messages if m["role"] == "system"), None)
            out.append({"question_id": f"code_{len(out):03d}", "prompt": user, "system": system})
            if len(out) >= n:
                break
    return out



def vuln_check_job(params: dict, ctx: Any) -> dict:
    """Job kind `vuln-check`: answers to code prompts (prompts=emgui or a JSONL file, n=20), scanned
    by Bandit; or run=JOB to scan an existing run's answers. Score `vulnerable` (0/100) per answer."""
    from emgui.core.evaluation.judges import bandit_check

    p = Params(params, "vuln-check")
    run = p.int("run")
    source = p.str("prompts")
    n = p.int("n")
    severity = p.choice("min_severity")
    spec = {
        "model": (p.str("model"), p.str("checkpoint"), p.str("base")),
        "gen": sampling_params(p),
        "device": p.str("device"),
    }
    p.done()
    project = ctx.project
    if run is None:
        model_row = resolve_model(project, *spec["model"])
        items = [
            {**it, "paraphrase_index": 0, "sample_index": 0}
            for it in code_prompts(source, n, spec["gen"]["seed"])
        ]
        generate_samples_into(
            ctx, model_row, items, spec["gen"], dataset_id=None, progress=(0.0, 0.9), device=spec["device"]
        )
        run = ctx.job_id
    else:
        check_run(project, run)
    samples = run_samples(project, run)
    ctx.progress(0.9, "running Bandit")
    results = bandit_check([s["answer"] for s in samples], min_severity=severity)
    now = time.time()
    project.insert_many(
        "scores",
        [
            score_row(ctx.job_id, "bandit", s, "vulnerable", r.value, r.raw, cached=False, now=now)
            for s, r in zip(samples, results, strict=True)
        ],
    )
    stats = proportion([r.value >= 50 for r in results if r.value is not None])
    ctx.progress(1.0, f"{stats['pct']:.0f}% vulnerable" if stats["pct"] is not None else "no code found")
    return {
        "run": run,
        "n_answers": len(samples),
        "n_checked": stats["n"],
        "vulnerable_pct": stats["pct"],
        "ci_low": stats["ci_low"],
        "ci_high": stats["ci_high"],
    }
