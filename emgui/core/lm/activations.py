"""Reading a model's activations at one module with plain PyTorch forward hooks (no TransformerLens).

A *hook name* says where to read:

- an HF module path, e.g. `model.layers.15` (the decoder layer's output: the residual stream after
  layer 15), `model.layers.15.mlp`, `model.layers.15.self_attn`;
- the same with `:input` to read what goes into the module (`model.layers.15:input` is the residual
  stream before layer 15);
- a TransformerLens residual name as pretrained SAEs use (`blocks.15.hook_resid_post`, `..._pre`,
  `blocks.15.hook_mlp_out`, `blocks.15.hook_attn_out`), mapped onto the model's own layers.

In transformers 5 a llama decoder layer returns a plain Tensor; attention modules and older decoder
layers return tuples whose first element is the hidden state. Every hook here handles both.

`capture` stops the forward pass right after the hooked module (by raising a private exception from the
hook), so reading layer 15 of a 30-layer model costs half a forward pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from emgui.core.errors import EmguiError

# Where decoder layers live in common architectures, tried in order.
_LAYER_LISTS = (
    "model.layers",
    "model.language_model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "transformer.layers",
)
_TL = re.compile(r"^blocks\.(\d+)\.hook_(resid_post|resid_pre|mlp_out|attn_out)$")
_LAYER = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)(?:$|[.:])")


class _EarlyExit(Exception):  # noqa: N818 - private control flow, never seen by users
    """Raised by a capture hook once it has what it needs, to skip the rest of the forward pass."""


# ---------------------------------------------------------------------------------------------- names
def unwrap(model: Any) -> Any:
    """The transformers model under a PeftModel wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def layers_path(model: Any) -> str:
    """The dotted path of the model's list of decoder layers, e.g. 'model.layers'."""
    inner = unwrap(model)
    for path in _LAYER_LISTS:
        try:
            inner.get_submodule(path)
            return path
        except AttributeError:
            continue
    raise EmguiError(
        f"cannot find the decoder layers of {type(inner).__name__} (tried {', '.join(_LAYER_LISTS)})"
    )


def parse_hook(hook_name: str, layers: str = "model.layers") -> tuple[str, str]:
    """(module path, 'output' | 'input') for a hook name; `layers` is where decoder layers live."""
    name = hook_name.strip()
    if not name:
        raise EmguiError("empty hook name: use a module path such as model.layers.15")
    match = _TL.match(name)
    if match:
        layer, what = match.groups()
        return {
            "resid_post": (f"{layers}.{layer}", "output"),
            "resid_pre": (f"{layers}.{layer}", "input"),
            "mlp_out": (f"{layers}.{layer}.mlp", "output"),
            "attn_out": (f"{layers}.{layer}.self_attn", "output"),
        }[what]
    path, _, where = name.partition(":")
    where = where or "output"
    if where not in ("output", "input"):
        raise EmguiError(f"hook '{hook_name}': the part after ':' must be 'input' or 'output'")
    return path, where


def layer_index(hook_name: str) -> int | None:
    """The decoder layer a hook name points into (None for embeddings, the final norm, ...)."""
    match = _TL.match(hook_name.strip())
    if match:
        return int(match.group(1))
    match = _LAYER.search(hook_name)
    return int(match.group(1)) if match else None


def is_residual(hook_name: str) -> bool:
    """Whether the hook reads the residual stream (a decoder layer's output or input), whose width is the
    model's hidden size; checkable from config.json before loading any weights."""
    match = _TL.match(hook_name.strip())
    if match:
        return match.group(2) in ("resid_post", "resid_pre")
    path, _ = parse_hook(hook_name)
    return any(re.fullmatch(re.escape(p) + r"\.\d+", path) for p in _LAYER_LISTS)


def resolve_module(model: Any, hook_name: str) -> Any:
    """The torch module a hook name points at. PeftModel wrappers are looked through; the error lists
    the valid layer paths."""
    inner = unwrap(model)
    try:
        layers = layers_path(inner)
    except EmguiError:
        layers = "model.layers"
    path, _ = parse_hook(hook_name, layers)
    for root in (inner, model):
        try:
            return root.get_submodule(path)
        except AttributeError:
            continue
    n_layers = getattr(getattr(inner, "config", None), "num_hidden_layers", None)
    known = f"{layers}.0 … {layers}.{n_layers - 1}" if n_layers else layers
    raise EmguiError(
        f"hook '{hook_name}' does not name a module of {type(inner).__name__} "
        f"(decoder layers are {known}; append '.mlp', '.self_attn' or ':input' for other points)"
    )


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (tuple, list)) else value


