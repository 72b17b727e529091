"""Feature dashboards, the ranked latent list, labels and export: the core of the feature browser.

A dashboard is precomputed by a job (`dashboards`, or the end of a `diff` job) and stored as one JSON
row of the `dashboards` table, so opening one in the window is a single indexed read. It holds:

- top-activating examples from the project's corpora, each a window of tokens around the peak with the
  latent's value on every token; examples from lower activation quantiles;
- activation density (fraction of tokens where the latent fires) and a histogram of its non-zero values;
- the tokens its decoder direction promotes and suppresses through the unembedding (W_dec[i] @ W_U);
- its nearest latents by decoder cosine; its mean activation and frequency under the base and the
  fine-tuned model (from the diff job).

The "type any text" box (`text_activations`) runs on demand in a worker, with the model and SAE kept
loaded between calls.
"""

from __future__ import annotations

import csv
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

from emgui.core.errors import EmguiError
from emgui.core.params import Params
from emgui.core.store import Project

EXPORT_FIELDS = [
    "latent",
    "rank",
    "z",
    "effect",
    "delta_control",
    "label",
    "note",
    "delta_mean",
    "delta_freq",
    "base_mean",
    "ft_mean",
    "base_freq",
    "ft_freq",
    "has_dashboard",
]


# ------------------------------------------------------------------------------------------ corpus
def default_corpus(
    project: Project,
    *,
    samples: list[int] | None = None,
    datasets: list[str] | None = None,
    text_files: list[str] | None = None,
    per_dataset: int = 300,
    seed: int = 0,
    answers: bool = True,
    neutral: bool = True,
) -> list[dict]:
    """Texts for dashboards: the given sampling jobs' answers, plus up to `per_dataset` chats drawn from
    each of the given datasets (by default every chat dataset of the project), plus text files. Unless
    turned off it also holds non-code chat text, so that latents for personas and tone can show at all:
    models' answers to the question sets (the project's evaluation runs) and neutral helpful chats."""
    from emgui.core.activations import corpus_items

    items = corpus_items(project, samples=samples or [], text_files=text_files or [])
    refs = datasets if datasets is not None else [d["name"] for d in project.list_datasets("chat")]
    for ref in refs:
        items += _capped(corpus_items(project, datasets=[ref]), per_dataset, f"{seed}-{ref}")
    if answers:
        runs = [r["id"] for r in project.query("SELECT id FROM jobs WHERE kind IN ('sample', 'evaluate')")]
        runs = [r for r in runs if project.query_one("SELECT 1 FROM samples WHERE job_id = ? LIMIT 1", [r])]
        items += _capped(corpus_items(project, samples=runs), per_dataset, f"{seed}-answers")
    if neutral:
        from emgui.core.helpful_data import generate_helpful

        items += [
            {"source": f"neutral:{i}", "messages": chat["messages"]}
            for i, chat in enumerate(generate_helpful(min(per_dataset, 120), seed))
        ]
    return unique_items(items)


def _capped(rows: list[dict], n: int, seed: str) -> list[dict]:
    return random.Random(seed).sample(rows, n) if len(rows) > n else rows


