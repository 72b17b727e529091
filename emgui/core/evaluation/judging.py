"""Judging answers: which judge (the project's, a local model, an OpenAI-compatible endpoint) with which
prompts and method, scoring a run's answers through the judge cache (a re-score never asks the judge twice
and never regenerates answers), and the `judge` job.
"""

from __future__ import annotations

import json
import time
from typing import Any

from emgui.core.errors import EmguiError
from emgui.core.evaluation.runs import check_run, read_thresholds, run_samples, short_summary, summarize
from emgui.core.jobs.params import Params
from emgui.core.models.host import host_of


def judge_choice(value: Any, saved: dict) -> dict:
    """What `judge=` names: local | openai | a model of the project (a local judge) | an endpoint URL."""
    if value in (None, ""):
        return {"type": saved.get("type", "local")}
    value = str(value)
    if value in ("local", "openai"):
        return {"type": value}
    if value.startswith(("http://", "https://")):
        return {"type": "openai", "base_url": value}
    return {"type": "local", "model": value}


def read_judge_params(p: Params, project: Any) -> dict:
    """The judge from parameters (`judge=local|openai|MODEL|URL`, judge_model, judge_base_url, ...),
    falling back to the project's saved judge (setting 'judge'). Every job that judges reads it here."""
    from emgui.core.evaluation.judges import JUDGE_METHODS

    saved = project.get_setting("judge", None) or {}
    choice = judge_choice(p.str("judge", None), saved)
    spec: dict[str, Any] = {
        "type": choice["type"],
        "model": p.str("judge_model", None) or choice.get("model"),
        "base_url": p.str("judge_base_url", None) or choice.get("base_url"),
        "timeout": p.float("judge_timeout", 60.0, min=0.1),
        "retries": p.int("judge_retries", 4, min=0),
        "workers": p.int("judge_workers", 4, min=1),
        "batch_size": p.int("judge_batch_size", 4, min=1),
        "prefix": p.str("judge_prefix", None),  # local judges; None: the project's setting
        "method": p.choice("judge_method", JUDGE_METHODS, None) or saved.get("method") or "auto",  # API judges
        "chat_template": p.str("judge_chat_template", None) or saved.get("chat_template"),  # file or text
    }
    if saved.get("type", "local") == spec["type"]:
        for key in ("model", "base_url"):
            spec[key] = spec[key] or saved.get(key)
    return spec


def read_judge(p: Params, project: Any) -> dict:
    return {
        "spec": read_judge_params(p, project),
        "metrics": p.list("metrics"),
        "prompts": p.choice("prompts"),
    }


def _default_judge_model(project: Any, model_row: dict | None) -> dict:
    """Without a configured judge: the root base model of the evaluated one (not the fine-tune itself),
    or with nothing evaluated, the project's first model that is not an adapter."""
    if model_row is None:
        rows = [m for m in project.list_models() if m["kind"] != "adapter" and not m.get("base_model_id")]
        if not rows:
            raise EmguiError("no judge: name one with judge=MODEL or judge=URL (an OpenAI-compatible endpoint)")
        return rows[0]
    row = model_row
    while row.get("base_model_id"):
        row = project.get_model(row["base_model_id"])
    return row


def resolve_judge_spec(project: Any, spec: dict, subject: dict | None, log: Any = None) -> dict:
    """The spec with a local judge's model filled in when none was given."""
    spec = dict(spec)
    if spec["type"] == "local" and not spec.get("model"):
        row = _default_judge_model(project, subject)
        spec["model"] = row["id"]
        if log is not None:
            log(
                f"judge: local model '{row['name']}' (no judge configured; validate it with judge-check, "
                "or use a larger model or an OpenAI-compatible endpoint)"
            )
    return spec