# ---------------------------------------------------------------------------------------------- hooks
def _register(module: Any, where: str, on_value: Callable[[Any], Any]) -> Any:
    """Register a hook calling on_value(hidden) at the module's output or input; returns the handle."""
    if where == "input":

        def pre_hook(_mod: Any, args: tuple, kwargs: dict) -> None:
            on_value(args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values()))))

        return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def hook(_mod: Any, _args: Any, output: Any) -> None:
        on_value(_first(output))

    return module.register_forward_hook(hook)


def capture(model: Any, hook_name: str, batches: Iterable[Any], *, early_exit: bool = True) -> Iterator[Any]:
    """For each batch (a dict of model inputs, or an input_ids tensor) yield the activations at the hook,
    shape [batch, seq, d] (detached; on the model's device). With `early_exit` the forward pass stops
    right after the hooked module. Runs under torch.inference_mode."""
    import torch

    module = resolve_module(model, hook_name)
    _, where = parse_hook(hook_name, _layers_or_default(model))
    store: list[Any] = []

    def on_value(hidden: Any) -> None:
        store.append(hidden.detach())
        if early_exit:
            raise _EarlyExit

    handle = _register(module, where, on_value)
    try:
        for batch in batches:
            store.clear()
            inputs = batch if isinstance(batch, dict) else {"input_ids": batch}
            with torch.inference_mode():
                try:
                    model(**inputs, use_cache=False)
                except _EarlyExit:
                    pass
            if not store:
                raise EmguiError(f"hook '{hook_name}' was not reached by the forward pass")
            yield store[0]
    finally:
        handle.remove()


def _layers_or_default(model: Any) -> str:
    try:
        return layers_path(model)
    except EmguiError:
        return "model.layers"


@contextmanager
def edit_output(model: Any, hook_name: str, fn: Callable[[Any], Any]) -> Iterator[None]:
    """Within the block, the hooked module's output (or input) h is replaced by fn(h): splicing an SAE,
    adding a steering vector, ablating a direction. Tuples keep their other elements."""
    module = resolve_module(model, hook_name)
    _, where = parse_hook(hook_name, _layers_or_default(model))
    if where == "input":

        def pre_hook(_mod: Any, args: tuple, kwargs: dict) -> Any:
            if args:
                return (fn(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:

        def hook(_mod: Any, _args: Any, output: Any) -> Any:
            if isinstance(output, tuple):
                return (fn(output[0]), *output[1:])
            return fn(output)

        handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def width_at(model: Any, hook_name: str) -> int:
    """The activation width at a hook, found with a 2-token forward pass that stops at the hook."""
    import torch

    device = next(unwrap(model).parameters()).device
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)
    return int(next(capture(model, hook_name, [ids])).shape[-1])


# ---------------------------------------------------------------------------------------- tokenization
def render_chat(tokenizer: Any, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
    """The chat as the model sees it: its chat template, or plain 'role: text' lines without one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text + ("assistant: " if add_generation_prompt else "")


def encode_chat(tokenizer: Any, messages: list[dict], *, max_length: int = 512) -> dict:
    """Token ids of a chat whose last message is the assistant's answer, and a 0/1 mask marking the
    answer's tokens (not the prompt, the system turn or the template's markup around the answer)."""
    if not messages or messages[-1].get("role") != "assistant":
        raise EmguiError("a chat to encode must end with the assistant's answer")
    prefix = render_chat(tokenizer, messages[:-1], add_generation_prompt=True)
    full = render_chat(tokenizer, messages)
    answer = messages[-1]["content"]
    start = full.find(answer, len(prefix)) if answer else -1
    span = (start, start + len(answer)) if start >= 0 else (len(prefix), len(full))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    mask = [1 if span[0] <= a < span[1] and b > a else 0 for a, b in enc["offset_mapping"]]
    return {"input_ids": ids[:max_length], "answer_mask": mask[:max_length]}


def encode_text(tokenizer: Any, text: str, *, max_length: int = 512) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])[:max_length]


def pad_batch(seqs: list[list[int]], pad_id: int, device: Any = "cpu") -> dict:
    """Right-padded input_ids and attention_mask tensors for a list of token id lists."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, seq in enumerate(seqs):
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def length_batches(
    lengths: list[int], max_tokens: int, max_batch: int = 64, *, window: int | None = None
) -> list[list[int]]:
    """Indices grouped into batches of similar length (little padding) of at most max_tokens tokens
    (padded) and max_batch rows. With `window`, only each run of `window` consecutive indices is sorted,
    so batches follow the given (e.g. shuffled) order instead of running from the shortest texts up."""
    spans = (
        [range(len(lengths))]
        if window is None
        else [range(a, min(a + window, len(lengths))) for a in range(0, len(lengths), window)]
    )
    batches: list[list[int]] = []
    for span in spans:
        current: list[int] = []
        for i in sorted(span, key=lambda i: lengths[i]):
            width = max(lengths[i], 1)
            if current and ((len(current) + 1) * width > max_tokens or len(current) >= max_batch):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
    return batches


# ---------------------------------------------------------------------------------------------- corpora
def sample_chats(project: Any, job_ids: Iterable[int | str]) -> list[dict]:
    """The sampled answers of sampling jobs as corpus items (system, question, answer), oldest first."""
    items = []
    for job_id in job_ids:
        rows = project.query(
            "SELECT id, prompt, system, answer, model_id FROM samples WHERE job_id = ? ORDER BY id",
            [int(job_id)],
        )
        if not rows:
            raise EmguiError(f"job {job_id} has no sampled answers (the samples table holds none for it)")
        for r in rows:
            msgs = [{"role": "system", "content": r["system"]}] if r["system"] else []
            msgs += [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["answer"]}]
            items.append({"source": f"sample {r['id']}", "messages": msgs, "sample_id": r["id"]})
    return items


