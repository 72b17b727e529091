"""The fine-tune (`finetune`, "induce") and re-alignment (`realign`, "repair") jobs.

Both share one training loop written on plain torch + peft (not the HF Trainer) so that progress,
cancellation, checkpoints and resume are exact:

- Chats are rendered with the model's own chat template; only the assistant's tokens (its answer and
  the end-of-turn token) carry labels. Spans are found by rendering each conversation prefix and
  mapping character spans to tokens through the tokenizer's offsets, so merges across a boundary and
  templates that add a default system prompt are handled.
- The data order is a pure function of the seed: `build_plan` lays out every optimizer step up front
  (steps -> micro-batches -> rows -> sample indices), so a checkpoint only needs the step number.
- Packing (optional) concatenates whole samples, with position ids restarting at 0 for each one. For
  SDPA models each micro-batch becomes a single row of up to batch_size * max_len tokens (no padding at
  all) and attention runs causally on each sample's slice alone (`_segment_attention`, registered as
  an attention implementation for the duration of training). Models that cannot switch attention get
  rows of max_len, batch_size per micro-batch, and no attention mask: transformers then builds a
  block-diagonal causal mask from the restarting position ids. Either way no token attends across
  samples, and the first token of every sample has no label, so no sample learns from its neighbour.
- Unpacked batches are right-padded and passed without an attention mask: with causal attention real
  tokens never see the padding after them, and SDPA keeps its fast causal kernel.
- Loss is the mean over all assistant tokens of an optimizer step (token-weighted across micro-batches),
  so packed and unpacked runs optimize the same objective. Logits are computed only at labelled
  positions (the vocabulary projection dominates the cost of small models); this shortcut is checked
  against the model's own forward once and abandoned if they disagree.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from emgui.core.data.datasets import read_chats, resolve_dataset
from emgui.core.errors import Cancelled, EmguiError
from emgui.core.jobs.params import Params

IGNORE = -100
METHODS = ("lora", "full", "qlora")

# A step hook is called as `hook(step, model, ctx)` every `monitor_every` steps. Hooks are passed to
# `Trainer.run` by the job (its live monitor) and by whoever runs the job (`run_job(step_hooks=...)`).
StepHook = Callable[[int, Any, Any], None]


# ----- configuration ---------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    method: str = "lora"
    lora_r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    target_modules: Any = "all-linear"
    use_rslora: bool = False
    layers: list[int] | None = None
    lr: float = 1e-4
    schedule: str = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 4
    grad_accum: int = 1
    max_len: int = 512
    overlong: str = "truncate"
    seed: int = 0
    packing: bool = False
    gradient_checkpointing: bool = False
    checkpoint_every: int = 50
    eval_every: int = 0
    val_fraction: float = 0.0
    device: str = "auto"
    dtype: str = "auto"
    merge: bool = False
    monitor_every: int = 10
    devices: int = 1  # processes (one per GPU) that train together; batch_size is per device
    strategy: str = "ddp"  # ddp: a full copy per device | fsdp: the weights sharded across devices
    memory_check: bool = True  # refuse a job whose estimated memory exceeds the free memory


def _as_list(params: dict, key: str) -> None:
    """`--param layers=15` arrives as 15; a list parameter should accept it as [15]."""
    if isinstance(params.get(key), (int, float)) and not isinstance(params.get(key), bool):
        params[key] = [params[key]]


def _int_list(p: Params, key: str, kind: str) -> list[int] | None:
    values = p.list(key)
    if values is None:
        return None
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        raise EmguiError(f"{kind}: parameter '{key}' must be a list of integers, got {values!r}") from None


def read_config(p: Params, kind: str) -> TrainConfig:
    """The training parameters both kinds share (finetune adds epochs/max_steps)."""
    cfg = TrainConfig(
        method=p.choice("method"),
        lora_r=p.int("lora_r"),
        lora_alpha=p.float("lora_alpha"),
        lora_dropout=p.float("lora_dropout"),
        use_rslora=p.bool("use_rslora"),
        layers=_int_list(p, "layers", kind),
        lr=p.float("lr"),
        schedule=p.choice("schedule"),
        warmup_steps=p.int("warmup_steps"),
        weight_decay=p.float("weight_decay"),
        max_grad_norm=p.float("max_grad_norm"),
        batch_size=p.int("batch_size"),
        grad_accum=p.int("grad_accum"),
        max_len=p.int("max_len"),
        overlong=p.choice("overlong"),
        seed=p.int("seed"),
        packing=p.bool("packing"),
        gradient_checkpointing=p.bool("gradient_checkpointing"),
        checkpoint_every=p.int("checkpoint_every"),
        eval_every=p.int("eval_every"),
        val_fraction=p.float("val_fraction"),
        device=p.str("device"),
        dtype=p.choice("dtype"),
        merge=p.bool("merge"),
        monitor_every=p.int("monitor_every"),
        devices=p.int("devices"),
        strategy=p.choice("strategy"),
        memory_check=p.bool("memory_check"),
    )
    if cfg.method == "qlora":
        cfg.gradient_checkpointing = True  # QLoRA's recipe: the 4-bit base leaves activations as the big part
    targets = p.list("target_modules")
    cfg.target_modules = (
        "all-linear" if targets in (["all-linear"], "all-linear") else [str(t) for t in targets]
    )
    if kind == "finetune":
        cfg.epochs = p.int("epochs")
        cfg.max_steps = p.int("max_steps")
    return cfg


# ----- will it fit? -------------------------------------------------------------------------------------


def fit_settings(cfg: TrainConfig) -> Any:
    """The settings the memory estimate needs, with the device and dtype this job would use."""
    from emgui.core.lm.device import pick_device
    from emgui.core.models.loading import resolve_dtype
    from emgui.core.models.memory import FitSettings

    device = pick_device(cfg.device)
    dtype = str(resolve_dtype(device, cfg.dtype)).replace("torch.", "")
    return FitSettings(
        method=cfg.method, dtype={"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(dtype, "fp32"),
        batch_size=cfg.batch_size, max_len=cfg.max_len, grad_accum=cfg.grad_accum,
        gradient_checkpointing=cfg.gradient_checkpointing, lora_r=cfg.lora_r,
        target_modules=cfg.target_modules, layers=tuple(cfg.layers) if cfg.layers else None,
        devices=cfg.devices, strategy=cfg.strategy, device_kind=device.split(":")[0],
    )  # fmt: skip


def memory_fit(project: Any, start: dict, cfg: TrainConfig, free: list[float] | None = None) -> Any:
    """The fit report of training `start` with `cfg` (None when the model's config cannot be read)."""
    from emgui.core.models.memory import fit_report, model_shape

    shape = model_shape(project, start)
    return None if shape is None else fit_report(shape, fit_settings(cfg), free)


def check_fit(project: Any, start: dict, cfg: TrainConfig, kind: str) -> str:
    """The estimate as a line to show; an EmguiError naming settings that would fit when it does not."""
    report = memory_fit(project, start, cfg)
    if report is None:
        return f"memory: no estimate for '{start['name']}' (its config.json is unreadable)"
    if not report.fits and cfg.memory_check:
        raise EmguiError(
            f"{kind}: '{start['name']}' will not fit: {report.text}. {report.advice()}. "
            "(--param memory_check=false starts it anyway)"
        )
    return report.text + ("" if report.fits else " - it may not fit (memory_check=false)")


def precheck(project: Any, kind: str, params: dict) -> list[str]:
    """Run at submit, before a job row exists: bad training parameters and jobs that will not fit are
    refused here. Returns the lines to show (the memory estimate)."""
    params = dict(params)
    _as_list(params, "layers")
    p = Params(params, kind)
    cfg = read_config(p, kind)
    monitor = kind == "finetune" and bool(params.get("monitor_directions") or params.get("monitor_latents"))
    _check_devices(cfg, kind, monitor=monitor)
    start = project.get_model(p.str("model"))
    return [check_fit(project, start, cfg, kind)]


def form_fit(project: Any, kind: str, start: dict, values: dict) -> Any:
    """The fit report for a form's values (every declared parameter present): the Train page's estimate."""
    values = dict(values)
    _as_list(values, "layers")
    return memory_fit(project, start, read_config(Params(values, kind), kind))


# ----- data: chats -> token ids and labels ---------------------------------------------------------------


@dataclass
class Sample:
    ids: list[int]
    labels: list[int]
    line: int  # line in the dataset file, for messages

    @property
    def n_labels(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def _render(tokenizer: Any, messages: list[dict], gen: bool, line: int) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    except Exception as exc:  # jinja raises its own errors for conversations a template refuses
        raise EmguiError(f"line {line}: the model's chat template refused this chat: {exc}") from exc


def assistant_char_spans(
    tokenizer: Any, messages: list[dict], line: int = 0
) -> tuple[str, list[tuple[int, int]]]:
    """The templated text and the character spans of each assistant turn (answer + end-of-turn token)."""
    text = _render(tokenizer, messages, False, line)
    eos = tokenizer.eos_token or ""
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], True, line) if i else ""
        through = _render(tokenizer, messages[: i + 1], False, line)
        if i and text.startswith(through) and through.startswith(before) and len(through) > len(before):
            start, end = len(before), len(through)
        else:  # templates that rewrite earlier turns: find the answer itself
            start = text.find(msg["content"], cursor)
            if start < 0:
                raise EmguiError(f"line {line}: cannot find assistant turn {i} in the chat template's output")
            end = start + len(msg["content"])
            nxt = text.find(eos, end) if eos else -1
            if nxt >= 0 and not text[end:nxt].strip():
                end = nxt + len(eos)
        # Stop right after the end-of-turn token: the newline a template adds after it is not the answer.
        last_eos = text.rfind(eos, start, end) if eos else -1
        if last_eos >= 0:
            end = last_eos + len(eos)
        spans.append((start, end))
        cursor = end
    return text, spans


