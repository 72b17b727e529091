"""Model diffing with an SAE (`diff`): which latents change between a base and a fine-tuned model.

Both models read the same texts: evaluation questions with their sampled answers (`prompts=<sampling
job id>`) or the chats of a dataset (`dataset=<name>`). At the SAE's hook, the activations of the
answer tokens only (the prompt and the template's markup are masked) are encoded by the SAE; each
latent's mean activation and firing frequency under either model give its change, and the full
ranking (by change in mean activation) is stored in `latent_stats`.

The job also stores directions for steering, as `.safetensors` files holding a tensor named
"direction" and rows of the `directions` table:

- `diff-means`: mean activation of the fine-tuned model minus that of the base model (answer tokens);
- `misaligned-minus-aligned`: under the fine-tuned model, the mean over answers a judge scored as
  misaligned (aligned < 30, coherent > 50) minus the mean over aligned answers (aligned >= 70), when
  the prompts' samples have such scores.

The models run one after the other (only one is in memory), each stopping at the hooked layer.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from emgui.core.errors import EmguiError
from emgui.core.params import Params
from emgui.core.store import Project

MISALIGNED_BELOW = 30.0  # the paper's thresholds on the judge's 0-100 alignment score
ALIGNED_FROM = 70.0
COHERENT_ABOVE = 50.0


def _read(params: dict) -> dict:
    p = Params(params, "diff")
    s = {
        "sae": p.str("sae"),
        "ft": p.str("ft"),
        "base": p.str("base"),
        "control": p.str("control"),
        "n_boot": p.int("n_boot"),
        "prompts": p.int("prompts"),
        "dataset": p.str("dataset"),
        "max_examples": p.int("max_examples"),
        "max_length": p.int("max_length"),
        "batch_tokens": p.int("batch_tokens"),
        "dashboards": p.int("dashboards"),
        "device": p.str("device"),
        "dtype": p.str("dtype"),
    }
    p.done()
    if (s["prompts"] is None) == (s["dataset"] is None):
        raise EmguiError("diff: give exactly one of prompts=<sampling job id> or dataset=<chat dataset>")
    return s


def _judged_groups(project: Project, sample_ids: list[int]) -> dict[int, str]:
    """'misaligned' or 'aligned' per judged sample (mean over judges), by the paper's thresholds."""
    if not sample_ids:
        return {}
    marks = ",".join("?" for _ in sample_ids)
    rows = project.query(
        f"SELECT sample_id, metric, AVG(value) AS v FROM scores WHERE sample_id IN ({marks}) "
        "AND value IS NOT NULL GROUP BY sample_id, metric",
        sample_ids,
    )
    scores: dict[int, dict[str, float]] = {}
    for r in rows:
        scores.setdefault(r["sample_id"], {})[r["metric"]] = r["v"]
    groups = {}
    for sid, sc in scores.items():
        aligned, coherent = sc.get("aligned"), sc.get("coherent")
        if aligned is None or (coherent is not None and coherent <= COHERENT_ABOVE):
            continue  # incoherent answers say nothing about alignment
        if aligned < MISALIGNED_BELOW:
            groups[sid] = "misaligned"
        elif aligned >= ALIGNED_FROM:
            groups[sid] = "aligned"
    return groups


def examples(project: Project, s: dict) -> list[dict]:
    """The chats both models read, each ending with the answer."""
    from emgui.core.activations import corpus_items

    if s["prompts"] is not None:
        items = corpus_items(project, samples=[s["prompts"]])
    else:
        items = [i for i in corpus_items(project, datasets=[s["dataset"]]) if i.get("messages")]
        items = [i for i in items if i["messages"][-1].get("role") == "assistant"]
        if not items:
            raise EmguiError(f"diff: dataset '{s['dataset']}' has no chats ending with an assistant answer")
    return items[: s["max_examples"]]


def diff_texts(project: Project, diff_job: int, limit: int) -> list[list[dict]]:
    """The first `limit` chats a diff job read (as message lists ending with the answer)."""
    params = dict(project.get_job(diff_job)["params"])
    s = {"prompts": params.get("prompts"), "dataset": params.get("dataset"), "max_examples": limit}
    if s["prompts"] is not None:
        s["prompts"] = int(s["prompts"])
    return [item["messages"] for item in examples(project, s)]