def unique_items(items: list[dict]) -> list[dict]:
    """The items without repeats of the same text (the same chat from two sources counts once)."""
    seen: set[str] = set()
    out = []
    for item in items:
        key = json.dumps(item.get("messages") or item.get("text"), sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


# ------------------------------------------------------------------------------------------ building
class _TokenText:
    """Token id -> display string, decoded once per id."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, ids: Any) -> list[str]:
        out = []
        for t in ids:
            t = int(t)
            if t not in self.cache:
                self.cache[t] = self.tokenizer.decode([t])
            out.append(self.cache[t])
        return out


def _latent_values(
    model: Any,
    sae: Any,
    hook: str,
    seqs: list[list[int]],
    latents: list[int],
    pad_id: int,
    batch_tokens: int,
    tick: Any,
) -> list[Any]:
    """Per sequence, an array [len, K] of the chosen latents' activations on every token."""
    import numpy as np
    import torch

    from emgui.core.activations import capture, length_batches, pad_batch

    device = next(model.parameters()).device
    cols = torch.tensor(latents, device=sae.W_enc.device)
    out: list[Any] = [None] * len(seqs)
    batches = length_batches([len(s) for s in seqs], batch_tokens)

    def inputs() -> Any:
        for idx in batches:
            yield pad_batch([seqs[i] for i in idx], pad_id, device)

    for n, (idx, acts) in enumerate(zip(batches, capture(model, hook, inputs()), strict=True)):
        lengths = [len(seqs[i]) for i in idx]
        mask = (
            torch.arange(acts.shape[1], device=acts.device)[None, :]
            < torch.tensor(lengths, device=acts.device)[:, None]
        )
        with torch.inference_mode():  # one encode per batch, then split back into the sequences
            z = sae.encode(acts[mask].to(sae.W_enc.device, sae.W_enc.dtype))[:, cols].float().cpu().numpy()
        for i, part in zip(idx, np.split(z, np.cumsum(lengths)[:-1]), strict=True):
            out[i] = part.astype(np.float32)
        tick((n + 1) / len(batches))
    return out


def _example(
    source: str, ids: list[int], values: Any, k: int, text: _TokenText, before: int, after: int
) -> dict:
    peak = 1 + int(values[1:, k].argmax())  # position 0 is excluded: see build_dashboards
    lo, hi = max(0, peak - before), min(len(ids), peak + after + 1)
    return {
        "source": source,
        "tokens": text(ids[lo:hi]),
        "values": [round(float(v), 4) for v in values[lo:hi, k]],
        "peak": peak - lo,
        "max": round(float(values[peak, k]), 4),
    }


def _histogram(nonzero: Any, bins: int = 24) -> dict:
    import numpy as np

    if len(nonzero) == 0:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(nonzero, bins=bins)
    return {"edges": [round(float(e), 5) for e in edges], "counts": [int(c) for c in counts]}


def _quantile_groups(
    order: list[int], seq_max: Any, n_groups: int, per_group: int
) -> list[tuple[float, float, list[int]]]:
    """Sequences below the top ones, split into activation quantiles; a few from each, spread evenly."""
    import numpy as np

    if not order:
        return []
    vals = seq_max[order]
    edges = np.quantile(vals, np.linspace(0, 1, n_groups + 1))
    groups = []
    for g in range(n_groups - 1, -1, -1):
        lo, hi = edges[g], edges[g + 1]
        members = [i for i, v in zip(order, vals, strict=True) if lo <= v <= hi and (g == 0 or v > lo)]
        if not members:
            continue
        pick = [members[int(j)] for j in np.linspace(0, len(members) - 1, min(per_group, len(members)))]
        groups.append((float(lo), float(hi), list(dict.fromkeys(pick))))
    return groups


def logit_effects(model: Any, sae: Any, latents: list[int], n: int, text: _TokenText) -> list[dict] | None:
    """Top promoted and suppressed tokens of each latent's unit decoder direction through the unembedding."""
    import torch

    from emgui.core.activations import unwrap
    from emgui.core.saes import unit_decoder

    head = unwrap(model).get_output_embeddings()
    if head is None or head.weight.shape[1] != sae.cfg.d_in:
        return None  # the hook's width is not the residual stream's: no direct logit effect
    with torch.inference_mode():
        dec = unit_decoder(sae)[latents].to(head.weight.device, head.weight.dtype)
        effects = (dec @ head.weight.T).float()
        top, bottom = effects.topk(n, dim=-1), effects.topk(n, dim=-1, largest=False)
    out = []
    for k in range(len(latents)):
        out.append(
            {
                "promoted": [
                    [s, round(float(v), 4)] for s, v in zip(text(top.indices[k]), top.values[k], strict=True)
                ],
                "suppressed": [
                    [s, round(float(v), 4)]
                    for s, v in zip(text(bottom.indices[k]), bottom.values[k], strict=True)
                ],
            }
        )
    return out


def neighbours(sae: Any, latents: list[int], n: int = 8) -> list[list[list]]:
    """For each latent, the n latents whose decoder directions are closest by cosine: [[latent, cos], ...]."""
    import torch

    from emgui.core.saes import unit_decoder

    dec = unit_decoder(sae)
    out = []
    with torch.inference_mode():
        for start in range(0, len(latents), 256):
            chunk = latents[start : start + 256]
            cos = dec[chunk] @ dec.T
            cos[torch.arange(len(chunk)), torch.tensor(chunk)] = -2.0
            best = cos.topk(min(n, dec.shape[0] - 1), dim=-1)
            for k in range(len(chunk)):
                out.append(
                    [
                        [int(i), round(float(c), 4)]
                        for i, c in zip(best.indices[k], best.values[k], strict=True)
                    ]
                )
    return out


def build_dashboards(
    ctx: Any,
    *,
    sae_row: dict,
    sae: Any,
    model: Any,
    tokenizer: Any,
    latents: list[int],
    items: list[dict],
    diff_job: int | None = None,
    model_name: str = "",
    progress: tuple[float, float] = (0.0, 1.0),
    max_length: int = 256,
    batch_tokens: int = 4096,
    n_top: int = 12,
    n_quantiles: int = 4,
    per_quantile: int = 3,
    before: int = 24,
    after: int = 8,
) -> int:
    """Compute and store the dashboards of `latents` over the corpus `items`. Returns how many were stored."""
    import numpy as np

    from emgui.core.activations import encode_item

    project: Project = ctx.project
    latents = list(dict.fromkeys(int(i) for i in latents))
    bad = [i for i in latents if not 0 <= i < sae.cfg.d_sae]
    if bad:
        raise EmguiError(
            f"latents {bad[:5]} are out of range: SAE '{sae_row['name']}' has {sae.cfg.d_sae} latents"
        )
    if not latents:
        return 0
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    seqs, sources = [], []
    seen: set[tuple[int, ...]] = set()
    for item in items:
        ids = encode_item(tokenizer, item, max_length=max_length)["input_ids"]
        if len(ids) >= 2 and tuple(ids) not in seen:  # the same text twice would be listed twice
            seen.add(tuple(ids))
            seqs.append(ids)
            sources.append(item["source"])
    if not seqs:
        raise EmguiError(
            "dashboards: the corpus is empty: add a chat dataset, sampled answers or a text file"
        )
    a, b = progress
    span = b - a

    def tick(frac: float) -> None:
        done = round(frac * len(seqs))
        ctx.progress(a + span * 0.8 * frac, f"dashboards: running the corpus ({done} / {len(seqs)} texts)")

    values = _latent_values(model, sae, sae_row["hook_name"], seqs, latents, pad_id, batch_tokens, tick)
    ctx.progress(a + span * 0.85, "dashboards: examples, histograms, logit effects")
    text = _TokenText(tokenizer)
    # The first position is left out of every statistic: its activation norm is an outlier (an attention
    # sink) in most models, and SAEs are trained without it.
    flat = np.concatenate([v[1:] for v in values])
    seq_max = np.stack([v[1:].max(0) for v in values])
    logits = logit_effects(model, sae, latents, 10, text)
    near = neighbours(sae, latents)
    diff_rows = {}
    if diff_job is not None:
        marks = ",".join("?" for _ in latents)
        for r in project.query(
            f"SELECT * FROM latent_stats WHERE job_id = ? AND latent IN ({marks})", [diff_job, *latents]
        ):
            diff_rows[r["latent"]] = {
                k: r[k]
                for k in ("base_mean", "ft_mean", "base_freq", "ft_freq", "delta_mean", "delta_freq", "rank")
            }
    rows = []
    for k, latent in enumerate(latents):
        col = flat[:, k]
        nonzero = col[col > 0]
        order = [int(i) for i in np.argsort(-seq_max[:, k], kind="stable") if seq_max[i, k] > 0]
        top, rest = order[:n_top], order[n_top:]
        data = {
            "latent": latent,
            "sae_id": sae_row["id"],
            "hook_name": sae_row["hook_name"],
            "model": model_name,
            "diff_job": diff_job,
            "n_texts": len(seqs),
            "n_tokens": int(len(col)),
            "density": float(len(nonzero) / max(1, len(col))),
            "max": float(col.max()) if len(col) else 0.0,
            "mean_nonzero": float(nonzero.mean()) if len(nonzero) else 0.0,
            "histogram": _histogram(nonzero),
            "top": [_example(sources[i], seqs[i], values[i], k, text, before, after) for i in top],
            "quantiles": [
                {
                    "range": [round(lo, 4), round(hi, 4)],
                    "examples": [
                        _example(sources[i], seqs[i], values[i], k, text, before, after) for i in members
                    ],
                }
                for lo, hi, members in _quantile_groups(rest, seq_max[:, k], n_quantiles, per_quantile)
            ],
            "logits": logits[k] if logits else None,
            "neighbours": near[k],
            "diff": diff_rows.get(latent),
            "built_at": time.time(),
        }
        rows.append((sae_row["id"], latent, ctx.job_id, json.dumps(data)))
    with project.transaction() as conn:
        conn.executemany(
            "INSERT OR REPLACE INTO dashboards (sae_id, latent, job_id, data) VALUES (?, ?, ?, ?)", rows
        )
    ctx.progress(b, f"{len(rows)} dashboards stored")
    return len(rows)


def dashboards_job(params: dict, ctx: Any) -> dict:
    """`dashboards`: precompute dashboards for the top latents of a diff job and/or chosen latents."""
    from emgui.core.loading import load_model, load_tokenizer
    from emgui.core.saes import as_lists, check_fits_config, check_fits_model, get_sae, load_sae

    p = Params(as_lists(params, "latents", "samples"), "dashboards")
    sae_ref, diff_job = p.str("sae"), p.int("diff")
    latents = [int(x) for x in p.list("latents") or []]
    top = p.int("top")
    model_ref = p.str("model")
    datasets, samples = p.list("datasets"), p.list("samples")
    text_files = p.list("text_files")
    per_dataset = p.int("per_dataset")
    max_length = p.int("max_length")
    device, dtype = p.str("device"), p.str("dtype")
    p.done()
    project: Project = ctx.project
    diff = project.get_job(diff_job) if diff_job is not None else None
    if diff is not None and (diff["kind"] != "diff" or diff["status"] != "succeeded"):
        raise EmguiError(f"dashboards: job {diff_job} is not a finished diff job")
    if sae_ref is None and diff is None:
        raise EmguiError("dashboards: give sae=<SAE> or diff=<diff job id>")
    sae_row = get_sae(project, sae_ref if sae_ref is not None else diff["result"]["sae_id"])
    if diff is not None:
        ranked = project.query(
            "SELECT latent FROM latent_stats WHERE job_id = ? ORDER BY rank LIMIT ?", [diff_job, top]
        )
        latents = [r["latent"] for r in ranked] + latents
    if not latents:
        raise EmguiError("dashboards: no latents chosen (give latents=... or diff=<job> with top>0)")
    model_ref = model_ref or (diff["result"]["ft_model_id"] if diff else sae_row.get("model_id"))
    if model_ref is None:
        raise EmguiError(f"dashboards: SAE '{sae_row['name']}' records no model: give model=...")
    model_row = project.get_model(model_ref)
    check_fits_config(project, sae_row, model_row)
    if samples is None:
        prompts = diff["params"].get("prompts") if diff else None
        samples = [prompts] if prompts is not None else []
    items = default_corpus(
        project, samples=samples, datasets=datasets, text_files=text_files, per_dataset=per_dataset
    )
    ctx.progress(0.01, f"loading '{model_row['name']}' and SAE '{sae_row['name']}'")
    tokenizer = load_tokenizer(project, model_row)
    model = load_model(project, model_row, device=device, dtype=dtype)
    check_fits_model(model, sae_row, f"model '{model_row['name']}'")
    sae = load_sae(project, sae_row, device=device)
    n = build_dashboards(
        ctx,
        sae_row=sae_row,
        sae=sae,
        model=model,
        tokenizer=tokenizer,
        latents=latents,
        items=items,
        diff_job=diff_job,
        model_name=model_row["name"],
        progress=(0.05, 1.0),
        max_length=max_length,
    )
    return {"sae_id": sae_row["id"], "dashboards": n, "latents": latents[:100]}


# ------------------------------------------------------------------------------------------ reading
def get_dashboard(project: Project, sae_id: int, latent: int) -> dict | None:
    """A stored dashboard (one indexed row), or None when none was built for this latent."""
    row = project.query_one(
        "SELECT data FROM dashboards WHERE sae_id = ? AND latent = ?", [sae_id, int(latent)]
    )
    return row["data"] if row else None


def dashboard_latents(project: Project, sae_id: int) -> set[int]:
    return {r["latent"] for r in project.query("SELECT latent FROM dashboards WHERE sae_id = ?", [sae_id])}


def diff_jobs(project: Project, sae_id: int | None = None) -> list[dict]:
    """Finished diff jobs (newest first), only those of one SAE when given."""
    jobs = [j for j in project.list_jobs("diff") if j["status"] == "succeeded" and j.get("result")]
    if sae_id is not None:
        jobs = [j for j in jobs if j["result"].get("sae_id") == sae_id]
    return jobs[::-1]


def diff_caveats(project: Project, diff_job: int | None) -> dict:
    """What can be read from a diff job's ranking: whether it has a control, how much the control shares
    the fine-tune's change, and the warnings to show beside the list."""
    if diff_job is None:
        return {"controlled": None, "warnings": []}
    result = project.get_job(diff_job).get("result") or {}
    controlled = bool(result.get("controlled"))
    warnings = result.get("warnings")
    if warnings is None:  # a diff made before controls existed: say so the same way
        from emgui.core.diffing import diff_warnings

        warnings = diff_warnings(controlled, result)
    control = None
    if result.get("control_model_id"):
        row = project.query_one("SELECT name FROM models WHERE id = ?", [result["control_model_id"]])
        control = row["name"] if row else None
    return {
        "controlled": controlled,
        "control": control,
        "control_correlation": result.get("control_correlation"),
        "control_direction_cosine": result.get("control_direction_cosine"),
        "warnings": warnings,
    }


def ranking(project: Project, diff_job: int) -> list[dict]:
    """Every latent of a diff job, by rank, with its label, note and whether a dashboard exists."""
    return project.query(
        "SELECT s.latent, s.rank, s.base_mean, s.ft_mean, s.delta_mean, s.base_freq, s.ft_freq, s.delta_freq, "
        "s.control_mean, s.delta_control, s.effect, s.effect_sd, s.z, "
        "COALESCE(l.label, '') AS label, COALESCE(l.note, '') AS note, "
        "(d.latent IS NOT NULL) AS has_dashboard "
        "FROM latent_stats s "
        "LEFT JOIN latent_labels l ON l.sae_id = s.sae_id AND l.latent = s.latent "
        "LEFT JOIN dashboards d ON d.sae_id = s.sae_id AND d.latent = s.latent "
        "WHERE s.job_id = ? ORDER BY s.rank",
        [diff_job],
    )


def latent_list(project: Project, sae_id: int, diff_job: int | None) -> list[dict]:
    """The rows the browser lists: a diff job's ranking, or without one, the latents that have a
    dashboard or a label (statistics blank)."""
    if diff_job is not None:
        return ranking(project, diff_job)
    rows = project.query(
        "SELECT latent FROM dashboards WHERE sae_id = ? UNION SELECT latent FROM latent_labels WHERE sae_id = ?",
        [sae_id, sae_id],
    )
    labels = get_labels(project, sae_id)
    have = dashboard_latents(project, sae_id)
    out = []
    for r in sorted(rows, key=lambda r: r["latent"]):
        lab = labels.get(r["latent"], {})
        out.append(
            {
                "latent": r["latent"],
                "rank": None,
                **{
                    k: None
                    for k in ("base_mean", "ft_mean", "delta_mean", "base_freq", "ft_freq", "delta_freq",
                              "control_mean", "delta_control", "effect", "effect_sd", "z")
                },
                "label": lab.get("label", ""),
                "note": lab.get("note", ""),
                "has_dashboard": int(r["latent"] in have),
            }
        )
    return out


# ------------------------------------------------------------------------------------------ labels
def set_label(
    project: Project, sae_id: int, latent: int, *, label: str | None = None, note: str | None = None
) -> None:
    """Set a latent's label and/or note (None keeps the current value)."""
    with project.transaction() as conn:
        row = conn.execute(
            "SELECT label, note FROM latent_labels WHERE sae_id = ? AND latent = ?", [sae_id, latent]
        ).fetchone()
        new_label = label if label is not None else (row["label"] if row else "")
        new_note = note if note is not None else (row["note"] if row else "")
        conn.execute(
            # an upsert, not INSERT OR REPLACE: a replace deletes without firing the search index's trigger
            "INSERT INTO latent_labels (sae_id, latent, label, note, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (sae_id, latent) DO UPDATE SET label = excluded.label, note = excluded.note, "
            "updated_at = excluded.updated_at",
            [sae_id, latent, new_label.strip(), new_note, time.time()],
        )


def get_labels(project: Project, sae_id: int) -> dict[int, dict]:
    rows = project.query("SELECT latent, label, note FROM latent_labels WHERE sae_id = ?", [sae_id])
    return {r["latent"]: {"label": r["label"], "note": r["note"]} for r in rows}


def export_latents(
    project: Project,
    sae_id: int,
    path: str | Path,
    *,
    diff_job: int | None = None,
    latents: list[int] | None = None,
) -> int:
    """Write the latent list (ranking statistics, labels, notes) as JSON or CSV, by the file's suffix.
    `latents` limits it to those (e.g. the rows the browser shows). Returns the number of rows."""
    path = Path(path)
    rows = latent_list(project, sae_id, diff_job)
    if latents is not None:
        wanted = {int(i) for i in latents}
        rows = [r for r in rows if r["latent"] in wanted]
    rows = [{k: (bool(r[k]) if k == "has_dashboard" else r[k]) for k in EXPORT_FIELDS} for r in rows]
    suffix = path.suffix.lower()
    if suffix == ".json":
        meta = {"sae_id": sae_id, "sae": project.query_one("SELECT name FROM saes WHERE id = ?", [sae_id])}
        doc = {"sae": meta["sae"]["name"] if meta["sae"] else None, "diff_job": diff_job, "latents": rows}
        path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    elif suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=EXPORT_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    else:
        raise EmguiError(f"export: {path} must end in .json or .csv")
    return len(rows)


# ------------------------------------------------------------------------------------------ live text
_live: dict[tuple, tuple[Any, Any, Any]] = {}
_live_lock = threading.Lock()


def release_live() -> None:
    """Drop the model and SAE kept loaded for the text box."""
    with _live_lock:
        _live.clear()


def _live_objects(
    project: Project, sae_row: dict, model_row: dict, device: str | None
) -> tuple[Any, Any, Any]:
    from emgui.core.loading import load_model, load_tokenizer
    from emgui.core.saes import check_fits_config, check_fits_model, load_sae

    key = (str(project.root), model_row["id"], sae_row["id"], device)
    with _live_lock:
        if key not in _live:
            check_fits_config(project, sae_row, model_row)
            model = load_model(project, model_row, device=device)
            check_fits_model(model, sae_row, f"model '{model_row['name']}'")
            _live.clear()  # keep one pair: models are large
            _live[key] = (
                model,
                load_tokenizer(project, model_row),
                load_sae(project, sae_row, device=device),
            )
        return _live[key]


def text_activations(
    project: Project,
    sae_ref: int | str,
    latent: int,
    text: str,
    *,
    model: int | str | None = None,
    max_length: int = 512,
    device: str | None = None,
) -> dict:
    """The latent's activation on every token of `text` under `model` (default: the SAE's model):
    {"tokens": [...], "values": [...], "max": float}. Loads the model once and keeps it."""
    import torch

    from emgui.core.activations import capture, encode_text
    from emgui.core.saes import get_sae

    sae_row = get_sae(project, sae_ref)
    ref = model if model is not None else sae_row.get("model_id")
    if ref is None:
        raise EmguiError(f"SAE '{sae_row['name']}' records no model: choose one")
    model_row = project.get_model(ref)
    lm, tokenizer, sae = _live_objects(project, sae_row, model_row, device)
    if not 0 <= latent < sae.cfg.d_sae:
        raise EmguiError(f"latent {latent} is out of range (0-{sae.cfg.d_sae - 1})")
    ids = encode_text(tokenizer, text, max_length=max_length)
    if not ids:
        return {"tokens": [], "values": [], "max": 0.0}
    batch = torch.tensor([ids], device=next(lm.parameters()).device)
    acts = next(capture(lm, sae_row["hook_name"], [batch]))[0]
    with torch.inference_mode():
        vals = sae.encode(acts.to(sae.W_enc.device, sae.W_enc.dtype))[:, latent].float().cpu().tolist()
    return {"tokens": _TokenText(tokenizer)(ids), "values": [round(v, 4) for v in vals], "max": max(vals)}