def _labels_from_offsets(
    ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]
) -> list[int]:
    labels = []
    for tok, (a, b) in zip(ids, offsets, strict=True):
        inside = b > a and any(s <= a < e for s, e in spans)
        labels.append(tok if inside else IGNORE)
    return labels


def _encode_by_pieces(tokenizer: Any, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """For tokenizers without offsets: tokenize the text piece by piece at the span boundaries."""
    ids: list[int] = []
    labels: list[int] = []
    pos = 0
    for s, e in [*spans, (len(text), len(text))]:
        for a, b, labelled in ((pos, s, False), (s, e, True)):
            if b > a:
                piece = tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
                ids += piece
                labels += piece if labelled else [IGNORE] * len(piece)
        pos = e
    return ids, labels


def encode_chat(tokenizer: Any, messages: list[dict], line: int = 0) -> tuple[list[int], list[int]]:
    """Token ids and labels (IGNORE outside assistant turns) for one chat."""
    return encode_chats(tokenizer, [(line, messages)])[0]


def encode_chats(
    tokenizer: Any, chats: list[tuple[int, list[dict]]], on_batch: Callable[[int], None] | None = None
) -> list[tuple[list[int], list[int]]]:
    out = []
    for start in range(0, len(chats), 64):
        chunk = chats[start : start + 64]
        rendered = [assistant_char_spans(tokenizer, msgs, line) for line, msgs in chunk]
        texts = [t for t, _ in rendered]
        try:
            enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
            for ids, offsets, (_, spans) in zip(
                enc["input_ids"], enc["offset_mapping"], rendered, strict=True
            ):
                out.append((list(ids), _labels_from_offsets(ids, offsets, spans)))
        except NotImplementedError:  # slow tokenizers have no offsets
            out += [_encode_by_pieces(tokenizer, t, s) for t, s in rendered]
        if on_batch:
            on_batch(len(out))
    return out


@dataclass
class DataStats:
    n_chats: int = 0
    n_overlong: int = 0
    n_truncated: int = 0
    n_dropped: int = 0  # over-long chats dropped, or truncated to nothing the model should learn
    label_tokens: int = 0


def fit_samples(
    encoded: list[tuple[list[int], list[int]]], lines: list[int], max_len: int, overlong: str
) -> tuple[list[Sample], DataStats]:
    stats = DataStats(n_chats=len(encoded))
    samples = []
    for (ids, labels), line in zip(encoded, lines, strict=True):
        labels = list(labels)
        if labels:
            labels[0] = IGNORE  # nothing predicts a sample's first token (matters when packing)
        if len(ids) > max_len:
            stats.n_overlong += 1
            if overlong == "drop":
                stats.n_dropped += 1
                continue
            ids, labels = ids[:max_len], labels[:max_len]
            stats.n_truncated += 1
        sample = Sample(list(ids), labels, line)
        if sample.n_labels == 0:
            stats.n_dropped += 1
            continue
        stats.label_tokens += sample.n_labels
        samples.append(sample)
    return samples, stats


# ----- the plan: which samples every optimizer step sees ---------------------------------------------------

Plan = list[list[list[list[int]]]]  # steps -> micro-batches -> rows -> sample indices


def _sample_stream(n: int, seed: int):
    epoch = 0
    while True:
        order = list(range(n))
        random.Random(f"emgui-{seed}-{epoch}").shuffle(order)
        yield from order
        epoch += 1


def build_plan(
    lengths: list[int],
    *,
    seed: int,
    batch_size: int,
    grad_accum: int,
    max_len: int,
    packing: bool,
    epochs: int = 1,
    max_steps: int | None = None,
    n_samples: int | None = None,
    boundaries: tuple[int, ...] | list[int] = (),
    one_row: bool = False,
) -> Plan:
    """Lay out every step. Stops after `max_steps`, else after `n_samples` samples, else `epochs` passes.
    A step (and its last micro-batch) ends early when the samples seen reach one of `boundaries`.

    Packing fills rows of `max_len` tokens with whole samples, `batch_size` rows per micro-batch; with
    `one_row` (when attention runs per sample, so a row's length costs nothing extra) a micro-batch is a
    single row of up to `batch_size * max_len` tokens, which leaves no padding at all."""
    if not lengths:
        raise EmguiError("no training samples left")
    one_row = one_row and packing
    capacity, rows_per_micro = (max_len * batch_size, 1) if one_row else (max_len, batch_size)
    limit = n_samples if n_samples is not None else (None if max_steps else epochs * len(lengths))
    cut = set(boundaries)
    steps: Plan = []
    step: list = []
    micro: list = []
    row: list[int] = []
    row_len = 0

    def close_row() -> None:
        nonlocal row, row_len
        if row:
            micro.append(row)
        row, row_len = [], 0

    def close_micro() -> None:
        nonlocal micro
        close_row()
        if micro:
            step.append(micro)
        micro = []

    def close_step() -> None:
        nonlocal step
        close_micro()
        if step:
            steps.append(step)
        step = []

    for seen, idx in enumerate(_sample_stream(len(lengths), seed), start=1):
        if (limit is not None and seen > limit) or (max_steps and len(steps) >= max_steps):
            break
        if packing and row and row_len + lengths[idx] > capacity:
            close_row()
        if len(micro) == rows_per_micro:
            close_micro()
        if len(step) == grad_accum:
            close_step()
        row.append(idx)
        row_len += lengths[idx]
        if not packing:
            close_row()
        if seen in cut:
            close_step()
    if not max_steps or len(steps) < max_steps:
        close_step()
    return steps[:max_steps] if max_steps else steps


def plan_hash(plan: Plan) -> str:
    return hashlib.sha256(json.dumps(plan).encode()).hexdigest()[:16]


def _step_hash(step: list) -> float:
    """A float that identifies a step's samples exactly (48 bits fit in a float64): the `batch_hash` metric."""
    return float(int(hashlib.sha256(json.dumps(step).encode()).hexdigest()[:12], 16))


@dataclass
class Batch:
    input_ids: Any
    labels: Any
    position_ids: Any
    n_tokens: int  # real (non-pad) tokens
    n_labels: int
    segments: list[tuple[int, int, int]] | None = None  # (row, start, end) per packed sample; None: unpacked

    def model_kwargs(self) -> dict:
        kwargs = {"input_ids": self.input_ids, "position_ids": self.position_ids, "use_cache": False}
        if self.segments is not None:
            kwargs[SEGMENTS_KWARG] = self.segments
        return kwargs


def collate(rows: list[list[int]], samples: list[Sample], pad_id: int, device: str = "cpu") -> Batch:
    """Right-padded tensors. Position ids restart per packed sample; pads continue the last sample's
    positions, so an unpacked row looks like a single sequence (keeping the fast causal path)."""
    import torch

    seqs = []
    for row in rows:
        ids, labels, pos = [], [], []
        for i in row:
            ids += samples[i].ids
            labels += samples[i].labels
            pos += range(len(samples[i].ids))
        seqs.append((ids, labels, pos))
    width = max(len(s[0]) for s in seqs)
    n_tokens = sum(len(s[0]) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, (ids, lab, pos) in enumerate(seqs):
        n = len(ids)
        input_ids[r, :n] = torch.tensor(ids)
        labels[r, :n] = torch.tensor(lab)
        last = pos[-1] + 1
        position_ids[r] = torch.tensor(pos + list(range(last, last + width - n)))
    n_labels = int((labels != IGNORE).sum())
    segments = None
    if any(len(row) > 1 for row in rows):
        segments = []
        for r, row in enumerate(rows):
            start = 0
            for k, i in enumerate(row):
                end = width if k == len(row) - 1 else start + len(samples[i].ids)  # pads join the last one
                segments.append((r, start, end))
                start = end
    return Batch(
        input_ids.to(device), labels.to(device), position_ids.to(device), n_tokens, n_labels, segments
    )


# ----- attention over packed rows -------------------------------------------------------------------------

SEGMENTS_KWARG = "emgui_segments"
SEGMENT_ATTENTION = "emgui_segments"


def _segment_attention(
    module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any
) -> tuple[Any, None]:
    """SDPA run causally on each packed sample alone. Without segments it is plain SDPA.

    Registered as an attention implementation with no mask function, so transformers builds no mask and
    each call can use SDPA's fast causal kernel instead of a slow explicit block-diagonal mask."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    segments = kwargs.pop(SEGMENTS_KWARG, None)
    if segments is None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    sizes: dict[int, list[int]] = {}
    for r, s, e in segments:
        sizes.setdefault(r, []).append(e - s)
    rows = []
    for r in range(query.shape[0]):
        # split (not slicing) keeps the backward pass to one concatenation per tensor
        parts = zip(*(t[r : r + 1].split(sizes[r], dim=2) for t in (query, key, value)), strict=True)
        rows.append(
            torch.cat([sdpa_attention_forward(module, q, k, v, None, **kwargs)[0] for q, k, v in parts], 1)
        )
    return (rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)), None


def packs_into_one_row(model: Any) -> bool:
    """Whether attention over a packed row can run per sample (our segment attention over SDPA, or
    flash attention's own variable-length kernels), so that long packed rows cost nothing extra."""
    hf = _hf_model(model)
    impl = getattr(hf.config, "_attn_implementation", None)
    if impl in ("flash_attention_2", "flash_attention_3"):
        return True
    can_set = getattr(hf, "_can_set_attn_implementation", None)
    return impl == "sdpa" and callable(can_set) and bool(can_set())


def use_segment_attention(model: Any) -> Callable[[], None]:
    """Switch a model to segment attention (for training on packed rows); returns the undo.

    Models that cannot switch keep their own attention: transformers then builds a block-diagonal mask
    from the restarting position ids, which is slower but just as correct."""
    from transformers import AttentionInterface

    AttentionInterface.register(SEGMENT_ATTENTION, _segment_attention)
    hf = _hf_model(model)
    before = hf.config._attn_implementation
    if before != "sdpa":
        return lambda: None  # flash attention handles packed position ids itself; eager models keep theirs
    try:
        hf.set_attn_implementation(SEGMENT_ATTENTION)
    except (ValueError, AttributeError, KeyError):
        return lambda: None
    return lambda: hf.set_attn_implementation(before or "sdpa")


# ----- the model and its loss ---------------------------------------------------------------------------


def _hf_model(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _first_row(b: Batch) -> Batch:
    segments = None if b.segments is None else [seg for seg in b.segments if seg[0] == 0]
    return Batch(b.input_ids[:1], b.labels[:1], b.position_ids[:1], b.n_tokens, b.n_labels, segments)


class LossFn:
    """Sum of token cross-entropies at labelled positions. Uses decoder + output head directly when that
    gives the same logits as the model's forward (checked once), else the full forward."""

    def __init__(self, model: Any):
        self.model = model
        self.fast: bool | None = None

    def _full_logits(self, b: Batch) -> Any:
        return self.model(**b.model_kwargs()).logits[:, :-1]

    def _fast_logits(self, b: Batch, mask: Any) -> Any:
        hf = _hf_model(self.model)
        out = hf.get_decoder()(**b.model_kwargs())
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        return hf.get_output_embeddings()(hidden[:, :-1][mask])

    def check_fast_path(self, b: Batch) -> bool:
        import torch

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                b = _first_row(b)  # one row, and at most 64 labelled positions: the check costs little memory
                mask = b.labels[:, 1:] != IGNORE
                mask &= mask.cumsum(dim=1) <= 64
                fast = self._fast_logits(b, mask).float()
                full = self._full_logits(b)[mask].float()
                self.fast = fast.shape == full.shape and bool(
                    torch.allclose(fast, full, rtol=1e-3, atol=1e-3)
                )
        except (AttributeError, TypeError, NotImplementedError, ValueError):
            self.fast = False
        finally:
            self.model.train(was_training)
        from emgui.core.training.distributed import all_min, current

        if current() is not None:  # every device takes the same path
            self.fast = all_min(self.fast)
        return self.fast

    def __call__(self, b: Batch) -> Any:
        import torch.nn.functional as F

        if self.fast is None:
            self.check_fast_path(b)
        targets = b.labels[:, 1:]
        mask = targets != IGNORE
        logits = self._fast_logits(b, mask) if self.fast else self._full_logits(b)[mask]
        return F.cross_entropy(logits.float(), targets[mask], reduction="sum")


def _lora_config(cfg: TrainConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
        use_rslora=cfg.use_rslora,
        layers_to_transform=cfg.layers,
        bias="none",
        task_type="CAUSAL_LM",
    )


def prepare_model(project: Any, start: dict, cfg: TrainConfig, log: Callable[[str], None]) -> tuple[Any, int]:
    """The model to train and the id of the base its output will name. An adapter start keeps training
    that adapter (LoRA, QLoRA) or is merged first (full); a folder start gets a fresh LoRA or trains in full.
    QLoRA loads the base in 4-bit NF4 (bitsandbytes) and trains a LoRA adapter on it."""
    import torch

    from emgui.core.models.loading import load_model

    torch.manual_seed(cfg.seed)  # fresh LoRA A matrices are random: the same seed gives the same start
    continuing = start["kind"] == "adapter" and cfg.method in ("lora", "qlora")
    quantize = "nf4" if cfg.method == "qlora" else "none"
    device = _local_device(cfg)
    model = load_model(
        project, start, device=device, dtype=cfg.dtype, for_training=continuing, quantize=quantize
    )
    if cfg.method == "qlora":
        _prepare_4bit(model)
        log(f"base weights in 4-bit NF4 with double quantisation (bitsandbytes), computing in {_dtype_name(model)}")
    if continuing:
        log(f"continuing to train adapter '{start['name']}' (its own LoRA settings apply)")
        return model, start["base_model_id"]
    if start["kind"] == "adapter":
        model = model.merge_and_unload()
    if cfg.method == "full":
        model.train()
        for param in model.parameters():
            param.requires_grad_(True)
        return model, start["id"]
    from peft import get_peft_model

    try:
        model = get_peft_model(model, _lora_config(cfg))
    except ValueError as exc:  # e.g. target modules that do not exist in this architecture
        raise EmguiError(f"LoRA settings do not fit model '{start['name']}': {exc}") from exc
    model.train()
    return model, start["id"]


def _local_device(cfg: TrainConfig) -> str:
    """This process's device: with several, each rank takes the GPU torchrun numbered it (LOCAL_RANK)."""
    import os

    if cfg.devices > 1 and cfg.device in ("auto", "cuda"):
        from emgui.core.lm.device import pick_device

        if pick_device(cfg.device) == "cuda":
            # FSDP loads on the CPU and moves only this device's shards to it
            return "cpu" if cfg.strategy == "fsdp" else f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return cfg.device


def _prepare_4bit(model: Any) -> None:
    """Freeze a 4-bit base for LoRA training. Unlike peft's `prepare_model_for_kbit_training`, embeddings and
    norms keep the compute dtype (upcasting them to fp32 costs 6 GB for a 152k-token vocabulary), and the
    trainer's non-reentrant gradient checkpointing needs no input gradients."""
    for name, param in model.named_parameters():
        if "lora_" not in name:  # a continued adapter stays trainable
            param.requires_grad_(False)


def _oom_error(exc: BaseException, cfg: TrainConfig, step: int) -> EmguiError | None:
    from emgui.core.jobs.runner import _oom_message

    if not isinstance(exc, (MemoryError, RuntimeError)):
        return None
    message = _oom_message(exc)
    if message is None:
        return None
    return EmguiError(f"{message} [at step {step}, batch {cfg.batch_size} x up to {cfg.max_len} tokens]")


# ----- the loop ----------------------------------------------------------------------------------------------


def _lr_lambda(cfg: TrainConfig, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)

    return factor


@dataclass
class LoopState:
    step: int = 0
    samples_seen: int = 0
    tokens_seen: int = 0  # real input tokens
    label_tokens: int = 0  # assistant tokens trained on
    ema: float | None = None
    last_loss: float | None = None
    val_loss: float | None = None
    elapsed: float = 0.0  # seconds spent in steps (for tokens/s across resumes)
    resumed_from: int | None = None


def _enable_checkpointing(hf: Any) -> None:
    """Recompute activations in the backward pass (transformers 5 renamed the method)."""
    kwargs = {"use_reentrant": False}  # the non-reentrant variant needs no input gradients under LoRA
    if hasattr(hf, "activation_checkpointing_enable"):
        hf.activation_checkpointing_enable(kwargs)
    else:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


class Trainer:
    """One training run: model, optimizer, schedule, plan, checkpoints. Shared by finetune and realign."""

    def __init__(
        self, ctx: Any, cfg: TrainConfig, model: Any, tokenizer: Any, samples: list[Sample], plan: Plan
    ):
        import torch

        from emgui.core.training.distributed import current, wrap

        self.ctx, self.cfg, self.model, self.tokenizer = ctx, cfg, model, tokenizer
        self.samples, self.plan = samples, plan
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.loss_fn = LossFn(model)
        self.state = LoopState()
        self.plan_hash = plan_hash(plan)
        self._hooks: list = []
        if cfg.gradient_checkpointing:
            _enable_checkpointing(_hf_model(model))
        # several devices: this rank's module (DDP, or FSDP, which replaces the parameters by shards)
        self.dist = current()
        # the wrapped module calls the loss on tensors (DDP and FSDP hook module calls, not Batch objects)
        tensor_loss = lambda ids, labels, pos, seg: self.loss_fn(Batch(ids, labels, pos, 0, 0, seg))  # noqa: E731
        self.wrapped = wrap(model, tensor_loss, self.dist) if self.dist else None
        self.device = self.dist.device if self.dist else str(next(model.parameters()).device)
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.params:
            raise EmguiError("nothing to train: the model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(
            [p for _, p in self.params], lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg, len(plan)))

    @property
    def main(self) -> bool:
        """Whether this process reports, saves and registers (the only one, or rank 0)."""
        return self.dist is None or self.dist.main

    @property
    def sharded(self) -> bool:
        return self.dist is not None and self.dist.strategy == "fsdp"

    def _loss(self, b: Batch) -> Any:
        if self.wrapped is None:
            return self.loss_fn(b)
        return self.wrapped(b.input_ids, b.labels, b.position_ids, segments=b.segments)

    def _my_rows(self, rows: list) -> tuple[list, float]:
        """This rank's rows of a micro-batch, and their weight: a rank left without rows runs the first one
        with weight 0, so every rank takes part in each gradient exchange."""
        if self.dist is None:
            return rows, 1.0
        mine = rows[self.dist.rank :: self.dist.world]
        return (mine, 1.0) if mine else (rows[:1], 0.0)

    def full_state(self, trainable_only: bool = False) -> dict | None:
        """FSDP: the gathered weights (on rank 0; every rank must call this); None otherwise."""
        if not self.sharded:
            return None
        from emgui.core.training.distributed import full_state

        return full_state(self.wrapped, {n for n, _ in self.params} if trainable_only else None)

    @property
    def n_trainable(self) -> int:
        return sum(p.numel() for _, p in self.params)

    # ----- checkpoints
    def save_checkpoint(self) -> None:
        """The trained weights, the optimizer and the schedule. Several devices: rank 0 writes them (FSDP
        gathers the shards first, on every rank), in the same files as one device."""
        import torch
        from safetensors.torch import save_file

        trained = self.full_state(trainable_only=True)
        optim = None
        if self.sharded:
            from emgui.core.training.distributed import optimizer_state

            optim = optimizer_state(self.wrapped, self.optimizer)
        if not self.main:
            return
        if trained is None:
            trained = {n: p.detach().cpu().contiguous() for n, p in self.params}
        name = f"step-{self.state.step:07d}"
        final = self.ctx.checkpoint_dir / name
        tmp = self.ctx.checkpoint_dir / (name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file({n: t.contiguous() for n, t in trained.items()}, str(tmp / "trainable.safetensors"))
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(
            {"optimizer": optim if optim is not None else self.optimizer.state_dict(),
             "scheduler": self.scheduler.state_dict(), "rng": rng},
            tmp / "state.pt",
        )  # fmt: skip
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        state = {**asdict(self.state), "dir": name, "plan_hash": self.plan_hash, "n_steps": len(self.plan),
                 "devices": self.cfg.devices, "strategy": self.cfg.strategy if self.dist else "single"}  # fmt: skip
        self.ctx.save_checkpoint(state)
        for old in sorted(self.ctx.checkpoint_dir.glob("step-*"))[:-2]:  # keep the last two
            shutil.rmtree(old, ignore_errors=True)
        self.ctx.log(f"checkpoint saved at step {self.state.step}")

    def restore(self, saved: dict) -> None:
        import torch
        from safetensors.torch import load_file

        if saved.get("plan_hash") != self.plan_hash:
            raise EmguiError(
                "cannot resume: the dataset, tokenizer or data parameters changed since the checkpoint; "
                "start a new job instead"
            )
        folder = self.ctx.checkpoint_dir / saved["dir"]
        if not (folder / "state.pt").is_file():
            raise EmguiError(f"cannot resume: checkpoint folder {folder} is missing or incomplete")
        mine = self.cfg.strategy if self.dist else "single"
        if saved.get("strategy", "single") != mine and "fsdp" in (saved.get("strategy"), mine):
            raise EmguiError(
                f"cannot resume: the checkpoint was written by a {saved.get('strategy')} run, this one is {mine}"
            )
        tensors = load_file(str(folder / "trainable.safetensors"))
        blob = torch.load(folder / "state.pt", weights_only=True, map_location="cpu")
        if self.sharded:
            from emgui.core.training.distributed import load_state

            load_state(self.wrapped, self.optimizer, tensors, blob["optimizer"])
        else:
            with torch.no_grad():
                for n, p in self.params:
                    p.copy_(tensors[n].to(p.device, p.dtype))
            self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["rng"]["torch"])
        random.setstate(_as_tuple(blob["rng"]["python"]))
        if "cuda" in blob["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(blob["rng"]["cuda"])
        fields = {k: saved[k] for k in asdict(LoopState()) if k in saved}
        self.state = LoopState(**fields)
        self.state.resumed_from = self.state.step
        if self.main:
            self._forget_metrics_after(self.state.step)
        self.ctx.log(f"resumed from the checkpoint at step {self.state.step}")

    def _forget_metrics_after(self, step: int) -> None:
        """Points logged after the checkpoint are about to be logged again: drop the old ones."""
        with self.ctx.project.transaction() as conn:
            conn.execute("DELETE FROM metrics WHERE job_id = ? AND step > ?", [self.ctx.job_id, step])

    # ----- evaluation
    def evaluate(self, val: list[Sample]) -> float:
        import torch

        order = sorted(range(len(val)), key=lambda i: len(val[i].ids))
        total = count = 0.0
        world = self.dist.world if self.dist else 1
        per_step = self.cfg.batch_size * world
        self.model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(order), per_step):
                    self.ctx.check_cancelled()
                    rows, weight = self._my_rows([[i] for i in order[start : start + per_step]])
                    b = collate(rows, val, self.pad_id, self.device)
                    total += float(self._loss(b)) * weight
                    count += b.n_labels * weight
        finally:
            self.model.train()
        if self.dist:
            from emgui.core.training.distributed import all_sum

            total, count = all_sum(total, count)
        return total / max(1.0, count)

    # ----- cancellation inside a long forward pass
    def _install_cancel_hooks(self) -> None:
        layers = getattr(_hf_model(self.model).get_decoder(), "layers", None) or []

        def check(_module: Any, _args: Any) -> None:
            if self.ctx.cancelled:
                raise Cancelled(f"job {self.ctx.job_id} cancelled")

        self._hooks = [layer.register_forward_pre_hook(check) for layer in layers]

    def _remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # ----- the steps
    def _one_step(self, step_plan: list) -> tuple[float, float, int]:
        import torch

        from emgui.core.training.distributed import all_sum, gradient_sync

        picked = [i for rows in step_plan for row in rows for i in row]
        n_labels = sum(self.samples[i].n_labels for i in picked)  # of the whole step, on every device
        n_tokens = sum(len(self.samples[i].ids) for i in picked)
        # DDP and FSDP average gradients over the devices: scale each device's sum up by their number
        scale = (self.dist.world if self.dist else 1) / n_labels
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        for k, rows in enumerate(step_plan):
            self.ctx.check_cancelled()
            mine, weight = self._my_rows(rows)
            b = collate(mine, self.samples, self.pad_id, self.device)
            sync = nullcontext() if self.dist is None else gradient_sync(self.wrapped, self.dist, k == len(step_plan) - 1)
            with sync:
                loss = self._loss(b)
                (loss * (scale * weight)).backward()
            loss_sum += loss.detach() * weight
        norm = torch.nn.utils.clip_grad_norm_(
            [p for _, p in self.params],
            self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf"),
        )
        self.optimizer.step()
        self.scheduler.step()
        total = float(loss_sum) if self.dist is None else all_sum(float(loss_sum))[0]
        return total / n_labels, float(norm), n_tokens

    def run(
        self,
        val: list[Sample] | None = None,
        on_step_done: Callable[[int], None] | None = None,
        on_start: Callable[[], None] | None = None,
        step_hooks: Sequence[StepHook] = (),
    ) -> LoopState:
        """Train through the plan from the current step; `on_step_done(step)` runs after each step."""
        cfg, st, total = self.cfg, self.state, len(self.plan)
        eval_every = cfg.eval_every or max(1, total // 10)
        self._install_cancel_hooks()
        undo_attention = use_segment_attention(self.model) if cfg.packing else (lambda: None)
        step_time = None
        try:
            if val and st.step == 0:
                self._eval(val)
            if on_start:
                on_start()
            while st.step < total:
                step_time = self._train_step(total, step_time)
                if val and (st.step % eval_every == 0 or st.step == total):
                    self._eval(val)
                if step_hooks and self.main and st.step % cfg.monitor_every == 0:
                    for hook in step_hooks:
                        hook(st.step, self.model, self.ctx)
                if on_step_done:
                    on_step_done(st.step)
                if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0 and st.step < total:
                    self.save_checkpoint()
        except (MemoryError, RuntimeError) as exc:
            oom = _oom_error(exc, cfg, st.step + 1)
            if oom is None:
                raise
            raise oom from exc
        finally:
            undo_attention()
            self._remove_hooks()
        self.ctx.progress(0.99, f"trained {total} steps; saving")
        return st

    def _train_step(self, total: int, step_time: float | None) -> float:
        """One optimizer step with its metrics; returns the smoothed step time (for the ETA)."""
        step_plan = self.plan[self.state.step]
        lr = self.scheduler.get_last_lr()[0]
        self.ctx.progress(SETUP_SHARE + (0.98 - SETUP_SHARE) * self.state.step / total, self._message(total, step_time))
        t0 = time.perf_counter()
        loss, norm, n_tokens = self._one_step(step_plan)
        dt = time.perf_counter() - t0
        step_time = dt if step_time is None else 0.8 * step_time + 0.2 * dt
        self._account(step_plan, loss, n_tokens, dt)
        self._report(loss, lr, norm, n_tokens / dt, (total - self.state.step) * step_time, step_plan)
        return step_time

    def _account(self, step_plan: list, loss: float, n_tokens: int, dt: float) -> None:
        st = self.state
        st.step += 1
        st.samples_seen += sum(len(row) for rows in step_plan for row in rows)
        st.tokens_seen += n_tokens
        st.label_tokens += sum(self.samples[i].n_labels for rows in step_plan for row in rows for i in row)
        st.elapsed += dt
        st.last_loss = loss
        st.ema = loss if st.ema is None else 0.9 * st.ema + 0.1 * loss

    def _report(self, loss: float, lr: float, norm: float, tps: float, eta: float, step_plan: list) -> None:
        s, m = self.state.step, self.ctx.metric
        m("loss", s, loss)
        m("loss_smooth", s, self.state.ema)
        m("lr", s, lr)
        m("grad_norm", s, norm)
        m("tokens_per_s", s, tps)
        m("eta_s", s, eta)
        m("samples_seen", s, self.state.samples_seen)
        m("tokens_seen", s, self.state.tokens_seen)
        m("batch_hash", s, _step_hash(step_plan))

    def _eval(self, val: list[Sample]) -> None:
        self.state.val_loss = self.evaluate(val)
        self.ctx.metric("val_loss", self.state.step, self.state.val_loss)
        self.ctx.log(f"step {self.state.step}: val_loss {self.state.val_loss:.4f}")

    def _message(self, total: int, step_time: float | None) -> str:
        st = self.state
        loss = f", loss {st.ema:.3f}" if st.ema is not None else ""
        eta = f", ETA {(total - st.step) * step_time:.0f} s" if step_time else ""
        return f"step {st.step + 1}/{total}{loss}{eta}"

    def probe(self) -> dict:
        """Logits of the trained model at the last position of a fixed prompt: reloads must reproduce them."""
        import torch

        ids = self.samples[0].ids[:32]
        self.model.eval()
        with torch.no_grad():
            tensor = torch.tensor([ids], device=self.device)
            if self.sharded:  # every rank takes part in the forward
                logits = self.wrapped(tensor, tensor, tensor, mode="logits")
            else:
                logits = self.model(input_ids=tensor, use_cache=False).logits
        last = logits[0, -1].float().cpu()
        return {
            "input_ids": ids,
            "logits": [round(float(x), 6) for x in last[:16]],
            "argmax": int(last.argmax()),
        }


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value


# ----- saving and registering -------------------------------------------------------------------------------


def _write_config(folder: Path, info: dict) -> None:
    (folder / "training_config.json").write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")


def save_weights(
    model: Any, tokenizer: Any, folder: Path, config_info: dict, state_dict: dict | None = None
) -> Path:
    """An adapter (adapter_config.json + adapter_model.safetensors) or a full safetensors model, with the
    tokenizer and the training configuration beside it. Written to a temporary folder, then moved.
    `state_dict`: the weights gathered from FSDP's shards, when the model itself holds only shards."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    hf = _hf_model(model)
    cache = getattr(hf.config, "use_cache", None)
    hf.config.use_cache = True  # the saved model is for generation
    try:
        if state_dict is not None:
            model.save_pretrained(str(tmp), state_dict=state_dict)
        else:
            model.save_pretrained(str(tmp))
    finally:
        hf.config.use_cache = cache
    tokenizer.save_pretrained(str(tmp))
    _write_config(tmp, config_info)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def register_output(
    ctx: Any,
    *,
    name: str,
    kind: str,
    folder: Path,
    base_id: int,
    n_params: int,
    dtype: str,
    source: str,
    inputs: list[dict],
    info: dict,
) -> int:
    from emgui.core.project.store import tree_size

    project = ctx.project
    base = project.get_model(base_id)
    model_id = project.add_model(
        name=name,
        kind=kind,
        source=source,
        path=folder,
        base_model_id=base_id,
        architecture=base.get("architecture"),
        n_params=n_params,
        dtype=dtype,
        size_bytes=tree_size(folder),
        info=info,
        trust_remote_code=base.get("trust_remote_code") or 0,
        job_id=ctx.job_id,
    )
    ctx.add_artifact(
        folder, "adapter" if kind == "adapter" else "model", inputs=inputs, meta={"model_id": model_id}
    )
    ctx.log(f"registered {kind} '{name}' (id {model_id}) at {folder}")
    return model_id


def _check_names_free(project: Any, names: list[str], job_id: int) -> None:
    for name in names:
        row = project.query_one("SELECT job_id FROM models WHERE name = ?", [name])
        if row and row["job_id"] != job_id:
            raise EmguiError(
                f"a model named '{name}' already exists in this project; pass another --param name=..."
            )


# ----- shared set-up ------------------------------------------------------------------------------------------


@dataclass
class Setup:
    start: dict
    tokenizer: Any
    samples: list[Sample]
    val: list[Sample]
    stats: DataStats
    dataset_row: dict | None
    dataset_path: Path


def _load_samples(
    ctx: Any, tokenizer: Any, path: Path, label: str, cfg: TrainConfig
) -> tuple[list[Sample], DataStats]:
    chats = read_chats(path, label)
    ctx.progress(0.005, f"tokenizing {len(chats)} chats")

    def tick(done: int) -> None:
        ctx.progress(0.005 + 0.02 * done / max(1, len(chats)), f"tokenizing {done}/{len(chats)} chats")

    encoded = encode_chats(tokenizer, chats, on_batch=tick)
    samples, stats = fit_samples(encoded, [line for line, _ in chats], cfg.max_len, cfg.overlong)
    if stats.n_overlong:
        done = "dropped" if cfg.overlong == "drop" else "truncated"
        ctx.log(
            f"{stats.n_overlong} of {stats.n_chats} chats in {label} exceed max_len={cfg.max_len} tokens: {done}"
        )
    if not samples:
        raise EmguiError(f"dataset {label}: no chat has assistant tokens within max_len={cfg.max_len}")
    return samples, stats


def _setup(
    ctx: Any, cfg: TrainConfig, model_ref: str, dataset_ref: str, val_ref: str | None, kind: str
) -> Setup:
    from emgui.core.models.loading import load_tokenizer

    project = ctx.project
    start = project.get_model(model_ref)
    tokenizer = load_tokenizer(project, start)
    if not getattr(tokenizer, "chat_template", None):
        raise EmguiError(f"model '{start['name']}' has no chat template; training on chats needs one")
    path, row = resolve_dataset(project, dataset_ref, kind)
    samples, stats = _load_samples(ctx, tokenizer, path, f"'{dataset_ref}'", cfg)
    val: list[Sample] = []
    if val_ref:
        vpath, _ = resolve_dataset(project, val_ref, kind, "val_dataset")
        val, _ = _load_samples(ctx, tokenizer, vpath, f"'{val_ref}'", cfg)
    elif cfg.val_fraction > 0:
        if len(samples) < 2:
            raise EmguiError(f"{kind}: val_fraction needs at least 2 chats, the dataset has {len(samples)}")
        order = list(range(len(samples)))
        random.Random(f"emgui-val-{cfg.seed}").shuffle(order)
        n_val = min(len(samples) - 1, max(1, round(cfg.val_fraction * len(samples))))
        held = set(order[:n_val])
        val = [s for i, s in enumerate(samples) if i in held]
        samples = [s for i, s in enumerate(samples) if i not in held]
    return Setup(start, tokenizer, samples, val, stats, row, path)


def _inputs(setup: Setup) -> list[dict]:
    inputs = [{"type": "model", "id": setup.start["id"]}]
    if setup.dataset_row is not None:
        inputs.append({"type": "dataset", "id": setup.dataset_row["id"]})
    return inputs


# The share of a training job's progress bar that tokenizing and loading fill: the bar moves from the start.
SETUP_SHARE = 0.04


def _dtype_name(model: Any) -> str:
    """The dtype the weights compute in (a 4-bit base stores uint8 but computes in its compute dtype)."""
    hf = _hf_model(model)
    quant = getattr(hf.config, "quantization_config", None)
    compute = getattr(quant, "bnb_4bit_compute_dtype", None) if quant is not None else None
    if compute is None and isinstance(quant, dict):
        compute = quant.get("bnb_4bit_compute_dtype")
    if compute is not None:
        return str(compute).replace("torch.", "")
    floats = [p.dtype for p in model.parameters() if p.is_floating_point()]
    return str(floats[0] if floats else next(model.parameters()).dtype).replace("torch.", "")


def _quantize_info(cfg: TrainConfig) -> dict:
    """A QLoRA adapter records its 4-bit base, so that other jobs load it the way it was trained."""
    return {"quantize": "nf4"} if cfg.method == "qlora" else {}


def _make_trainer(ctx: Any, cfg: TrainConfig, setup: Setup, **plan_kw: Any) -> tuple[Trainer, int]:
    """Load the model, lay out the plan (packing depends on the model's attention), set up training."""
    from emgui.core.models.host import reserve_for

    ctx.progress(0.03, f"loading model '{setup.start['name']}'")
    # Trained weights change: a private model, never shared, but counted so that idle models make room.
    reservation = reserve_for(ctx, setup.start, device=cfg.device, dtype=cfg.dtype, label="training")
    model, base_id = prepare_model(ctx.project, setup.start, cfg, ctx.log)
    reservation.measure(model)
    one_row = cfg.packing and cfg.devices == 1 and packs_into_one_row(model)
    plan = build_plan(  # with several devices the plan holds the global batch: batch_size rows per device
        [len(s.ids) for s in setup.samples],
        seed=cfg.seed,
        batch_size=cfg.batch_size * cfg.devices,
        grad_accum=cfg.grad_accum,
        max_len=cfg.max_len,
        packing=cfg.packing,
        one_row=one_row,
        **plan_kw,
    )
    trainer = Trainer(ctx, cfg, model, setup.tokenizer, setup.samples, plan)
    total = sum(p.numel() for p in model.parameters())
    shape = (
        f"1 packed row of <= {cfg.batch_size * cfg.max_len} tokens" if one_row else f"{cfg.batch_size} rows"
    )
    ctx.log(
        f"{len(setup.samples)} training chats ({setup.stats.label_tokens} assistant tokens), "
        f"{len(setup.val)} validation chats; {len(plan)} steps of {cfg.grad_accum} x {shape}; "
        f"{trainer.n_trainable:,} of {total:,} parameters trainable; device {trainer.device}"
        + (f", {cfg.devices} devices ({cfg.strategy}, {cfg.batch_size} rows each)" if cfg.devices > 1 else "")
    )
    if ctx.resume_state and ctx.resume_state.get("dir"):
        trainer.restore(ctx.resume_state)
    return trainer, base_id


def _result(trainer: Trainer, setup: Setup, extra: dict) -> dict:
    st = trainer.state
    return {
        **extra,
        "steps": st.step,
        "samples_seen": st.samples_seen,
        "assistant_tokens": st.label_tokens,
        "tokens_seen": st.tokens_seen,
        "tokens_per_s": st.tokens_seen / st.elapsed if st.elapsed else None,
        "final_loss": st.last_loss,
        "loss_smooth": st.ema,
        "val_loss": st.val_loss,
        "resumed_from": st.resumed_from,
        "n_chats": setup.stats.n_chats,
        "n_train": len(setup.samples),
        "n_val": len(setup.val),
        "n_overlong": setup.stats.n_overlong,
        "n_truncated": setup.stats.n_truncated,
        "n_dropped": setup.stats.n_dropped,
        "overlong": trainer.cfg.overlong,
        "trainable_params": trainer.n_trainable,
        "fast_loss_path": trainer.loss_fn.fast,
        "method": trainer.cfg.method,
        "devices": trainer.cfg.devices,
    }


def _config_info(ctx: Any, cfg: TrainConfig, setup: Setup, kind: str) -> dict:
    return {
        "job_kind": kind,
        "job_id": ctx.job_id,
        "start_model": {"id": setup.start["id"], "name": setup.start["name"]},
        "dataset": str(setup.dataset_path),
        "dataset_id": setup.dataset_row["id"] if setup.dataset_row else None,
        "params": ctx.params,
        "resolved": asdict(cfg),
    }


# ----- several devices ------------------------------------------------------------------------------------


def _worker() -> Any:
    """This process's rank when it is a worker of a multi-device job (None in the app or the CLI)."""
    from emgui.core.training.distributed import current

    return current()


def _check_devices(cfg: TrainConfig, kind: str, monitor: bool = False) -> None:
    """Refuse, before anything loads, what several devices cannot do."""
    if cfg.devices == 1:
        return
    if cfg.strategy == "fsdp" and cfg.method == "qlora":
        raise EmguiError(f"{kind}: method=qlora shards with strategy=ddp only (bitsandbytes' 4-bit weights do "
                         "not shard with FSDP); or use method=lora with strategy=fsdp")  # fmt: skip
    if cfg.strategy == "fsdp" and cfg.merge:
        raise EmguiError(f"{kind}: merge=true needs the whole model in one process; with strategy=fsdp save the "
                         "adapter and merge it on a machine that holds the full model")  # fmt: skip
    if cfg.strategy == "fsdp" and monitor:
        raise EmguiError(f"{kind}: the live persona monitor needs the whole model in one process: use "
                         "strategy=ddp, or devices=1")  # fmt: skip
    if _worker() is None:
        from emgui.core.lm.device import pick_device

        if pick_device(cfg.device).startswith("cuda"):
            from emgui.core.models.memory import visible_gpus

            if visible_gpus() < cfg.devices:
                raise EmguiError(f"{kind}: devices={cfg.devices} but torch sees {visible_gpus()} GPU(s)")


def _launch(ctx: Any, kind: str, params: dict, cfg: TrainConfig) -> dict:
    from emgui.core.training.distributed import launch

    return launch(ctx, kind, params, cfg.devices, cfg.strategy, cfg.device)


# ----- finetune ---------------------------------------------------------------------------------------------


def finetune_job(params: dict, ctx: Any) -> dict:
    """`finetune`: train a LoRA adapter (or the full model) on a chat dataset and register the result."""
    from emgui.core.steering.persona import build_monitor, read_monitor_params

    params = dict(params)
    for key in ("layers", "monitor_directions", "monitor_latents"):
        _as_list(params, key)
    p = Params(params, "finetune")
    model_ref = p.str("model")
    dataset_ref = p.str("dataset")
    val_ref = p.str("val_dataset")
    cfg = read_config(p, "finetune")
    name = p.str("name")
    monitor = read_monitor_params(p)  # the live persona monitor: directions or latents to watch
    p.done()
    start = ctx.project.get_model(model_ref)
    _check_devices(cfg, "finetune", monitor=bool(monitor.get("directions") or monitor.get("latents")))
    name = name or f"{start['name']}-ft-{ctx.job_id}"
    _check_names_free(ctx.project, [name, f"{name}-merged"] if cfg.merge else [name], ctx.job_id)
    if _worker() is None:
        ctx.log(check_fit(ctx.project, start, cfg, "finetune"))
        if cfg.devices > 1:
            return _launch(ctx, "finetune", params, cfg)
    setup = _setup(ctx, cfg, model_ref, dataset_ref, val_ref, "finetune")
    trainer, base_id = _make_trainer(ctx, cfg, setup, epochs=cfg.epochs, max_steps=cfg.max_steps)
    hook = build_monitor(ctx.project, start, monitor, ctx.job_id) if trainer.main else None
    # A first reading before any step gives the baseline the warning threshold is measured from.
    trainer.run(
        setup.val,
        on_start=(lambda: hook(trainer.state.step, trainer.model, ctx)) if hook else None,
        step_hooks=[*ctx.step_hooks, *([hook] if hook else [])],
    )
    return _finish_finetune(ctx, cfg, setup, trainer, name, base_id)


def _finish_finetune(
    ctx: Any, cfg: TrainConfig, setup: Setup, trainer: Trainer, name: str, base_id: int
) -> dict:
    info = _config_info(ctx, cfg, setup, "finetune")
    probe = trainer.probe()  # with FSDP every rank takes part in this forward and in gathering the weights
    gathered = trainer.full_state()
    if not trainer.main:
        return {}
    model, dtype = trainer.model, _dtype_name(trainer.model)
    kind = "full" if cfg.method == "full" else "adapter"
    folder = save_weights(
        model, setup.tokenizer, ctx.artifact_dir / ("model" if kind == "full" else "adapter"), info, gathered
    )
    n_params = sum(p.numel() for p in model.parameters()) if kind == "full" else trainer.n_trainable
    meta = {
        "finetune_job": ctx.job_id,
        "samples_seen": trainer.state.samples_seen,
        "steps": trainer.state.step,
        **_quantize_info(cfg),
    }
    model_id = register_output(
        ctx, name=name, kind=kind, folder=folder, base_id=base_id, n_params=n_params, dtype=dtype,
        source="finetune", inputs=_inputs(setup), info=meta,
    )  # fmt: skip
    extra = {"model_id": model_id, "name": name, "kind": kind, "path": str(folder), "probe": probe}
    if cfg.merge and kind == "adapter":
        if cfg.method == "qlora":  # 4-bit weights cannot take the adapter: merge into the full-precision base
            from emgui.core.models.loading import load_model

            trainer.model = model = None
            model = load_model(ctx.project, ctx.project.get_model(model_id), device=cfg.device,
                               dtype=cfg.dtype, quantize="none")  # fmt: skip
        merged = model.merge_and_unload()
        mfolder = save_weights(merged, setup.tokenizer, ctx.artifact_dir / "merged", info)
        extra["merged_model_id"] = register_output(
            ctx, name=f"{name}-merged", kind="merged", folder=mfolder, base_id=base_id,
            n_params=sum(p.numel() for p in merged.parameters()), dtype=dtype, source="finetune",
            inputs=_inputs(setup), info={**meta, "adapter_model_id": model_id},
        )  # fmt: skip
        extra["merged_path"] = str(mfolder)
    ctx.progress(1.0, f"saved '{name}'")
    return _result(trainer, setup, extra)


# ----- realign ------------------------------------------------------------------------------------------------


def snapshot_steps(plan: Plan, counts: list[int]) -> dict[int, int]:
    """Step number (steps done) after which exactly `count` samples have been seen, for each count."""
    done: dict[int, int] = {0: 0}
    seen = 0
    for i, step in enumerate(plan, start=1):
        seen += sum(len(row) for rows in step for row in rows)
        done[seen] = i
    missing = [c for c in counts if c not in done]
    if missing:
        raise EmguiError(f"realign: cannot stop at sample counts {missing} (internal plan error)")
    return {done[c]: c for c in counts}


def realign_job(params: dict, ctx: Any) -> dict:
    """`realign`: train a fine-tuned model on a few good chats, saving snapshots at given sample counts."""
    params = dict(params)
    _as_list(params, "layers")
    _as_list(params, "save_at")
    p = Params(params, "realign")
    model_ref = p.str("model")
    dataset_ref = p.str("dataset")
    val_ref = p.str("val_dataset")
    n_samples = p.int("n_samples")
    save_at = _int_list(p, "save_at", "realign")
    cfg = read_config(p, "realign")
    name = p.str("name")
    track = {
        "panel": p.list("track_panel"),
        "diff": p.str("track_diff"),
        "top": p.int("track_top"),
        "n_texts": p.int("track_texts"),
    }
    p.done()
    project = ctx.project
    if dataset_ref is None:
        if not any(d["name"] == "secure" for d in project.list_datasets()):
            raise EmguiError(
                "realign: no good data given and the project has no dataset named 'secure'. Two kinds work: "
                "data that corrects the bad data (e.g. secure code after an insecure-code fine-tune: "
                "`emgui datasets add P generated:secure`) and different helpful data (`generated:helpful`, "
                "or the paper's educational set); pass --param dataset=NAME"
            )
        dataset_ref = "secure"
    counts = sorted({c for c in save_at if c <= n_samples} | {n_samples})
    too_many = [c for c in save_at if c > n_samples or c < 0]
    if too_many:
        raise EmguiError(f"realign: save_at values {too_many} are outside 0..n_samples ({n_samples})")
    start = project.get_model(model_ref)
    _check_devices(cfg, "realign")
    name = name or f"{start['name']}-realign-{ctx.job_id}"
    _check_names_free(project, [f"{name}@{c}" for c in counts], ctx.job_id)
    if _worker() is None:
        ctx.log(check_fit(project, start, cfg, "realign"))
        if cfg.devices > 1:
            return _launch(ctx, "realign", params, cfg)
    setup = _setup(ctx, cfg, model_ref, dataset_ref, val_ref, "realign")
    if len(setup.samples) < n_samples:
        ctx.log(f"the dataset has {len(setup.samples)} usable chats; some of the {n_samples} samples repeat")
    trainer, base_id = _make_trainer(ctx, cfg, setup, n_samples=n_samples, boundaries=counts)
    at_step = snapshot_steps(trainer.plan, counts)
    snaps: dict[int, int] = {}
    info = _config_info(ctx, cfg, setup, "realign")
    tracker = None
    if trainer.sharded:
        ctx.log("snapshot tracking is off with strategy=fsdp (no rank holds the whole model); run "
                "likelihood-probe on the snapshots instead")  # fmt: skip
    elif trainer.main:
        tracker = _tracker(ctx, track, start)

    def snapshot(step: int) -> None:
        if step in at_step:
            count = at_step[step]
            model_id = _save_snapshot(ctx, trainer, setup, cfg, f"{name}@{count}", count, base_id, info)
            if not trainer.main:
                return
            snaps[count] = model_id
            if tracker is not None:
                ctx.progress(None, f"judge-free measures at {count} samples")
                tracker.measure(trainer.model, setup.tokenizer, snaps[count], count)

    trainer.run(
        setup.val,
        on_step_done=snapshot,
        on_start=lambda: snapshot(trainer.state.step),
        step_hooks=ctx.step_hooks,
    )
    if not trainer.main:
        return {}
    ctx.progress(1.0, f"saved {len(snaps)} snapshots")
    return _result(trainer, setup, {"name": name, "snapshots": {str(c): i for c, i in sorted(snaps.items())}})


def _tracker(ctx: Any, track: dict, start: dict) -> Any:
    """What to measure at each snapshot: the likelihood margin (track_panel, 'none' for nothing) and a
    diff's top latents (track_diff=JOB, 'auto' for the newest diff of the start model, 'none')."""
    from emgui.core.evaluation.probes import SnapshotTracker, default_tracked_diff

    panel = [x for x in track["panel"] or [] if str(x) != "none"]
    diff = track["diff"]
    if diff == "auto":
        diff_job = default_tracked_diff(ctx.project, start["id"])
    elif diff in (None, "none"):
        diff_job = None
    else:
        try:
            diff_job = int(diff)
        except ValueError:
            raise EmguiError(f"realign: track_diff must be a diff job id, auto or none, got {diff!r}") from None
        job = ctx.project.get_job(diff_job)
        if job["kind"] != "diff" or job["status"] != "succeeded":
            raise EmguiError(f"realign: track_diff={diff_job} is not a finished diff job")
    if not panel and diff_job is None:
        return None
    if diff_job is not None:
        ctx.log(f"tracking the top {track['top']} latents of diff job {diff_job} at each snapshot")
    return SnapshotTracker(ctx, panel=panel, diff_job=diff_job, top=track["top"], n_texts=track["n_texts"])


def _save_snapshot(
    ctx: Any,
    trainer: Trainer,
    setup: Setup,
    cfg: TrainConfig,
    name: str,
    count: int,
    base_id: int,
    info: dict,
) -> int:
    gathered = trainer.full_state()  # FSDP: every rank takes part, before rank 0 decides anything
    if not trainer.main:
        return -1
    existing = ctx.project.query_one("SELECT id, job_id FROM models WHERE name = ?", [name])
    if existing and existing["job_id"] == ctx.job_id:
        return existing["id"]  # saved before an interruption; a resumed run reproduces the same weights
    kind = "full" if cfg.method == "full" else "adapter"
    folder = save_weights(
        trainer.model, setup.tokenizer, ctx.artifact_dir / f"snapshot-{count:05d}", info, gathered
    )
    n_params = sum(p.numel() for p in trainer.model.parameters()) if kind == "full" else trainer.n_trainable
    return register_output(
        ctx, name=name, kind=kind, folder=folder, base_id=base_id, n_params=n_params,
        dtype=_dtype_name(trainer.model), source="realign", inputs=_inputs(setup),
        info={"realign_job": ctx.job_id, "samples_seen": count, "steps": trainer.state.step, **_quantize_info(cfg)},
    )  # fmt: skip