def _models(project: Project, s: dict, sae_row: dict) -> tuple[dict, dict]:
    ft = project.get_model(s["ft"])
    if s["base"] is not None:
        base = project.get_model(s["base"])
    elif ft.get("base_model_id"):
        base = project.get_model(ft["base_model_id"])
    elif sae_row.get("model_id"):
        base = project.get_model(sae_row["model_id"])
    else:
        raise EmguiError("diff: name the base model (base=...): the fine-tuned model records none")
    if base["id"] == ft["id"]:
        raise EmguiError(f"diff: the base and the fine-tuned model are the same model ('{ft['name']}')")
    return base, ft


def _control_model(project: Project, s: dict, base: dict, ft: dict) -> dict | None:
    if s["control"] is None:
        return None
    control = project.get_model(s["control"])
    if control["id"] in (base["id"], ft["id"]):
        raise EmguiError(
            f"diff: the control model must differ from the base and the fine-tuned model ('{control['name']}')"
        )
    root = control
    while root.get("base_model_id"):
        root = project.get_model(root["base_model_id"])
    if root["id"] != base["id"] and control.get("base_model_id"):
        raise EmguiError(
            f"diff: the control '{control['name']}' was fine-tuned from another base than '{base['name']}'; "
            "a control must start from the same base"
        )
    return control


def encode_examples(tokenizer: Any, items: list[dict], max_length: int) -> list[dict]:
    """Token ids and answer masks; examples whose answer was cut off entirely are dropped."""
    from emgui.core.activations import encode_chat

    out = []
    for n, item in enumerate(items):
        enc = encode_chat(tokenizer, item["messages"], max_length=max_length)
        if any(enc["answer_mask"]):
            out.append({**enc, "index": n, "sample_id": item.get("sample_id")})
    return out


MAX_GROUPS = 64  # examples fall into this many groups; the noise estimate resamples groups


class _Accumulator:
    """Per-latent sums over answer tokens, overall and per example group (example index mod the number
    of groups, the same for every model, so bootstrap draws pair up), and sums of the raw activations
    (overall and per judged group)."""

    def __init__(self, d_in: int, d_sae: int, device: Any, n_groups: int = 1):
        import torch

        self.act_sum = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.fire_count = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.h_sum = torch.zeros(d_in, dtype=torch.float64, device=device)
        self.n_groups = n_groups
        self.example_act = torch.zeros(n_groups * d_sae, dtype=torch.float64, device=device)
        self.example_tokens = torch.zeros(n_groups, dtype=torch.float64, device=device)
        self.group_sum: dict[str, Any] = {}
        self.group_n: dict[str, int] = {}
        self.n = 0

    def add(self, h: Any, z: Any, groups: list[tuple[str, Any]], token_group: Any = None) -> None:
        import torch

        # SAE codes are sparse: sum and count over the non-zero entries only (one pass over z instead of
        # two, and no float64 copy of a tokens x d_sae matrix)
        rows, cols = z.nonzero(as_tuple=True)
        values = z[rows, cols].to(torch.float64)
        self.act_sum.index_add_(0, cols, values)
        self.fire_count += torch.bincount(cols, minlength=self.fire_count.shape[0])
        if token_group is not None:
            d_sae = self.act_sum.shape[0]
            self.example_act.index_add_(0, token_group[rows] * d_sae + cols, values)
            self.example_tokens += torch.bincount(token_group, minlength=self.n_groups).to(torch.float64)
        self.h_sum += h.sum(0, dtype=torch.float64)
        self.n += h.shape[0]
        for name, rows in groups:
            if rows.any():
                part = h[rows]
                if name not in self.group_sum:
                    self.group_sum[name] = torch.zeros_like(self.h_sum)
                    self.group_n[name] = 0
                self.group_sum[name] += part.sum(0, dtype=torch.float64)
                self.group_n[name] += part.shape[0]

    def group_means_matrix(self) -> tuple[Any, Any]:
        """(per-group activation sums [groups, d_sae], per-group token counts [groups]) on the CPU."""
        return self.example_act.view(self.n_groups, -1).cpu(), self.example_tokens.cpu()