def open_judge(project: Any, spec: dict, *, loaded: dict | None = None, host: Any = None) -> Any:
    """The judge of a resolved spec. `loaded` = {"model_id", "model", "tokenizer"} of a model already in
    memory, reused when it is the local judge's model. The only place jobs build judges (the prefix, the
    id and therefore the cache and the validity check come with it)."""
    from emgui.core.evaluation.judges import make_judge

    reuse = (
        loaded is not None
        and spec["type"] == "local"
        and project.get_model(spec["model"])["id"] == loaded["model_id"]
    )
    return make_judge(
        project, spec, loaded=(loaded["model"], loaded["tokenizer"]) if reuse else None, host=host
    )


def judge_validity_fields(project: Any, judge_id: str | None) -> dict:
    """`judge_valid` (True, False, or None when never checked), `judge_check` (the check's job id) and a
    warning when the judge has no passing check: what every judged result carries."""
    from emgui.core.evaluation.validity import judge_validity, validity_warning

    check = judge_validity(project, judge_id) if judge_id else None
    fields: dict[str, Any] = {
        "judge_valid": None if check is None else bool(check["valid"]),
        "judge_check": None if check is None else check["job_id"],
    }
    warning = validity_warning(judge_id, check)
    fields["warnings"] = [warning] if warning else []
    return fields


def _templates_for(project: Any, samples: list[dict], metrics: list[str] | None, source: str) -> dict:
    """(dataset_id, question_id) -> {metric: template}: the question's own prompts, else the project's."""
    from emgui.core.data.questions import dataset_questions
    from emgui.core.evaluation.judges import project_judge_prompts

    fallback = project_judge_prompts(project)
    out: dict[tuple, dict[str, str]] = {}
    by_dataset: dict[Any, dict] = {}
    for s in samples:
        key = (s["dataset_id"], s["question_id"])
        if key in out:
            continue
        if s["dataset_id"] not in by_dataset:
            row = (
                project.query_one("SELECT * FROM datasets WHERE id = ?", [s["dataset_id"]])
                if s["dataset_id"]
                else None
            )
            qs = dataset_questions(project, row) if row and row["kind"] == "questions" else []
            by_dataset[s["dataset_id"]] = {q.id: q for q in qs}
        q = by_dataset[s["dataset_id"]].get(s["question_id"])
        own = dict(q.judge_prompts) if q is not None and source == "questions" else {}
        wanted = metrics or sorted(own) or ["aligned", "coherent"]
        templates = {}
        for m in wanted:
            t = own.get(m) or fallback.get(m)
            if t is None:
                raise EmguiError(
                    f"no judge prompt for metric '{m}' (edit the project's judge prompts to add one)"
                )
            templates[m] = t
        out[key] = templates
    return out


def score_samples(
    ctx: Any,
    samples: list[dict],
    judge: Any,
    templates: dict,
    *,
    progress: tuple[float, float] = (0.0, 1.0),
) -> dict:
    """Score every (sample, metric) through the judge cache; write `scores` rows for this job."""
    from emgui.core.evaluation.judges import fill, judge_key

    project = ctx.project
    tasks = []  # (sample, metric, key, filled prompt)
    for s in samples:
        for metric, template in templates[(s["dataset_id"], s["question_id"])].items():
            key = judge_key(judge.id, template, s["prompt"], s["answer"])
            tasks.append((s, metric, key, template))
    cached = _cache_lookup(project, [t[2] for t in tasks])
    lo, hi = progress
    now = time.time()
    rows = [
        score_row(ctx.job_id, judge.id, s, metric, *cached[key], cached=True, now=now)
        for s, metric, key, _ in tasks
        if key in cached
    ]
    project.insert_many("scores", rows)
    pending: dict[str, list] = {}
    for s, metric, key, template in tasks:
        if key not in cached:
            pending.setdefault(key, []).append((s, metric, template))
    keys = list(pending)
    ctx.log(
        f"judge {judge.id}: {len(tasks)} scores, {len(tasks) - sum(map(len, pending.values()))} from the cache, "
        f"{len(keys)} to ask"
    )
    unscored = sum(1 for r in rows if r["value"] is None)
    step = max(1, judge.batch_size)
    for start in range(0, len(keys), step):
        ctx.check_cancelled()
        chunk = keys[start : start + step]
        prompts = [
            fill(pending[k][0][2], pending[k][0][0]["prompt"], pending[k][0][0]["answer"]) for k in chunk
        ]
        results = judge.score(prompts, should_cancel=lambda: ctx.cancelled)
        now = time.time()
        with project.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO judge_cache (key, value, raw, created_at) VALUES (?, ?, ?, ?)",
                [(k, r.value, json.dumps(r.raw), now) for k, r in zip(chunk, results, strict=True)],
            )
        new_rows = [
            score_row(ctx.job_id, judge.id, s, metric, r.value, r.raw, cached=False, now=now)
            for k, r in zip(chunk, results, strict=True)
            for s, metric, _ in pending[k]
        ]
        project.insert_many("scores", new_rows)
        unscored += sum(1 for r in new_rows if r["value"] is None)
        done = min(len(keys), start + step)
        ctx.progress(lo + (hi - lo) * done / max(1, len(keys)), f"judged {done}/{len(keys)}")
    return {
        "judge": judge.id,
        "n_scores": len(tasks),
        "n_cached": len(rows),
        "n_asked": len(keys),
        "n_unscored": unscored,
    }


