"""Judge-free measures of a model, each with a bootstrap 95 % interval, stored in the `measures` table.

- Likelihood margin (`likelihood-probe`): for pairs of reference answers to the same question, one
  misaligned and one aligned (from a panel), the mean per-token log-probability of the misaligned answer
  minus that of the aligned one under the model. Positive: the model finds the misaligned answer more
  likely. Run on a base model and its fine-tune, it says whether the fine-tune made misaligned answers
  more likely, with no judge involved.
- Persona projection (`persona-projection`): the mean projection of answer-token activations, at a
  direction's layer, on that (unit) direction, over a run's answers.
- Latent activation (used by `realign`'s tracking): the mean activation of chosen SAE latents over a
  fixed set of answers.

Measures need no judge and mean something at any model size: they are shown beside judged figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from emgui.core.errors import Cancelled, EmguiError
from emgui.core.params import Params

LIKELIHOOD = "likelihood-margin"
PROJECTION = "persona-projection"
LATENTS = "diff-latents"


# ----- storing and reading measures ---------------------------------------------------------------


def add_measure(
    project: Any, *, job_id: int | None, model_id: int | None, measure: str, stats: dict, info: dict
) -> int:
    """One measured value with its interval (`stats`: value or mean, ci_low, ci_high, n)."""
    value = stats.get("value", stats.get("mean"))
    return project.insert(
        "measures",
        {
            "job_id": job_id,
            "model_id": model_id,
            "measure": measure,
            "value": value,
            "ci_low": stats.get("ci_low"),
            "ci_high": stats.get("ci_high"),
            "n": stats.get("n"),
            "info": info,
            "created_at": time.time(),
        },
    )


def latest_measures(project: Any, model_id: int) -> dict[str, dict]:
    """The newest value of each measure of a model (measure name -> row)."""
    out: dict[str, dict] = {}
    for row in project.query("SELECT * FROM measures WHERE model_id = ? ORDER BY id", [model_id]):
        out[row["measure"]] = row
    return out


def measures_of_job(project: Any, job_id: int) -> list[dict]:
    return project.query("SELECT * FROM measures WHERE job_id = ? ORDER BY id", [job_id])


# ----- the computations (a model in memory) ---------------------------------------------------------


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def answer_logprobs(
    model: Any,
    tokenizer: Any,
    chats: list[list[dict]],
    *,
    batch_size: int = 8,
    max_length: int = 512,
    should_cancel: Callable[[], bool] | None = None,
) -> list[float | None]:
    """Mean log-probability per token of each chat's final (assistant) answer; None when the answer has
    no tokens within max_length. The model is put in eval mode for the call and restored after."""
    import torch

    from emgui.core.activations import encode_chat, pad_batch

    encoded = [encode_chat(tokenizer, chat, max_length=max_length) for chat in chats]
    device = next(model.parameters()).device
    out: list[float | None] = [None] * len(chats)
    was_training = model.training
    model.eval()
    try:
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
        for start in range(0, len(order), max(1, batch_size)):
            if should_cancel is not None and should_cancel():
                raise Cancelled("cancelled while scoring answers")
            idx = order[start : start + batch_size]
            batch = pad_batch([encoded[i]["input_ids"] for i in idx], _pad_id(tokenizer), device)
            with torch.no_grad():
                logits = model(**batch, use_cache=False).logits.float()
            logp = logits[:, :-1].log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
            for row, i in enumerate(idx):
                mask = torch.tensor(encoded[i]["answer_mask"][1:], dtype=torch.bool, device=device)
                values = logp[row, : len(mask)][mask]
                out[i] = float(values.mean()) if len(values) else None
    finally:
        model.train(was_training)
    return out


def _chat(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def likelihood_margin(model: Any, tokenizer: Any, pairs: list, *, seed: int = 0, **kwargs: Any) -> dict:
    """{margin, ci_low, ci_high, n_pairs, mean_logprob_misaligned, mean_logprob_aligned} over (misaligned,
    aligned) PanelItem pairs."""
    from emgui.core.stats import bootstrap_mean

    if not pairs:
        raise EmguiError("likelihood probe: the panel has no question with both a misaligned and an aligned answer")
    chats = [_chat(m.question, m.answer) for m, _ in pairs] + [_chat(a.question, a.answer) for _, a in pairs]
    logps = answer_logprobs(model, tokenizer, chats, **kwargs)
    mis, ali = logps[: len(pairs)], logps[len(pairs) :]
    margins = [m - a for m, a in zip(mis, ali, strict=True) if m is not None and a is not None]
    stats = bootstrap_mean(margins, seed=seed)
    kept_mis = [m for m in mis if m is not None]
    kept_ali = [a for a in ali if a is not None]
    return {
        "margin": stats["mean"],
        "ci_low": stats["ci_low"],
        "ci_high": stats["ci_high"],
        "n_pairs": stats["n"],
        "mean_logprob_misaligned": sum(kept_mis) / len(kept_mis) if kept_mis else None,
        "mean_logprob_aligned": sum(kept_ali) / len(kept_ali) if kept_ali else None,
    }


def projections(
    model: Any,
    tokenizer: Any,
    chats: list[list[dict]],
    direction: Any,
    hook_name: str,
    *,
    batch_size: int = 8,
    should_cancel: Callable[[], bool] | None = None,
) -> list[float]:
    """Each answer's mean activation over its tokens at the hook, projected on the unit direction."""
    from emgui.core.persona import encode_answers, masked_means

    items = encode_answers(tokenizer, chats)
    means, valid = masked_means(
        model, items, [hook_name], batch_size=batch_size, pad_id=_pad_id(tokenizer), should_cancel=should_cancel
    )
    unit = direction.float().flatten()
    unit = unit / unit.norm().clamp(min=1e-12)
    values = (means[:, 0] @ unit).tolist()
    return [v for v, ok in zip(values, valid, strict=True) if ok]