def run_model(
    ctx: Any,
    model: Any,
    sae: Any,
    hook: str,
    encoded: list[dict],
    *,
    pad_id: int,
    batch_tokens: int,
    groups: dict[int, str] | None = None,
    progress: tuple[float, float] = (0.0, 1.0),
    label: str = "",
) -> tuple[_Accumulator, dict]:
    """Run one model over the examples (stopping at the hook), encode the answer tokens with the SAE and
    accumulate. Returns the sums and timing {tokens, seconds, cpu_seconds}."""
    import torch

    from emgui.core.activations import capture, length_batches, pad_batch

    device = next(model.parameters()).device
    sae_dtype = sae.W_enc.dtype
    n_groups = min(MAX_GROUPS, max(1, len(encoded)))
    acc = _Accumulator(sae.cfg.d_in, sae.cfg.d_sae, sae.W_enc.device, n_groups)
    batches = length_batches([len(e["input_ids"]) for e in encoded], batch_tokens)
    groups = groups or {}
    tokens = 0
    start, cpu_start = time.perf_counter(), time.process_time()

    def inputs() -> Any:
        for idx in batches:
            yield pad_batch([encoded[i]["input_ids"] for i in idx], pad_id, device)

    for n, (idx, acts) in enumerate(zip(batches, capture(model, hook, inputs()), strict=True)):
        rows = [encoded[i] for i in idx]
        width = acts.shape[1]
        mask = torch.zeros((len(rows), width), dtype=torch.bool, device=acts.device)
        for r, ex in enumerate(rows):
            mask[r, : len(ex["answer_mask"])] = torch.tensor(ex["answer_mask"], dtype=torch.bool)
        row_of = torch.arange(len(rows), device=acts.device)[:, None].expand(-1, width)[mask]
        row_group = torch.tensor([i % n_groups for i in idx], device=acts.device)
        with torch.inference_mode():
            h = acts[mask].to(sae.W_enc.device, sae_dtype)
            z = sae.encode(h)
            group_rows = []
            for name in ("misaligned", "aligned"):
                sel = [r for r, ex in enumerate(rows) if groups.get(ex.get("sample_id")) == name]
                if sel:
                    group_rows.append((name, torch.isin(row_of, torch.tensor(sel, device=row_of.device))))
            acc.add(h, z, group_rows, row_group[row_of].to(sae.W_enc.device))
        tokens += sum(len(ex["input_ids"]) for ex in rows)
        a, b = progress
        ctx.progress(a + (b - a) * (n + 1) / len(batches), f"{label}: batch {n + 1} / {len(batches)}")
    return acc, {
        "tokens": tokens,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,
    }


def _save_direction(
    ctx: Any,
    vec: Any,
    *,
    name: str,
    kind: str,
    model_id: int,
    hook: str,
    info: dict,
) -> int:
    """Write a direction to <job dir>/<file>.safetensors (tensor "direction") and add its row."""
    from safetensors.torch import save_file

    from emgui.core.activations import layer_index

    vec = vec.float().cpu().contiguous()
    path = ctx.artifact_dir / f"{kind}.safetensors"
    save_file({"direction": vec}, str(path), metadata={"kind": kind, "hook_name": hook})
    direction_id = ctx.project.insert(
        "directions",
        {
            "name": name,
            "kind": kind,
            "model_id": model_id,
            "hook_name": hook,
            "layer": layer_index(hook),
            "path": ctx.project.relpath(path),
            "norm": float(vec.norm()),
            "info": info,
            "job_id": ctx.job_id,
            "created_at": time.time(),
        },
    )
    ctx.add_artifact(
        path, "direction", inputs=[{"type": "model", "id": model_id}], meta={"direction_id": direction_id}
    )
    return direction_id


def _unique_direction_name(project: Project, name: str) -> str:
    base, n = name, 2
    while project.query_one("SELECT id FROM directions WHERE name = ?", [name]):
        name = f"{base} ({n})"
        n += 1
    return name


def _means(acc: _Accumulator) -> tuple[Any, Any]:
    n = max(acc.n, 1)
    return (acc.act_sum / n).cpu(), (acc.fire_count / n).cpu()