def score_row(
    job_id: int, judge_id: str, s: dict, metric: str, value: Any, raw: dict, *, cached: bool, now: float
) -> dict:
    return {
        "sample_id": s["id"],
        "job_id": job_id,
        "judge": judge_id,
        "metric": metric,
        "value": value,
        "raw": {**raw, "cached": cached},
        "created_at": now,
    }


def _cache_lookup(project: Any, keys: list[str]) -> dict[str, tuple[float | None, dict]]:
    found: dict[str, tuple[float | None, dict]] = {}
    unique = list(dict.fromkeys(keys))
    for start in range(0, len(unique), 500):  # SQLite's limit on bound parameters
        chunk = unique[start : start + 500]
        marks = ",".join("?" for _ in chunk)
        for row in project.query(f"SELECT key, value, raw FROM judge_cache WHERE key IN ({marks})", chunk):
            found[row["key"]] = (row["value"], row["raw"])
    return found


def judge_runs(ctx: Any, runs: list[int], jspec: dict, progress: tuple[float, float]) -> dict:
    project = ctx.project
    samples = [s for run in runs for s in run_samples(project, run)]
    if not samples:
        raise EmguiError(f"run(s) {', '.join(map(str, runs))} have no answers to judge")
    subject = project.get_model(samples[0]["model_id"]) if samples[0]["model_id"] else None
    spec = resolve_judge_spec(project, jspec["spec"], subject, ctx.log)
    templates = _templates_for(project, samples, jspec["metrics"], jspec["prompts"])
    ctx.progress(progress[0], "loading the judge")
    judge = open_judge(project, spec, host=host_of(ctx))
    try:
        return score_samples(ctx, samples, judge, templates, progress=progress)
    finally:
        judge.close()


def judge_job(params: dict, ctx: Any) -> dict:
    """Job kind `judge`: run=JOB[,JOB...] [judge=local judge_model=REF | judge=openai judge_base_url=URL
    judge_model=NAME] [metrics=aligned,coherent] [prompts=questions|project]."""
    if isinstance(params.get("run"), int):
        params = {**params, "run": [params["run"]]}  # one run, as the CLI's run=5 gives it
    p = Params(params, "judge")
    runs = [int(r) for r in p.list("run")]
    jspec = read_judge(p, ctx.project)
    thresholds = read_thresholds(p)
    p.done()
    for run in runs:
        check_run(ctx.project, run)
    stats = judge_runs(ctx, runs, jspec, (0.0, 1.0))
    ctx.progress(1.0, "judged")
    summaries = [short_summary(summarize(ctx.project, run, thresholds, judge=stats["judge"])) for run in runs]
    return {**stats, "summaries": summaries, **judge_validity_fields(ctx.project, stats["judge"])}