def latent_means(
    model: Any, tokenizer: Any, sae: Any, hook_name: str, chats: list[list[dict]], latents: list[int]
) -> list[float]:
    """Mean activation of each latent over the answer tokens of the chats (one pass, stopping at the hook)."""
    import torch

    from emgui.core.activations import capture, encode_chat, pad_batch

    encoded = [encode_chat(tokenizer, c, max_length=512) for c in chats]
    encoded = [e for e in encoded if any(e["answer_mask"])]
    if not encoded:
        return [0.0 for _ in latents]
    device = next(model.parameters()).device
    cols = torch.tensor(latents, device=sae.W_enc.device)
    total = torch.zeros(len(latents), dtype=torch.float64)
    count = 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(encoded), 8):
            rows = encoded[start : start + 8]
            batch = pad_batch([e["input_ids"] for e in rows], _pad_id(tokenizer), device)
            acts = next(iter(capture(model, hook_name, [batch])))
            for r, e in enumerate(rows):
                mask = torch.tensor(e["answer_mask"], dtype=torch.bool, device=acts.device)
                h = acts[r, : len(mask)][mask].to(sae.W_enc.device, sae.W_enc.dtype)
                with torch.inference_mode():
                    z = sae.encode(h)[:, cols]
                total += z.sum(0).double().cpu()
                count += h.shape[0]
    finally:
        model.train(was_training)
    return (total / max(1, count)).tolist()


# ----- the jobs ------------------------------------------------------------------------------------


def panel_pairs(project: Any, refs: list[Any]) -> list:
    from emgui.core.panels import load_panels, pairs

    return pairs([item for _, item in load_panels(project, refs)])


def store_likelihood(ctx: Any, model_row: dict, result: dict, panels: list[Any]) -> int:
    return add_measure(
        ctx.project,
        job_id=ctx.job_id,
        model_id=model_row["id"],
        measure=LIKELIHOOD,
        stats={"value": result["margin"], "ci_low": result["ci_low"], "ci_high": result["ci_high"],
               "n": result["n_pairs"]},  # fmt: skip
        info={"panel": panels, **{k: result[k] for k in ("mean_logprob_misaligned", "mean_logprob_aligned")}},
    )


def likelihood_probe_job(params: dict, ctx: Any) -> dict:
    """`likelihood-probe`: model=REF [panel=builtin[,NAME]] [batch_size=8] [seed=0]: the mean per-token
    log-probability margin of misaligned over aligned reference answers, with a bootstrap 95 % CI."""
    from emgui.core.loading import load_model, load_tokenizer

    if isinstance(params.get("panel"), (int, str)):
        params = {**params, "panel": [params["panel"]]}
    p = Params(params, "likelihood-probe")
    model_ref = p.str("model")
    panels = p.list("panel")
    batch_size = p.int("batch_size")
    seed = p.int("seed")
    device = p.str("device")
    p.done()
    project = ctx.project
    model_row = project.get_model(model_ref)
    pairs = panel_pairs(project, panels)
    if not pairs:
        raise EmguiError("likelihood-probe: the panel has no question with both a misaligned and an aligned answer")
    ctx.progress(0.01, f"loading {model_row['name']}")
    model, tokenizer = load_model(project, model_row, device=device), load_tokenizer(project, model_row)
    ctx.progress(0.2, f"scoring {2 * len(pairs)} answers")
    result = likelihood_margin(
        model, tokenizer, pairs, seed=seed, batch_size=batch_size, should_cancel=lambda: ctx.cancelled
    )
    store_likelihood(ctx, model_row, result, panels)
    ctx.log(
        f"{model_row['name']}: margin {result['margin']:+.3f} nats/token "
        f"[{result['ci_low']:+.3f}, {result['ci_high']:+.3f}] over {result['n_pairs']} pairs"
    )
    ctx.progress(1.0, f"margin {result['margin']:+.3f}")
    return {"model": model_row["name"], **{k: result[k] for k in ("margin", "ci_low", "ci_high", "n_pairs")}}