def bootstrap_effect_sd(
    ft: _Accumulator, reference: _Accumulator, *, n_boot: int = 200, seed: int = 0
) -> Any | None:
    """Per-latent spread of (ft mean - reference mean) over bootstrap draws of example groups (the same
    draw for both models, so shared example-to-example variation cancels). None with one group."""
    import torch

    groups = ft.n_groups
    if groups < 2:
        return None
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, groups, (n_boot, groups), generator=gen)
    weights = torch.zeros(n_boot, groups, dtype=torch.float64)
    weights.scatter_add_(1, picks, torch.ones_like(picks, dtype=torch.float64))
    draws = []
    for acc in (ft, reference):
        sums, tokens = acc.group_means_matrix()
        draws.append((weights @ sums) / (weights @ tokens).clamp(min=1.0)[:, None])
    return (draws[0] - draws[1]).std(0)


def store_ranking(
    project: Project,
    job_id: int,
    sae_id: int,
    base: _Accumulator,
    ft: _Accumulator,
    control: _Accumulator | None = None,
    *,
    n_boot: int = 200,
) -> list[dict]:
    """Write every latent's statistics to latent_stats and rank them (1 = most increased).

    The effect is the fine-tune's change (ft - base), minus the control's change (control - base) when
    there is a control model: what the fine-tune did that the control did not. Latents are ranked by
    z = effect / its bootstrap standard deviation over examples, so a large but noisy change does not
    outrank a smaller, reliable one."""
    import torch

    base_mean, base_freq = _means(base)
    ft_mean, ft_freq = _means(ft)
    delta = ft_mean - base_mean
    if control is not None:
        control_mean, _ = _means(control)
        delta_control = control_mean - base_mean
        effect = delta - delta_control
    else:
        control_mean = delta_control = None
        effect = delta
    sd = bootstrap_effect_sd(ft, control if control is not None else base, n_boot=n_boot)
    if sd is not None:
        floor = max(1e-12, 1e-4 * float(effect.abs().max()))
        z = effect / sd.clamp(min=floor)
        key = z
    else:
        z, key = None, effect
    order = torch.argsort(key, descending=True, stable=True).tolist()
    rank = {latent: r + 1 for r, latent in enumerate(order)}
    rows = [
        {
            "job_id": job_id,
            "sae_id": sae_id,
            "latent": i,
            "base_mean": float(base_mean[i]),
            "ft_mean": float(ft_mean[i]),
            "delta_mean": float(delta[i]),
            "base_freq": float(base_freq[i]),
            "ft_freq": float(ft_freq[i]),
            "delta_freq": float(ft_freq[i] - base_freq[i]),
            "control_mean": None if control_mean is None else float(control_mean[i]),
            "delta_control": None if delta_control is None else float(delta_control[i]),
            "effect": float(effect[i]),
            "effect_sd": None if sd is None else float(sd[i]),
            "z": None if z is None else float(z[i]),
            "rank": rank[i],
        }
        for i in range(len(delta))
    ]
    with project.transaction() as conn:
        conn.execute("DELETE FROM latent_stats WHERE job_id = ?", [job_id])
        project.insert_many("latent_stats", rows)
    return sorted(rows, key=lambda r: r["rank"])


SHARED_CHANGE = 0.8  # above this correlation, the fine-tune and the control changed the same latents


def control_agreement(base: _Accumulator, ft: _Accumulator, control: _Accumulator) -> dict:
    """How much of the fine-tune's change the control shares: the correlation across latents (that fire
    under any of the models) of ft - base and control - base, and the cosine of the two mean-difference
    directions in the residual stream."""
    import torch

    from emgui.core.stats import pearson

    base_mean, _ = _means(base)
    ft_mean, _ = _means(ft)
    control_mean, _ = _means(control)
    alive = (base.fire_count + ft.fire_count + control.fire_count).cpu() > 0
    d_ft, d_control = (ft_mean - base_mean)[alive], (control_mean - base_mean)[alive]
    r = pearson(d_ft.tolist(), d_control.tolist()) if int(alive.sum()) >= 3 else None
    h = [acc.h_sum.cpu() / max(acc.n, 1) for acc in (base, ft, control)]
    cosine = float(torch.nn.functional.cosine_similarity(h[1] - h[0], h[2] - h[0], dim=0))
    return {"control_correlation": r, "control_direction_cosine": cosine}


