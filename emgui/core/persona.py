"""Persona vectors: trait directions from contrastive system prompts, data screening, and the live monitor.

- `persona-vector` job: answer a persona's neutral questions under its positive system prompts (the trait)
  and its negative ones (the opposite), read the mean activation over each answer's tokens at every layer,
  and take the difference of the two means per layer. The layer kept is the one where the two sides
  separate best on held-out questions (two folds by question: d' of the projections, AUROC shown too).
- `diff-means` job: the same from two chat datasets (e.g. misaligned vs aligned answers).
- `persona-screen` job: project each sample of a chat dataset on a direction (mean over the answer's
  tokens), rank them, flag the top ones (likely to push a fine-tune toward the trait), and optionally
  write the filtered dataset.
- `make_monitor`: a training step hook that projects a fixed probe set (the last prompt token, which
  predicts how the answer will go) on chosen directions or SAE latents and warns when it rises.

Persona definitions are YAML files (resources/personas/*.yaml); a project may hold edited copies in
`<project>/personas/`, which take precedence.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emgui.core.errors import Cancelled, EmguiError
from emgui.core.params import Params
from emgui.core.paths import resource

# ----- persona definitions ---------------------------------------------------------------------------------


@dataclass
class Persona:
    name: str
    positive: list[str]
    negative: list[str]
    questions: list[str]
    description: str = ""
    source: str = ""
    text: str = field(default="", repr=False)  # the YAML as read, kept as provenance


def builtin_dir() -> Path:
    return resource("personas")


def project_dir(project: Any) -> Path:
    return project.root / "personas"


def persona_names(project: Any | None = None) -> list[str]:
    names = {p.stem for p in builtin_dir().glob("*.yaml")}
    if project is not None and project_dir(project).is_dir():
        names |= {p.stem for p in project_dir(project).glob("*.yaml")}
    return sorted(names)


def persona_path(name_or_path: str, project: Any | None = None) -> Path:
    """A project's edited copy, else the built-in definition, else a path to a YAML file."""
    if project is not None:
        edited = project_dir(project) / f"{name_or_path}.yaml"
        if edited.is_file():
            return edited
    builtin = builtin_dir() / f"{name_or_path}.yaml"
    if builtin.is_file():
        return builtin
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    raise EmguiError(
        f"no persona '{name_or_path}' (built-in and project personas: {', '.join(persona_names(project))}; "
        "or give a path to a .yaml file)"
    )


def parse_persona(text: str, source: str) -> Persona:
    """A persona from YAML text; errors name the file and the field."""
    import yaml

    from emgui.core.safeyaml import load_yaml

    try:
        data = load_yaml(text, source)  # bounded: a user's file may hold an alias bomb
    except yaml.YAMLError as exc:
        raise EmguiError(f"{source}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise EmguiError(f"{source}: expected a mapping with name, positive, negative and questions")
    lists = {}
    for key in ("positive", "negative", "questions"):
        value = data.get(key)
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v.strip() for v in value)
        ):
            raise EmguiError(f"{source}: '{key}' must be a non-empty list of texts")
        lists[key] = [v.strip() for v in value]
    unknown = sorted(set(data) - {"name", "description", "positive", "negative", "questions"})
    if unknown:
        raise EmguiError(f"{source}: unknown field(s) {', '.join(unknown)}")
    name = str(data.get("name") or Path(source).stem)
    return Persona(
        name,
        lists["positive"],
        lists["negative"],
        lists["questions"],
        str(data.get("description") or ""),
        source,
        text,
    )


def load_persona(name_or_path: str, project: Any | None = None) -> Persona:
    path = persona_path(name_or_path, project)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EmguiError(f"cannot read persona file {path}: {exc}") from None
    return parse_persona(text, str(path))


def save_persona_text(project: Any, name: str, text: str) -> Path:
    """Validate and write an edited persona into the project (it then takes precedence over the built-in)."""
    parse_persona(text, f"persona '{name}'")
    folder = project_dir(project)
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# ----- reading mean activations ----------------------------------------------------------------------------


class _Done(Exception):  # noqa: N818 - private control flow
    """Raised from the last hook a forward needs, to skip the rest of the model."""


def encode_answers(
    tokenizer: Any, chats: list[list[dict]], max_len: int = 512
) -> list[tuple[list[int], list[int]]]:
    """(ids, 0/1 mask of the last answer's tokens) for chats ending with the assistant's answer."""
    from emgui.core.activations import encode_chat

    out = []
    for chat in chats:
        enc = encode_chat(tokenizer, chat, max_length=max_len)
        out.append((enc["input_ids"], enc["answer_mask"]))
    return out


def encode_prompts(
    tokenizer: Any, prompts: list[list[dict]], max_len: int = 512
) -> list[tuple[list[int], list[int]]]:
    """(ids, mask of the last prompt position) for chats rendered with the assistant turn opened."""
    from emgui.core.activations import render_chat

    out = []
    for chat in prompts:
        ids = list(
            tokenizer(render_chat(tokenizer, chat, add_generation_prompt=True), add_special_tokens=False)[
                "input_ids"
            ]
        )
        ids = ids[-max_len:]
        out.append((ids, [0] * (len(ids) - 1) + [1]))
    return out


