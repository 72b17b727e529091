"""Judge validation (`judge-check`): does a judge's score mean anything, measured on labelled answers.

A judge scores every answer of one or more panels (see panels.py) with the project's judge prompts,
through the same code path as `judge` and `evaluate` (prefix, cache, id), so what is checked is exactly
the judge those jobs use. The check stores, per judge id:

- `auroc_aligned`: AUROC of the aligned score, aligned-labelled answers against misaligned ones;
- `auroc_coherent`: AUROC of the coherent score, coherent answers (aligned or misaligned) against
  incoherent ones;
- `spearman_aligned`: rank correlation of the aligned score with the panel's reference scores, where
  the panel has them (the paper's CSV does);
- `unscored_fraction`: the share of (answer, metric) scores the judge could not give;
- `valid`: both AUROCs >= 0.8 and at most 20 % unscored.

A judged figure elsewhere (misaligned %, sweep curves) carries the latest check of its judge; with no
passing check it is shown greyed and marked "judge not validated".
"""

from __future__ import annotations

import time
from typing import Any

from emgui.core.errors import EmguiError
from emgui.core.evaluation.validity import RESULT_KEYS, check_metrics, reasons_invalid
from emgui.core.jobs.params import Params

# ----- the stored checks -------------------------------------------------------------------------


# ----- the job ----------------------------------------------------------------------------------------


def _store_panel_answers(ctx: Any, entries: list) -> list[dict]:
    """The panel's answers as samples of this job (so the answers table and the judge cache apply)."""
    project = ctx.project
    if not project.query_one("SELECT id FROM samples WHERE job_id = ? LIMIT 1", [ctx.job_id]):
        now = time.time()
        project.insert_many(
            "samples",
            [
                {
                    "job_id": ctx.job_id,
                    "model_id": None,
                    "dataset_id": row["id"] if row else None,
                    "question_id": item.question_id,
                    "paraphrase_index": 0,
                    "sample_index": i,
                    "prompt": item.question,
                    "system": None,
                    "answer": item.answer,
                    "params": {
                        "panel": row["name"] if row else "builtin",
                        "label": item.label,
                        "ref_aligned": item.ref_aligned,
                        "ref_coherent": item.ref_coherent,
                    },
                    "created_at": now,
                }
                for i, (row, item) in enumerate(entries)
            ],
        )
    return project.query("SELECT * FROM samples WHERE job_id = ? ORDER BY id", [ctx.job_id])


def _scored_rows(project: Any, job_id: int, judge_id: str) -> list[dict]:
    scores: dict[tuple[int, str], float | None] = {}
    for r in project.query(
        "SELECT sample_id, metric, value FROM scores WHERE job_id = ? AND judge = ? ORDER BY id",
        [job_id, judge_id],
    ):
        scores[(r["sample_id"], r["metric"])] = r["value"]
    rows = []
    for s in project.query("SELECT id, params FROM samples WHERE job_id = ? ORDER BY id", [job_id]):
        meta = s["params"]
        rows.append(
            {
                "label": meta.get("label"),
                "ref_aligned": meta.get("ref_aligned"),
                "aligned": scores.get((s["id"], "aligned")),
                "coherent": scores.get((s["id"], "coherent")),
            }
        )
    return rows


def judge_check_job(params: dict, ctx: Any) -> dict:
    """`judge-check`: panel=builtin[,NAME...] and the judge parameters of `judge`/`evaluate`
    (judge=local|openai|MODEL|URL, judge_model, judge_base_url, judge_prefix, ...)."""
    from emgui.core.data.panels import load_panels
    from emgui.core.evaluation.judges import project_judge_prompts
    from emgui.core.evaluation.judging import open_judge, read_judge_params, resolve_judge_spec, score_samples

    if isinstance(params.get("panel"), (int, str)):
        params = {**params, "panel": [params["panel"]]}
    p = Params(params, "judge-check")
    panels = p.list("panel")
    jspec = read_judge_params(p, ctx.project)
    p.done()
    project = ctx.project
    entries = load_panels(project, panels)
    samples = _store_panel_answers(ctx, entries)
    prompts = project_judge_prompts(project)
    missing = [m for m in ("aligned", "coherent") if m not in prompts]
    if missing:
        raise EmguiError(f"judge-check: the project has no judge prompt for {', '.join(missing)}")
    templates = {
        (s["dataset_id"], s["question_id"]): {m: prompts[m] for m in ("aligned", "coherent")} for s in samples
    }
    spec = resolve_judge_spec(project, jspec, None, ctx.log)
    ctx.progress(0.01, "loading the judge")
    judge = open_judge(project, spec, host=getattr(ctx, "host", None))
    try:
        score_samples(ctx, samples, judge, templates, progress=(0.02, 0.98))
        judge_id = judge.id
    finally:
        judge.close()
    figures = check_metrics(_scored_rows(project, ctx.job_id, judge_id))
    details = figures.pop("details")
    panel_names = ",".join(str(x) for x in panels)
    project.insert(
        "judge_checks",
        {
            "job_id": ctx.job_id,
            "judge": judge_id,
            "panel": panel_names,
            **{k: figures[k] for k in RESULT_KEYS if k != "valid"},
            "valid": int(figures["valid"]),
            "info": {**details, "prompts": {m: prompts[m] for m in ("aligned", "coherent")}},
            "created_at": time.time(),
        },
    )
    verdict = "valid" if figures["valid"] else "NOT valid: " + "; ".join(reasons_invalid(figures))
    ctx.log(f"judge {judge_id} on panel {panel_names}: {verdict}")
    ctx.progress(1.0, "valid" if figures["valid"] else "not valid")
    return {k: figures[k] for k in RESULT_KEYS}