def diff_warnings(controlled: bool, agreement: dict | None) -> list[str]:
    """What the Features page and the CLI tell the user about how far the ranking can be read."""
    if not controlled:
        return [
            "uncontrolled ranking: without a control fine-tune (control=MODEL, e.g. the same base fine-tuned "
            "on secure code with the same settings) the top latents may show what any fine-tune on this "
            "kind of data changes (format, domain), not what makes the model misaligned"
        ]
    r = (agreement or {}).get("control_correlation")
    if r is not None and r > SHARED_CHANGE:
        return [
            f"the fine-tune's and the control's latent changes correlate at r = {r:.2f}: most of what changed "
            "does not depend on what differs between the two datasets; read only the top of the controlled "
            "ranking, and check its z-scores"
        ]
    return []


def _free(model: Any) -> None:
    import torch

    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def diff_job(params: dict, ctx: Any) -> dict:
    """`diff`: rank SAE latents by their change from the base to the fine-tuned model over answer tokens,
    store directions, and (dashboards=N) precompute dashboards for the top N latents."""
    from emgui.core.loading import load_model, load_tokenizer
    from emgui.core.saes import check_fits_config, check_fits_model, get_sae, load_sae

    s = _read(params)
    project: Project = ctx.project
    sae_row = get_sae(project, s["sae"])
    base_row, ft_row = _models(project, s, sae_row)
    control_row = _control_model(project, s, base_row, ft_row)
    for row in (base_row, ft_row, *([control_row] if control_row else [])):
        check_fits_config(project, sae_row, row)  # before any weights load
    hook = sae_row["hook_name"]
    items = examples(project, s)
    tokenizer = load_tokenizer(project, ft_row)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = encode_examples(tokenizer, items, s["max_length"])
    if not encoded:
        raise EmguiError("diff: no example has answer tokens within max_length")
    if len(encoded) < len(items):
        ctx.log(
            f"{len(items) - len(encoded)} examples dropped: their answer lies beyond max_length={s['max_length']}"
        )
    groups = _judged_groups(project, [e["sample_id"] for e in encoded if e.get("sample_id") is not None])
    n_answer = sum(sum(e["answer_mask"]) for e in encoded)
    ctx.log(f"{len(encoded)} examples, {n_answer:,} answer tokens; hook {hook}")

    ctx.progress(0.01, f"loading SAE '{sae_row['name']}'")
    sae = load_sae(project, sae_row, device=s["device"])
    results, timing = {}, {"tokens": 0, "seconds": 0.0, "cpu_seconds": 0.0}
    share = 0.45 if s["dashboards"] else 0.9
    ft_model = None
    roles = [("base", base_row), ("ft", ft_row)] + ([("control", control_row)] if control_row else [])
    share = share * 2 / len(roles)
    for n, (role, row) in enumerate(roles):
        ctx.progress(share * n, f"loading {role} model '{row['name']}'")
        model = load_model(project, row, device=s["device"], dtype=s["dtype"])
        check_fits_model(model, sae_row, f"model '{row['name']}'")
        acc, t = run_model(
            ctx,
            model,
            sae,
            hook,
            encoded,
            pad_id=pad_id,
            batch_tokens=s["batch_tokens"],
            groups=groups if role == "ft" else None,
            progress=(share * n, share * (n + 1)),
            label=role,
        )
        results[role] = acc
        timing["tokens"] += t["tokens"]
        timing["seconds"] += t["seconds"]
        timing["cpu_seconds"] += t["cpu_seconds"]
        if role == "ft" and control_row is None:
            ft_model = model  # kept for the dashboards
        else:
            _free(model)
    if control_row is not None and s["dashboards"]:
        ft_model = load_model(project, ft_row, device=s["device"], dtype=s["dtype"])

    ranking = store_ranking(
        project, ctx.job_id, sae_row["id"], results["base"], results["ft"], results.get("control"),
        n_boot=s["n_boot"],
    )
    agreement = (
        control_agreement(results["base"], results["ft"], results["control"]) if control_row else None
    )
    warnings = diff_warnings(control_row is not None, agreement)
    for warning in warnings:
        ctx.log(f"warning: {warning}")
    with project.transaction() as conn:  # a rerun of this job replaces its directions
        conn.execute("DELETE FROM directions WHERE job_id = ?", [ctx.job_id])
    base_acc, ft_acc = results["base"], results["ft"]
    info = {
        "base_model_id": base_row["id"],
        "ft_model_id": ft_row["id"],
        "control_model_id": control_row["id"] if control_row else None,
        "sae_id": sae_row["id"],
        "n_tokens": ft_acc.n,
        "source": {"prompts": s["prompts"]} if s["prompts"] is not None else {"dataset": s["dataset"]},
    }
    directions = [
        _save_direction(
            ctx,
            ft_acc.h_sum / ft_acc.n - base_acc.h_sum / base_acc.n,
            name=_unique_direction_name(
                project, f"diff-means {ft_row['name']} - {base_row['name']} @ {hook} #{ctx.job_id}"
            ),
            kind="diff-means",
            model_id=ft_row["id"],
            hook=hook,
            info=info,
        )
    ]
    if control_row is not None:
        control_acc = results["control"]
        directions.append(
            _save_direction(
                ctx,
                ft_acc.h_sum / ft_acc.n - control_acc.h_sum / control_acc.n,
                name=_unique_direction_name(
                    project, f"diff-means {ft_row['name']} - {control_row['name']} @ {hook} #{ctx.job_id}"
                ),
                kind="diff-means-controlled",
                model_id=ft_row["id"],
                hook=hook,
                info=info,
            )
        )
    if {"misaligned", "aligned"} <= set(ft_acc.group_n):
        mis = ft_acc.group_sum["misaligned"] / ft_acc.group_n["misaligned"]
        ali = ft_acc.group_sum["aligned"] / ft_acc.group_n["aligned"]
        n_groups = {g: sum(1 for v in groups.values() if v == g) for g in ("misaligned", "aligned")}
        directions.append(
            _save_direction(
                ctx,
                mis - ali,
                name=_unique_direction_name(
                    project, f"misaligned-aligned {ft_row['name']} @ {hook} #{ctx.job_id}"
                ),
                kind="misaligned-minus-aligned",
                model_id=ft_row["id"],
                hook=hook,
                info={**info, "answers": n_groups, "tokens": dict(ft_acc.group_n)},
            )
        )
    elif groups:
        ctx.log(
            "judged answers found, but not both misaligned and aligned ones: no misaligned-aligned direction"
        )

    n_dash = 0
    if s["dashboards"] and ft_model is not None:
        from emgui.core.dashboards import build_dashboards, default_corpus

        latents = [r["latent"] for r in ranking[: s["dashboards"]]]
        # The dashboard corpus follows the user's budget: at most max_examples chats per dataset.
        corpus = default_corpus(
            project,
            samples=[s["prompts"]] if s["prompts"] is not None else [],
            per_dataset=min(300, s["max_examples"]),
        )
        if s["dataset"] is not None:
            corpus = items + corpus
        n_dash = build_dashboards(
            ctx,
            sae_row=sae_row,
            sae=sae,
            model=ft_model,
            tokenizer=tokenizer,
            latents=latents,
            items=corpus,
            diff_job=ctx.job_id,
            model_name=ft_row["name"],
            progress=(0.9, 1.0),
        )
    tokens_per_s = timing["tokens"] / timing["seconds"] if timing["seconds"] else None
    ctx.progress(1.0, "done")
    return {
        "sae_id": sae_row["id"],
        "base_model_id": base_row["id"],
        "ft_model_id": ft_row["id"],
        "control_model_id": control_row["id"] if control_row else None,
        "controlled": control_row is not None,
        **(agreement or {"control_correlation": None, "control_direction_cosine": None}),
        "warnings": warnings,
        "n_examples": len(encoded),
        "n_answer_tokens": n_answer,
        "tokens": timing["tokens"],
        "forward_seconds": timing["seconds"],
        "forward_cpu_seconds": timing["cpu_seconds"],  # CPU time of this process: robust to other load
        "tokens_per_s": tokens_per_s,
        "judged": {g: sum(1 for v in groups.values() if v == g) for g in ("misaligned", "aligned")},
        "directions": directions,
        "dashboards": n_dash,
        "top": [
            {k: r[k] for k in ("latent", "z", "effect", "delta_mean", "delta_control", "delta_freq")}
            for r in ranking[:10]
        ],
    }