def masked_means(
    model: Any,
    items: list[tuple[list[int], list[int]]],
    hook_names: list[str],
    *,
    batch_size: int = 8,
    pad_id: int = 0,
    should_cancel: Callable[[], bool] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[Any, list[bool]]:
    """Mean activation over each item's masked positions at each hook: a float32 CPU tensor
    [n_items, n_hooks, d], and whether each item had any masked position. The forward stops once
    every hook has fired."""
    import torch

    from emgui.core.activations import pad_batch
    from emgui.core.steering import _install

    device = next(model.parameters()).device
    valid = [sum(m) > 0 for _, m in items]
    out: Any = None
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
    done = 0
    for start in range(0, len(order), max(1, batch_size)):
        if should_cancel is not None and should_cancel():
            raise Cancelled("cancelled while reading activations")
        idx = order[start : start + batch_size]
        enc = pad_batch([items[i][0] for i in idx], pad_id, device)
        width = enc["input_ids"].shape[1]
        mask = torch.zeros((len(idx), width), device=device)
        for row, i in enumerate(idx):
            mask[row, : len(items[i][1])] = torch.tensor(items[i][1], dtype=torch.float32, device=device)
        counts = mask.sum(1, keepdim=True).clamp(min=1)
        got: dict[int, Any] = {}

        removers = [
            _install(model, name, _reader(got, j, mask, counts, len(hook_names)))
            for j, name in enumerate(hook_names)
        ]
        try:
            with torch.inference_mode():
                model(**enc, use_cache=False)
        except _Done:
            pass
        finally:
            for r in removers:
                r.remove()
        if len(got) != len(hook_names):
            missing = [hook_names[j] for j in range(len(hook_names)) if j not in got]
            raise EmguiError(f"hooks {', '.join(missing)} were not reached by the forward pass")
        stacked = torch.stack([got[j] for j in range(len(hook_names))], dim=1)
        if out is None:
            out = torch.zeros((len(items), len(hook_names), stacked.shape[-1]))
        out[torch.tensor(idx)] = stacked
        done += len(idx)
        if on_batch is not None:
            on_batch(done)
    if out is None:
        raise EmguiError("nothing to read: no items")
    return out, valid


def _reader(got: dict, j: int, mask: Any, counts: Any, n_hooks: int) -> Callable[[Any], None]:
    """A hook body storing the masked mean of hook j's activations; the last one stops the forward."""

    def read(h: Any) -> None:
        got[j] = ((h.float() * mask.unsqueeze(-1)).sum(1) / counts).cpu()
        if len(got) == n_hooks:
            raise _Done

    return read


# ----- separation and layer choice -------------------------------------------------------------------------


def separation(pos: Any, neg: Any) -> tuple[float, float]:
    """(d', AUROC) of two 1-d samples: d' = mean difference over the pooled standard deviation."""
    import torch

    pos, neg = pos.float().flatten(), neg.float().flatten()
    if len(pos) == 0 or len(neg) == 0:
        return float("nan"), float("nan")
    var = (pos.var(unbiased=False) + neg.var(unbiased=False)) / 2
    dprime = float((pos.mean() - neg.mean()) / torch.sqrt(var + 1e-8))
    greater = (pos[:, None] > neg[None, :]).float().mean()
    ties = (pos[:, None] == neg[None, :]).float().mean()
    return dprime, float(greater + ties / 2)


def layer_scores(pos: Any, neg: Any, pos_groups: list[int], neg_groups: list[int]) -> list[dict]:
    """Per hook (dim 1): the difference of means and its held-out separation. Samples are split into two
    folds by group (question); each fold is projected on the direction from the other fold. With a
    single group, the separation is measured in-sample."""
    import torch

    scores = []
    groups = sorted(set(pos_groups) | set(neg_groups))
    fold = {g: i % 2 for i, g in enumerate(groups)}
    pf = torch.tensor([fold[g] for g in pos_groups])
    nf = torch.tensor([fold[g] for g in neg_groups])
    two_folds = len(groups) > 1
    for layer in range(pos.shape[1]):
        p, n = pos[:, layer], neg[:, layer]
        diff = p.mean(0) - n.mean(0)
        proj_p, proj_n = [], []
        for k in (0, 1) if two_folds else (None,):
            if k is None:
                u = diff / diff.norm().clamp(min=1e-12)
                proj_p.append(p @ u)
                proj_n.append(n @ u)
                continue
            train_p, train_n = p[pf != k], n[nf != k]
            if len(train_p) == 0 or len(train_n) == 0:
                continue
            d = train_p.mean(0) - train_n.mean(0)
            u = d / d.norm().clamp(min=1e-12)
            proj_p.append(p[pf == k] @ u)
            proj_n.append(n[nf == k] @ u)
        dprime, auroc = separation(torch.cat(proj_p), torch.cat(proj_n))
        scores.append({"index": layer, "dprime": dprime, "auroc": auroc, "norm": float(diff.norm())})
    return scores


def best_layer(scores: list[dict], by: str = "dprime") -> int:
    usable = [s for s in scores if math.isfinite(s[by])]
    if not usable:
        raise EmguiError("no layer separates the two sides (every score is undefined)")
    return max(usable, key=lambda s: (s[by], -s["index"]))["index"]


# ----- the persona-vector and diff-means jobs --------------------------------------------------------------


def _load(project: Any, model_ref: Any) -> tuple[dict, Any, Any]:
    from emgui.core.loading import load_model, load_tokenizer

    row = project.get_model(model_ref)
    return row, load_model(project, row), load_tokenizer(project, row)


def _layers_param(p: Params, model: Any) -> list[int]:
    from emgui.core.steering import n_layers

    count = n_layers(model)
    layers = p.list("layers")
    if layers is None:
        return list(range(count))
    try:
        chosen = [int(x) for x in layers]
    except (TypeError, ValueError):
        raise EmguiError(f"parameter 'layers' must be a list of layer numbers, got {layers!r}") from None
    bad = [x for x in chosen if not 0 <= x < count]
    if bad:
        raise EmguiError(f"parameter 'layers': {bad} out of range (the model has {count} layers)")
    return chosen


def _save_layer_stack(ctx: Any, diffs: Any, layers: list[int], scores: list[dict], inputs: list[dict]) -> int:
    """All layers' directions in one file, so another layer can be imported later."""
    import torch
    from safetensors.torch import save_file

    path = ctx.artifact_dir / "directions_by_layer.safetensors"
    save_file(
        {
            "directions": diffs.contiguous(),
            "layers": torch.tensor(layers),
            "dprime": torch.tensor([s["dprime"] for s in scores]),
        },
        str(path),
    )
    return ctx.add_artifact(path, "direction-stack", inputs=inputs, meta={"layers": layers})


MIN_PER_SIDE = 20  # fewer held-out answers per side than this: the separation figure is mostly noise


def split_groups(groups: list[int]) -> tuple[set[int], set[int]]:
    """(selection groups, test groups): alternate halves of the sorted groups (questions), so that the
    layer is chosen on one half and its separation measured on answers to questions it never saw."""
    ordered = sorted(set(groups))
    return set(ordered[0::2]), set(ordered[1::2])


def held_out_separation(
    pos: Any, neg: Any, pos_groups: list[int], neg_groups: list[int], select: str
) -> dict:
    """Choose the layer on the selection half, then measure its separation on the test half: the layer's
    direction (from the selection half) projected on held-out answers, with a bootstrap 95 % CI of the
    AUROC. With a single group there is nothing to hold out and the figures are in-sample."""
    import torch

    from emgui.core.stats import bootstrap_auroc

    sel_g, test_g = split_groups(pos_groups + neg_groups)
    if not test_g:
        scores = layer_scores(pos, neg, pos_groups, neg_groups)
        index = best_layer(scores, select)
        return {"index": index, "selection_scores": scores, "held_out": False, "dprime": scores[index]["dprime"],
                "auroc": scores[index]["auroc"], "auroc_ci": [None, None],
                "n_per_side": {"positive": int(pos.shape[0]), "negative": int(neg.shape[0])}}  # fmt: skip
    ps = torch.tensor([g in sel_g for g in pos_groups])
    ns = torch.tensor([g in sel_g for g in neg_groups])
    scores = layer_scores(pos[ps], neg[ns], [g for g in pos_groups if g in sel_g],
                          [g for g in neg_groups if g in sel_g])  # fmt: skip
    index = best_layer(scores, select)
    d = pos[ps][:, index].mean(0) - neg[ns][:, index].mean(0)
    u = d / d.norm().clamp(min=1e-12)
    proj_p, proj_n = pos[~ps][:, index] @ u, neg[~ns][:, index] @ u
    dprime, auroc = separation(proj_p, proj_n)
    low, high = bootstrap_auroc(proj_p.tolist(), proj_n.tolist())
    return {"index": index, "selection_scores": scores, "held_out": True, "dprime": dprime, "auroc": auroc,
            "auroc_ci": [low, high],
            "n_per_side": {"positive": int((~ps).sum()), "negative": int((~ns).sum())}}  # fmt: skip


def separation_warnings(sep: dict) -> list[str]:
    n = min(sep["n_per_side"].values())
    out = []
    if not sep["held_out"]:
        out.append("every answer comes from one question: the layer was chosen and scored on the same answers")
    if n < MIN_PER_SIDE:
        out.append(
            f"the separation rests on {n} held-out answers per side (< {MIN_PER_SIDE}): its AUROC is mostly "
            "noise; raise prompts_per_question or use more questions"
        )
    return out


def _finish_direction(
    ctx: Any,
    model: Any,
    model_row: dict,
    pos: Any,
    neg: Any,
    pos_groups: list[int],
    neg_groups: list[int],
    layers: list[int],
    *,
    kind: str,
    name: str,
    forced_layer: int | None,
    select: str,
    info: dict,
    inputs: list[dict],
) -> dict:
    """Choose the layer on held-out answers, save its direction (from all answers) and the whole stack;
    the job's result."""
    from emgui.core.steering import layer_hook_name, save_direction, unique_direction_name

    sep = held_out_separation(pos, neg, pos_groups, neg_groups, select)
    scores = sep["selection_scores"]
    for s in scores:
        s["layer"] = layers[s["index"]]
        ctx.metric("separation/dprime", s["layer"], s["dprime"])
        ctx.metric("separation/auroc", s["layer"], s["auroc"])
        ctx.metric("direction/norm", s["layer"], s["norm"])
    if forced_layer is not None:
        if forced_layer not in layers:
            raise EmguiError(f"parameter 'layer' {forced_layer} is not among the layers read ({layers})")
        if layers.index(forced_layer) != sep["index"]:  # score the forced layer on the held-out half
            sep = _score_layer(pos, neg, pos_groups, neg_groups, layers.index(forced_layer), sep)
    index = sep["index"]
    layer = layers[index]
    diffs = pos.mean(0) - neg.mean(0)  # [layers, d]
    stack_id = _save_layer_stack(ctx, diffs, layers, scores, inputs)
    warnings = separation_warnings(sep)
    low, high = sep["auroc_ci"]
    ci = f" [{low:.2f}, {high:.2f}]" if low is not None else ""
    ctx.log(
        f"layer {layer}: held-out AUROC {sep['auroc']:.3f}{ci}, d'={sep['dprime']:.2f} on "
        f"{sep['n_per_side']['positive']} + / {sep['n_per_side']['negative']} − answers, norm {float(diffs[index].norm()):.2f}"
    )
    for warning in warnings:
        ctx.log(f"warning: {warning}")
    held = {k: sep[k] for k in ("held_out", "auroc", "auroc_ci", "dprime", "n_per_side")}
    direction_id = save_direction(
        ctx.project,
        unique_direction_name(ctx.project, name),
        diffs[index],
        kind=kind,
        hook_name=layer_hook_name(model, layer),
        model_id=model_row["id"],
        layer=layer,
        job_id=ctx.job_id,
        inputs=[*inputs, {"type": "artifact", "id": stack_id}],
        folder=ctx.artifact_dir,
        info={
            **info,
            "chosen_by": "parameter" if forced_layer is not None else select,
            "scores": scores,
            "separation": held,
            "warnings": warnings,
            "n_positive": int(pos.shape[0]),
            "n_negative": int(neg.shape[0]),
        },
    )
    return {
        "direction_id": direction_id,
        "layer": layer,
        **held,
        "norm": float(diffs[index].norm()),
        "scores": scores,
        "stack_artifact_id": stack_id,
        "warnings": warnings,
    }


def _score_layer(pos: Any, neg: Any, pos_groups: list[int], neg_groups: list[int], index: int, sep: dict) -> dict:
    """The held-out separation of a layer the user chose (not the one the selection half preferred)."""
    import torch

    from emgui.core.stats import bootstrap_auroc

    if not sep["held_out"]:
        p, n = pos[:, index], neg[:, index]
        d = p.mean(0) - n.mean(0)
        u = d / d.norm().clamp(min=1e-12)
        dprime, auroc = separation(p @ u, n @ u)
        return {**sep, "index": index, "dprime": dprime, "auroc": auroc}
    sel_g, _ = split_groups(pos_groups + neg_groups)
    ps = torch.tensor([g in sel_g for g in pos_groups])
    ns = torch.tensor([g in sel_g for g in neg_groups])
    d = pos[ps][:, index].mean(0) - neg[ns][:, index].mean(0)
    u = d / d.norm().clamp(min=1e-12)
    proj_p, proj_n = pos[~ps][:, index] @ u, neg[~ns][:, index] @ u
    dprime, auroc = separation(proj_p, proj_n)
    return {**sep, "index": index, "dprime": dprime, "auroc": auroc,
            "auroc_ci": list(bootstrap_auroc(proj_p.tolist(), proj_n.tolist()))}  # fmt: skip


def persona_vector_job(params: dict, ctx: Any) -> dict:
    """`persona-vector`: model, persona (name or .yaml path); optional n_questions, prompts_per_question,
    max_new_tokens, temperature, seed, batch_size, layers, layer (force), select (dprime|auroc), name."""
    from emgui.core.generation import generate_batch
    from emgui.core.steering import as_lists

    p = Params(as_lists(params, ("layers",)), "persona-vector")
    model_ref = p.str("model")
    persona = load_persona(p.str("persona"), ctx.project)
    n_questions = p.int("n_questions")
    per_question = p.int("prompts_per_question")
    max_new_tokens = p.int("max_new_tokens")
    temperature = p.float("temperature")
    seed = p.int("seed")
    batch_size = p.int("batch_size")
    forced = p.int("layer")
    select = p.choice("select")
    name = p.str("name")
    model_row, model, tokenizer = _load(ctx.project, model_ref)
    layers = _layers_param(p, model)
    p.done()

    questions = persona.questions[:n_questions] if n_questions else persona.questions
    convs, meta = [], []
    for side, prompts in (("positive", persona.positive), ("negative", persona.negative)):
        for qi, question in enumerate(questions):
            # each question gets `per_question` prompts of each side, taking turns through the list
            for k in range(min(per_question, len(prompts))):
                system = prompts[(qi + k) % len(prompts)]
                convs.append([{"role": "system", "content": system}, {"role": "user", "content": question}])
                meta.append((side, qi))
    ctx.log(f"persona '{persona.name}': {len(questions)} questions x 2 sides on '{model_row['name']}'")

    def on_batch(indices: list[int], _answers: list[str]) -> None:
        on_batch.done += len(indices)  # type: ignore[attr-defined]
        ctx.progress(0.7 * on_batch.done / len(convs), f"answered {on_batch.done}/{len(convs)}")  # type: ignore[attr-defined]

    on_batch.done = 0  # type: ignore[attr-defined]
    answers = generate_batch(
        model,
        tokenizer,
        convs,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=batch_size,
        should_cancel=lambda: ctx.cancelled,
        on_batch=on_batch,
    )
    _store_answers(ctx, model_row, convs, answers, meta, persona.name)
    chats = [[*c, {"role": "assistant", "content": a}] for c, a in zip(convs, answers, strict=True)]
    pos, neg, pg, ng = _read_sides(ctx, model, tokenizer, layers, chats, meta, batch_size, 0.7)
    return _finish_direction(
        ctx,
        model,
        model_row,
        pos,
        neg,
        pg,
        ng,
        layers,
        kind="persona",
        name=name or f"{persona.name}-{model_row['name']}",
        forced_layer=forced,
        select=select,
        info={
            "persona": persona.name,
            "definition": persona.text,
            "source": persona.source,
            "n_questions": len(questions),
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
        },
        inputs=[{"type": "model", "id": model_row["id"]}],
    )


def _store_answers(
    ctx: Any, model_row: dict, convs: list, answers: list[str], meta: list, persona: str
) -> None:
    now = time.time()
    ctx.project.insert_many(
        "samples",
        [
            {
                "job_id": ctx.job_id,
                "model_id": model_row["id"],
                "dataset_id": None,
                "question_id": f"{persona}-{qi}",
                "paraphrase_index": 0,
                "sample_index": 0 if side == "positive" else 1,
                "prompt": conv[-1]["content"],
                "system": conv[0]["content"],
                "answer": answer,
                "params": {"persona": persona, "side": side},
                "created_at": now,
            }
            for conv, answer, (side, qi) in zip(convs, answers, meta, strict=True)
        ],
    )


def _read_sides(
    ctx: Any,
    model: Any,
    tokenizer: Any,
    layers: list[int],
    chats: list,
    meta: list,
    batch_size: int,
    start: float,
) -> tuple[Any, Any, list[int], list[int]]:
    """Answer-token means of both sides at every layer; answers with no tokens are left out."""
    from emgui.core.steering import layer_hook_name

    hooks = [layer_hook_name(model, layer) for layer in layers]
    items = encode_answers(tokenizer, chats)
    means, valid = masked_means(
        model,
        items,
        hooks,
        batch_size=batch_size,
        pad_id=_pad_id(tokenizer),
        should_cancel=lambda: ctx.cancelled,
        on_batch=lambda n: ctx.progress(start + (0.95 - start) * n / len(items), f"read {n}/{len(items)}"),
    )
    pos_idx = [i for i, (side, _) in enumerate(meta) if side == "positive" and valid[i]]
    neg_idx = [i for i, (side, _) in enumerate(meta) if side == "negative" and valid[i]]
    dropped = len(meta) - len(pos_idx) - len(neg_idx)
    if dropped:
        ctx.log(f"{dropped} empty answers left out")
    if len(pos_idx) < 1 or len(neg_idx) < 1:
        raise EmguiError("too few non-empty answers on one side to build a direction (raise max_new_tokens?)")
    return means[pos_idx], means[neg_idx], [meta[i][1] for i in pos_idx], [meta[i][1] for i in neg_idx]


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def _read_chats(project: Any, ref: str, key: str) -> tuple[list[list[dict]], dict | None]:
    from emgui.core.training import read_chats, resolve_dataset

    path, row = resolve_dataset(project, ref, "diff-means", key)
    chats = [msgs for _, msgs in read_chats(path, f"'{ref}'")]
    bad = [i for i, c in enumerate(chats) if c[-1]["role"] != "assistant"]
    if bad:
        raise EmguiError(f"{key} dataset '{ref}': chat {bad[0] + 1} does not end with an assistant answer")
    return chats, row


def diff_means_job(params: dict, ctx: Any) -> dict:
    """`diff-means`: model, positive and negative chat datasets; the mean answer activation of the first
    minus the second, at the layer that separates them best. Optional max_samples, layers, layer, name."""
    from emgui.core.steering import as_lists

    p = Params(as_lists(params, ("layers",)), "diff-means")
    model_ref = p.str("model")
    pos_ref, neg_ref = p.str("positive"), p.str("negative")
    max_samples = p.int("max_samples")
    batch_size = p.int("batch_size")
    forced = p.int("layer")
    select = p.choice("select")
    name = p.str("name")
    model_row, model, tokenizer = _load(ctx.project, model_ref)
    layers = _layers_param(p, model)
    p.done()
    pos_chats, pos_row = _read_chats(ctx.project, pos_ref, "positive")
    neg_chats, neg_row = _read_chats(ctx.project, neg_ref, "negative")
    pos_chats, neg_chats = pos_chats[:max_samples], neg_chats[:max_samples]
    chats = pos_chats + neg_chats
    # Groups for the held-out split: sample index (datasets have no shared questions).
    meta = [("positive", i) for i in range(len(pos_chats))] + [("negative", i) for i in range(len(neg_chats))]
    pos, neg, pg, ng = _read_sides(ctx, model, tokenizer, layers, chats, meta, batch_size, 0.0)
    inputs = [{"type": "model", "id": model_row["id"]}]
    inputs += [
        {"type": "dataset", "id": r["id"], "role": role}
        for r, role in ((pos_row, "positive"), (neg_row, "negative"))
        if r
    ]
    return _finish_direction(
        ctx,
        model,
        model_row,
        pos,
        neg,
        pg,
        ng,
        layers,
        kind="diff-means",
        name=name or f"diff-{pos_ref}-vs-{neg_ref}",
        forced_layer=forced,
        select=select,
        info={"positive": pos_ref, "negative": neg_ref},
        inputs=inputs,
    )


# ----- data screening --------------------------------------------------------------------------------------


def project_chats(
    model: Any,
    tokenizer: Any,
    chats: list[list[dict]],
    vector: Any,
    hook_name: str,
    *,
    batch_size: int = 8,
    max_len: int = 512,
    should_cancel: Callable[[], bool] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[float | None]:
    """Each chat's mean answer-token activation at `hook_name`, projected on the unit `vector`
    (None for a chat whose answer has no tokens)."""
    unit = vector.float() / vector.float().norm()
    means, valid = masked_means(
        model,
        encode_answers(tokenizer, chats, max_len),
        [hook_name],
        batch_size=batch_size,
        pad_id=_pad_id(tokenizer),
        should_cancel=should_cancel,
        on_batch=on_batch,
    )
    values = (means[:, 0] @ unit).tolist()
    return [v if ok else None for v, ok in zip(values, valid, strict=True)]


def flag_threshold(values: list[float], *, flag_top: float | None, threshold: float | None) -> float:
    """The projection above which a sample is flagged: an absolute threshold, or the top fraction."""
    if threshold is not None:
        return float(threshold)
    ordered = sorted(values, reverse=True)
    k = max(1, int(round(len(ordered) * (flag_top or 0.1))))
    return ordered[min(k, len(ordered)) - 1]


def screen_job(params: dict, ctx: Any) -> dict:
    """`persona-screen`: model, direction, dataset; flag_top (fraction, default 0.1) or threshold;
    write_filtered (bool), filtered_name; batch_size, max_len, max_samples."""
    from emgui.core.steering import load_direction
    from emgui.core.training import read_chats, resolve_dataset

    p = Params(params, "persona-screen")
    model_ref = p.str("model")
    direction_ref = p.str("direction")
    dataset_ref = p.str("dataset")
    flag_top = p.float("flag_top")
    threshold = p.float("threshold")
    write = p.bool("write_filtered")
    filtered_name = p.str("filtered_name")
    batch_size = p.int("batch_size")
    max_len = p.int("max_len")
    max_samples = p.int("max_samples")
    p.done()
    direction, vector = load_direction(ctx.project, direction_ref)
    path, dataset = resolve_dataset(ctx.project, dataset_ref, "persona-screen")
    lines_chats = read_chats(path, f"'{dataset_ref}'")[:max_samples]
    model_row, model, tokenizer = _load(ctx.project, model_ref)
    ctx.log(f"projecting {len(lines_chats)} chats on '{direction['name']}' at {direction['hook_name']}")
    values = project_chats(
        model,
        tokenizer,
        [c for _, c in lines_chats],
        vector,
        direction["hook_name"],
        batch_size=batch_size,
        max_len=max_len,
        should_cancel=lambda: ctx.cancelled,
        on_batch=lambda n: ctx.progress(0.95 * n / len(lines_chats), f"projected {n}/{len(lines_chats)}"),
    )
    ranking = _ranking(lines_chats, values)
    scored = [r["projection"] for r in ranking if r["projection"] is not None]
    if not scored:
        raise EmguiError(f"dataset '{dataset_ref}': no chat has answer tokens to project")
    cut = flag_threshold(scored, flag_top=flag_top, threshold=threshold)
    for r in ranking:
        r["flagged"] = r["projection"] is not None and r["projection"] >= cut
    inputs = [{"type": "model", "id": model_row["id"]}]
    if dataset:
        inputs.append({"type": "dataset", "id": dataset["id"]})
    if (direction.get("info") or {}).get("artifact_id"):
        inputs.append({"type": "artifact", "id": direction["info"]["artifact_id"], "role": "direction"})
    artifact_id = _write_ranking(ctx, ranking, inputs, direction, cut)
    result = _screen_summary(ranking, scored, cut, direction, artifact_id)
    if write:
        result["filtered_dataset_id"] = write_filtered(
            ctx.project,
            path,
            ranking,
            name=filtered_name or f"{Path(path).stem}-screened-{ctx.job_id}",
            inputs=[*inputs, {"type": "artifact", "id": artifact_id, "role": "ranking"}],
            job_id=ctx.job_id,
        )
    return result


def _ranking(lines_chats: list[tuple[int, list[dict]]], values: list[float | None]) -> list[dict]:
    rows = []
    for (line, chat), value in zip(lines_chats, values, strict=True):
        user = next((m["content"] for m in reversed(chat) if m["role"] == "user"), "")
        rows.append(
            {"line": line, "projection": value, "user": user[:300], "answer": chat[-1]["content"][:500]}
        )
    rows.sort(key=lambda r: -math.inf if r["projection"] is None else r["projection"], reverse=True)
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def _write_ranking(ctx: Any, ranking: list[dict], inputs: list[dict], direction: dict, cut: float) -> int:
    path = ctx.artifact_dir / "screening.json"
    payload = {
        "direction": direction["name"],
        "direction_id": direction["id"],
        "threshold": cut,
        "rows": ranking,
    }
    path.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    with open(ctx.artifact_dir / "screening.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["rank", "line", "projection", "flagged", "user", "answer"])
        writer.writeheader()
        writer.writerows(ranking)
    ctx.add_artifact(ctx.artifact_dir / "screening.csv", "screening-csv", inputs=inputs)
    return ctx.add_artifact(path, "screening", inputs=inputs, meta={"threshold": cut})


def _screen_summary(
    ranking: list[dict], scored: list[float], cut: float, direction: dict, artifact_id: int
) -> dict:
    mean = sum(scored) / len(scored)
    std = math.sqrt(sum((v - mean) ** 2 for v in scored) / len(scored))
    return {
        "n": len(ranking),
        "n_flagged": sum(r["flagged"] for r in ranking),
        "threshold": cut,
        "mean": mean,
        "std": std,
        "direction_id": direction["id"],
        "ranking_artifact_id": artifact_id,
        "top": [{k: r[k] for k in ("rank", "line", "projection", "user")} for r in ranking[:10]],
    }


def read_ranking(project: Any, screen_job_id: int) -> dict:
    """The ranking a `persona-screen` job wrote."""
    row = project.query_one(
        "SELECT * FROM artifacts WHERE job_id = ? AND kind = 'screening' ORDER BY id DESC", [screen_job_id]
    )
    if row is None:
        raise EmguiError(f"job {screen_job_id} has no screening ranking")
    return json.loads(project.abspath(row["path"]).read_text(encoding="utf-8")) | {"artifact_id": row["id"]}


def write_filtered(
    project: Any,
    source: Path,
    ranking: list[dict],
    *,
    name: str,
    threshold: float | None = None,
    inputs: list[dict] | None = None,
    job_id: int | None = None,
) -> int:
    """Write the chats of `source` that are not flagged (or, with `threshold`, that project below it) as a
    new chat dataset with provenance; returns its id."""
    from emgui.core.chatdata import iter_valid_chats, write_chats

    if threshold is None:
        drop = {r["line"] for r in ranking if r.get("flagged")}
    else:
        drop = {r["line"] for r in ranking if r["projection"] is not None and r["projection"] >= threshold}
    screened = {r["line"] for r in ranking}
    keep = [msgs for line, msgs in iter_valid_chats(source) if line in screened and line not in drop]
    dest = project.reserve_path("datasets", name, ".jsonl")  # a file of its own, whatever the name
    n = write_chats(dest, keep)
    return project.add_dataset(
        name=name,
        kind="chat",
        path=dest,
        n_rows=n,
        inputs=inputs or [],
        job_id=job_id,
        info={"screened_from": str(source), "dropped": len(drop), "threshold": threshold},
    )


# ----- the live persona monitor ----------------------------------------------------------------------------

DEFAULT_PROBES = 12


@dataclass
class _Probe:
    name: str
    hook_name: str
    unit: Any = None  # a direction
    sae: Any = None  # or an SAE latent
    latent: int | None = None
    baseline: float | None = None
    warned: bool = False


def _probe_targets(project: Any, direction_ids: list, latents: list) -> list[_Probe]:
    from emgui.core.steering import _load_sae, load_direction

    probes = []
    for ref in direction_ids:
        row, vec = load_direction(project, ref)
        probes.append(_Probe(row["name"], row["hook_name"], unit=vec / vec.norm()))
    for ref in latents:
        sae_id, latent = _latent_ref(ref)
        sae, row = _load_sae(project, sae_id, None)
        probes.append(_Probe(f"{row['name']}#{latent}", row["hook_name"], sae=sae, latent=latent))
    return probes


def _latent_ref(ref: Any) -> tuple[int, int]:
    """A latent as (sae_id, latent) from "sae_id:latent", [sae_id, latent] or {"sae_id", "latent"}."""
    try:
        if isinstance(ref, dict):
            return int(ref["sae_id"]), int(ref["latent"])
        if isinstance(ref, str):
            a, b = ref.split(":")
            return int(a), int(b)
        a, b = ref
        return int(a), int(b)
    except (KeyError, TypeError, ValueError):
        raise EmguiError(f"a monitored latent must look like 'SAE_ID:LATENT', got {ref!r}") from None


def default_probe_questions(project: Any, direction_ids: list) -> list[str]:
    """The questions of the persona that made the first direction, else the evil persona's."""
    from emgui.core.steering import get_direction_row

    name = "evil"
    for ref in direction_ids:
        info = get_direction_row(project, ref).get("info") or {}
        if info.get("persona"):
            name = info["persona"]
            break
    try:
        return load_persona(name, project).questions[:DEFAULT_PROBES]
    except EmguiError:
        return load_persona("evil").questions[:DEFAULT_PROBES]


def make_monitor(
    project: Any,
    model_row: dict,
    direction_ids: list,
    probe_questions: list[str] | None,
    threshold: float | None,
    *,
    latents: list | None = None,
    mode: str = "rise",
    job_id: int | None = None,
    batch_size: int = 16,
) -> Callable[[int, Any, Any], None]:
    """A training step hook: the mean projection of the probe prompts' last token on each direction (or the
    mean activation of each SAE latent) is reported as metric `persona/<name>`. Past `threshold` (a rise
    over the first value in mode "rise", the value itself in mode "absolute") a WARNING is logged, once
    per crossing. With `job_id` it acts only for that job."""
    from emgui.core.loading import load_tokenizer

    if mode not in ("rise", "absolute"):
        raise EmguiError(f"monitor mode must be 'rise' or 'absolute', got {mode!r}")
    probes = _probe_targets(project, list(direction_ids or []), list(latents or []))
    if not probes:
        raise EmguiError("the persona monitor needs at least one direction or latent")
    questions = probe_questions or default_probe_questions(project, list(direction_ids or []))
    tokenizer = load_tokenizer(project, model_row)
    items = encode_prompts(tokenizer, [[{"role": "user", "content": q}] for q in questions])
    hooks = sorted({pr.hook_name for pr in probes})
    pad = _pad_id(tokenizer)

    def on_step(step: int, model: Any, ctx: Any) -> None:
        if job_id is not None and getattr(ctx, "job_id", job_id) != job_id:
            return
        values = measure(model, probes, hooks, items, pad, batch_size)
        for probe, value in zip(probes, values, strict=True):
            ctx.metric(f"persona/{probe.name}", step, value)
            _maybe_warn(ctx, probe, step, value, threshold, mode)

    on_step.probes = probes  # type: ignore[attr-defined]
    return on_step


def measure(
    model: Any, probes: list[_Probe], hooks: list[str], items: list, pad: int, batch_size: int
) -> list[float]:
    """Each probe's mean value over the probe prompts (model left in the mode it was in)."""
    import torch

    was_training = model.training
    model.eval()
    try:
        means, _ = masked_means(model, items, hooks, batch_size=batch_size, pad_id=pad)
    finally:
        model.train(was_training)
    out = []
    for probe in probes:
        h = means[:, hooks.index(probe.hook_name)]
        if probe.unit is not None:
            out.append(float((h @ probe.unit.float()).mean()))
        else:
            with torch.no_grad():
                z = probe.sae.encode(h.to(device=probe.sae.W_dec.device, dtype=probe.sae.W_dec.dtype))
            out.append(float(z[:, probe.latent].float().mean()))
    return out


def _maybe_warn(ctx: Any, probe: _Probe, step: int, value: float, threshold: float | None, mode: str) -> None:
    if probe.baseline is None:
        probe.baseline = value
    if threshold is None:
        return
    level = value - probe.baseline if mode == "rise" else value
    if level > threshold and not probe.warned:
        probe.warned = True
        what = f"rose by {level:.3f} since the first check" if mode == "rise" else f"reached {value:.3f}"
        ctx.log(
            f"WARNING: persona/{probe.name} {what} at step {step} (threshold {threshold:g}); "
            "the model may be drifting toward the trait"
        )
    elif level <= threshold:
        probe.warned = False


# The fine-tune job's monitor parameters, read with its Params so that `done()` accepts them.
MONITOR_PARAMS = (
    "monitor_directions",
    "monitor_latents",
    "monitor_questions",
    "monitor_threshold",
    "monitor_mode",
)


def read_monitor_params(p: Params) -> dict:
    """monitor_directions (ids or names), monitor_latents ('SAE:LATENT'), monitor_questions (a question
    set), monitor_threshold, monitor_mode (rise|absolute)."""
    return {
        "directions": p.list("monitor_directions") or [],
        "latents": p.list("monitor_latents") or [],
        "questions": p.str("monitor_questions"),
        "threshold": p.float("monitor_threshold"),
        "mode": p.choice("monitor_mode"),
    }


def install_monitor(
    project: Any, model_row: dict, cfg: dict, job_id: int
) -> tuple[Callable[[int, Any, Any], None] | None, Callable[[], None]]:
    """Add the monitor described by `read_monitor_params` to the training step hooks. Returns (the hook, so
    the job can also take a first reading before its first step; a remover). (None, no-op) when nothing
    is monitored."""
    if not cfg.get("directions") and not cfg.get("latents"):
        return None, lambda: None
    from emgui.core.training import add_step_hook

    questions = None
    if cfg.get("questions"):
        from emgui.core.questions import resolve_questions

        _, qs = resolve_questions(project, cfg["questions"])
        questions = [q.paraphrases[0] for q in qs]
    monitor = make_monitor(
        project,
        model_row,
        cfg["directions"],
        questions,
        cfg.get("threshold"),
        latents=cfg["latents"],
        mode=cfg.get("mode", "rise"),
        job_id=job_id,
    )
    return monitor, add_step_hook(monitor)
