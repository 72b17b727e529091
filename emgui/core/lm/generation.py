"""Batched chat generation: many conversations through `model.generate`, left-padded, in chat format.

Used by evaluation sampling and by steering (which installs forward hooks around a call), so it knows
nothing about projects or jobs. Conversations are sorted by prompt length before batching (less padding);
the answers come back in the caller's order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from emgui.core.errors import Cancelled

OnBatch = Callable[[list[int], list[str]], None]
OnToken = Callable[[int, int, int], None]  # (answers done before this batch, batch size, tokens so far)


def render_prompts(tokenizer: Any, conversations: Sequence[list[dict]]) -> list[str]:
    """The chat template with the assistant turn opened; a plain fallback for base models without one."""
    if getattr(tokenizer, "chat_template", None):
        return [
            tokenizer.apply_chat_template(list(conv), tokenize=False, add_generation_prompt=True)
            for conv in conversations
        ]
    # Base models: a transparent plain-text format, so the model at least sees whose turn it is.
    out = []
    for conv in conversations:
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in conv]
        out.append("\n\n".join(lines) + "\n\nAssistant:")
    return out


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (config_eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.append(value)
        elif isinstance(value, (list, tuple)):
            ids.extend(int(v) for v in value)
    return sorted(set(ids))


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def _generate_kwargs(temperature: float, top_p: float, max_new_tokens: int, pad_id: int, stop_ids: list) -> dict:
    """model.generate's settings: sampling at a temperature with nucleus top_p, or greedy for temperature 0."""
    sampling = temperature > 0
    kwargs: dict[str, Any] = {
        "max_new_tokens": int(max_new_tokens),
        "do_sample": sampling,
        "pad_token_id": pad_id,
        "eos_token_id": stop_ids or None,
    }
    if sampling:
        kwargs.update(temperature=float(temperature), top_p=float(top_p), top_k=0)
    else:  # silence the model's own sampling defaults for greedy decoding
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


def generate_batch(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[list[dict]],
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    seed: int = 0,
    batch_size: int = 8,
    should_cancel: Callable[[], bool] | None = None,
    on_batch: OnBatch | None = None,
    on_token: OnToken | None = None,
) -> list[str]:
    """Answer each conversation (a list of {"role", "content"}); temperature 0 means greedy.

    Deterministic for a seed and the same inputs: each batch reseeds torch from `seed` and its index.
    `on_batch(indices, answers)` is called after each batch with the original indices it answered;
    `should_cancel()` is polled between tokens, and a True stops the batch and raises Cancelled;
    `on_token(done, batch, tokens)` is called after each generated token (a progress line that moves
    while a long batch runs).
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _CancelCriteria(StoppingCriteria):
        def __init__(self) -> None:
            self.done, self.batch, self.prompt_len = 0, 0, 0

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            if on_token is not None:
                on_token(self.done, self.batch, int(input_ids.shape[1]) - self.prompt_len)
            stop = bool(should_cancel and should_cancel())
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    watch = _CancelCriteria()

    prompts = render_prompts(tokenizer, conversations)
    if not prompts:
        return []
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop_ids = _stop_ids(model, tokenizer)
    device = _device(model)
    answers: list[str] = [""] * len(prompts)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation appends on the right: prompts must end at the same column
    try:
        for b, start in enumerate(range(0, len(order), max(1, batch_size))):
            if should_cancel and should_cancel():
                raise Cancelled("generation cancelled")
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
            )
            enc = {k: v.to(device) for k, v in enc.items()}
            watch.done, watch.batch, watch.prompt_len = start, len(idx), int(enc["input_ids"].shape[1])
            polled = should_cancel is not None or on_token is not None
            kwargs = _generate_kwargs(temperature, top_p, max_new_tokens, pad_id, stop_ids)
            kwargs["stopping_criteria"] = StoppingCriteriaList([watch]) if polled else None
            torch.manual_seed(int(seed) * 100_003 + b)
            with torch.inference_mode():
                out = model.generate(**enc, **kwargs)
            if should_cancel and should_cancel():
                raise Cancelled("generation cancelled")
            new = out[:, enc["input_ids"].shape[1] :]
            texts = [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
            for i, text in zip(idx, texts, strict=True):
                answers[i] = text
            if on_batch is not None:
                on_batch(list(idx), texts)
    finally:
        tokenizer.padding_side = old_side
    return answers