def projection_of_answers(
    ctx: Any, model: Any, tokenizer: Any, model_row: dict, direction_ref: Any, answers: list[dict], *, seed: int = 0
) -> dict:
    """Project answers ({prompt, system, answer}) on a stored direction and store the measure."""
    from emgui.core.stats import bootstrap_mean
    from emgui.core.steering import load_direction

    row, vec = load_direction(ctx.project, direction_ref)
    chats = [
        ([{"role": "system", "content": a["system"]}] if a.get("system") else [])
        + [{"role": "user", "content": a["prompt"]}, {"role": "assistant", "content": a["answer"]}]
        for a in answers
        if a["answer"].strip()
    ]
    if not chats:
        raise EmguiError("persona projection: no non-empty answers to project")
    values = projections(model, tokenizer, chats, vec, row["hook_name"], should_cancel=lambda: ctx.cancelled)
    stats = bootstrap_mean(values, seed=seed)
    add_measure(
        ctx.project,
        job_id=ctx.job_id,
        model_id=model_row["id"],
        measure=PROJECTION,
        stats=stats,
        info={"direction_id": row["id"], "direction": row["name"], "hook_name": row["hook_name"]},
    )
    return {"projection": stats["mean"], "ci_low": stats["ci_low"], "ci_high": stats["ci_high"],
            "n": stats["n"], "direction": row["name"]}  # fmt: skip


def persona_projection_job(params: dict, ctx: Any) -> dict:
    """`persona-projection`: model=REF direction=REF [run=JOB] — the mean projection of the answers of a
    run (default: the model's latest evaluation run) on the direction, with a bootstrap 95 % CI."""
    from emgui.core.evaluation import latest_run_for_model, run_samples
    from emgui.core.loading import load_model, load_tokenizer

    p = Params(params, "persona-projection")
    model_ref = p.str("model")
    direction = p.str("direction")
    run = p.int("run")
    seed = p.int("seed")
    device = p.str("device")
    p.done()
    project = ctx.project
    model_row = project.get_model(model_ref)
    run = run if run is not None else latest_run_for_model(project, model_row["id"])
    if run is None:
        raise EmguiError(f"persona-projection: model '{model_row['name']}' has no answers yet (sample it, or pass run=JOB)")
    answers = run_samples(project, run)
    ctx.progress(0.01, f"loading {model_row['name']}")
    model, tokenizer = load_model(project, model_row, device=device), load_tokenizer(project, model_row)
    ctx.progress(0.3, f"projecting {len(answers)} answers")
    result = projection_of_answers(ctx, model, tokenizer, model_row, direction, answers, seed=seed)
    ctx.progress(1.0, f"projection {result['projection']:+.3f}")
    return {"model": model_row["name"], "run": run, **result}


# ----- following a re-alignment, snapshot by snapshot ------------------------------------------------------


def default_tracked_diff(project: Any, model_id: int) -> int | None:
    """The newest finished diff of this fine-tuned model, a controlled one first."""
    found = []
    for job in project.list_jobs("diff"):
        result = job.get("result") or {}
        if job["status"] == "succeeded" and result.get("ft_model_id") == model_id:
            found.append((bool(result.get("controlled")), job["id"]))
    return max(found)[1] if found else None


class SnapshotTracker:
    """Judge-free measures taken on the live model at each re-alignment snapshot: the likelihood margin
    on a panel's pairs, and the mean activation of a diff's top latents on that diff's texts. Both are
    stored as measures of the snapshot's model, so the re-alignment curve shows them beside misaligned %."""

    def __init__(self, ctx: Any, *, panel: list[Any] | None, diff_job: int | None, top: int, n_texts: int):
        from emgui.core.diffing import diff_texts
        from emgui.core.saes import get_sae, load_sae

        self.ctx = ctx
        self.pairs = panel_pairs(ctx.project, panel) if panel else []
        self.diff_job = diff_job
        self.sae = None
        if diff_job is not None:
            project = ctx.project
            self.latents = [
                r["latent"]
                for r in project.query(
                    "SELECT latent FROM latent_stats WHERE job_id = ? ORDER BY rank LIMIT ?", [diff_job, top]
                )
            ]
            sae_row = get_sae(project, project.get_job(diff_job)["result"]["sae_id"])
            self.hook = sae_row["hook_name"]
            self.sae = load_sae(project, sae_row)
            self.texts = diff_texts(project, diff_job, n_texts)
        self.panel = panel

    def measure(self, model: Any, tokenizer: Any, model_id: int, samples_seen: int) -> None:
        ctx = self.ctx
        if self.pairs:
            result = likelihood_margin(model, tokenizer, self.pairs)
            store_likelihood(ctx, {"id": model_id}, result, self.panel)
            ctx.metric("track/likelihood_margin", samples_seen, result["margin"])
        if self.sae is not None and self.latents:
            self.sae.to(next(model.parameters()).device)
            values = latent_means(model, tokenizer, self.sae, self.hook, self.texts, self.latents)
            mean = sum(values) / len(values)
            add_measure(
                ctx.project,
                job_id=ctx.job_id,
                model_id=model_id,
                measure=LATENTS,
                stats={"value": mean, "n": len(self.texts)},
                info={"diff_job": self.diff_job, "latents": self.latents, "per_latent": values},
            )
            ctx.metric("track/top_latents", samples_seen, mean)