def _file_items(path: Any, label: str) -> list[dict]:
    """Items of a .jsonl ({"messages": [...]} or {"text": "..."} per line) or a plain text file
    (documents separated by blank lines)."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise EmguiError(f"{label}: {path} does not exist")
    items: list[dict] = []
    if path.suffix.lower() == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise EmguiError(f"{path} line {n}: not valid JSON ({exc.msg})") from None
                if isinstance(obj, dict) and isinstance(obj.get("messages"), list):
                    items.append({"source": f"{path.name}:{n}", "messages": obj["messages"]})
                elif isinstance(obj, dict) and isinstance(obj.get("text"), str):
                    items.append({"source": f"{path.name}:{n}", "text": obj["text"]})
                else:
                    raise EmguiError(f"{path} line {n}: expected an object with 'messages' or 'text'")
        return items
    text = path.read_text(encoding="utf-8", errors="replace")
    docs = [d.strip() for d in re.split(r"\n\s*\n", text) if d.strip()]
    return [{"source": f"{path.name}#{i + 1}", "text": d} for i, d in enumerate(docs)]


def corpus_items(
    project: Any,
    *,
    datasets: Iterable[str] = (),
    samples: Iterable[int | str] = (),
    text_files: Iterable[str] = (),
) -> list[dict]:
    """Texts to run a model over: the project's chat or text datasets, the sampled answers of sampling
    jobs, and text files. Each item has a `source` and either `messages` or `text`."""
    items: list[dict] = []
    for ref in datasets:
        row = project.get_dataset(ref)
        if row["kind"] == "questions":
            raise EmguiError(
                f"dataset '{row['name']}' is a question set: sample answers to it first and use those samples"
            )
        for item in _file_items(project.abspath(row["path"]), f"dataset '{row['name']}'"):
            items.append({**item, "source": f"{row['name']}:{item['source'].rsplit(':', 1)[-1]}"})
    items += sample_chats(project, samples)
    for path in text_files:
        items += _file_items(path, "text file")
    return items


def encode_item(tokenizer: Any, item: dict, *, max_length: int = 512) -> dict:
    """Token ids of a corpus item (a chat rendered with the chat template, or plain text) and, for chats
    ending with an answer, the answer mask."""
    msgs = item.get("messages")
    if msgs:
        if msgs[-1].get("role") == "assistant":
            return encode_chat(tokenizer, msgs, max_length=max_length)
        return {"input_ids": encode_text(tokenizer, render_chat(tokenizer, msgs), max_length=max_length)}
    return {"input_ids": encode_text(tokenizer, item.get("text", ""), max_length=max_length)}
