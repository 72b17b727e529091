"""Will it fit? The memory a fine-tune needs, estimated from the model's config before anything is loaded.

The estimate adds, per device: the weights (full precision, or 4-bit NF4 for QLoRA), the trained weights'
gradients and AdamW's two moments, the activations autograd keeps for the backward pass, the logits with
their softmax and its gradient, and a fixed overhead (the CUDA context, or on the CPU the Python process
itself). It is compared with the free memory of the chosen device(s); a job that will not fit is refused at
submit with settings that would (`suggest_fits`).

Activations are counted per token and per decoder layer from what a Llama-style layer saves for backward
(SDPA with grouped-query attention, SwiGLU MLP, RMSNorm), in the compute dtype:
  - the two RMSNorms: input and output, 2 x d each;
  - attention: q and its output (2 x heads*head_dim), k and v (2 x kv_heads*head_dim), and the output's
    contiguous copy that o_proj reads (heads*head_dim);
  - the MLP: gate, SiLU(gate), up and their product, 4 x d_ff.
Full fine-tuning saves the same tensors (the linear layers' inputs). Gradient checkpointing keeps only each
layer's input and recomputes one layer at a time in the backward pass. On the CPU, glibc's malloc keeps the
forward pass's freed temporaries resident (heap fragmentation): measured, about 0.7 x a whole forward pass's
activations beyond the live tensors, with or without checkpointing (the `allocator` part); CUDA's caching
allocator is counted by torch, and `max_memory_allocated` sees live tensors only. The logits term assumes every token is
learned (an upper bound: only assistant tokens are). `bench/bench_memory.py` checks all this against the
measured peak for several model sizes (within 25 % on the CPU here).

Qt-free and torch-free: `free_bytes` imports torch only to ask CUDA.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from emgui.core.errors import EmguiError

GIB = 2**30
CPU_OVERHEAD = 0.6e9  # Python, torch, transformers and the tokenizer, resident before any weight loads
CPU_HEAP_SLACK = 0.7  # resident beyond live tensors on the CPU, per byte of a forward pass's activations
CUDA_OVERHEAD = 0.8e9  # the CUDA context and cuBLAS workspaces, outside torch's allocator
NF4_BYTES = 0.5 + 0.5 / 64 * 1.06  # 4 bits, plus a double-quantised absmax per 64-weight block
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}


# ----- the model's shape --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs from a decoder-only model's config."""

    n_layers: int
    d_model: int
    d_ff: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    tied: bool = False
    n_params: int = 0  # 0: counted from the shape

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer in one decoder layer, by its usual module name."""
        d, f = self.d_model, self.d_ff
        return {
            "q_proj": (d, self.q_dim),
            "k_proj": (d, self.kv_dim),
            "v_proj": (d, self.kv_dim),
            "o_proj": (self.q_dim, d),
            "gate_proj": (d, f),
            "up_proj": (d, f),
            "down_proj": (f, d),
        }

    @property
    def layer_linear_params(self) -> int:
        return sum(i * o for i, o in self.linear_shapes().values())

    @property
    def linear_params(self) -> int:
        """Weights in the decoder layers' linear layers: what QLoRA stores in 4 bits."""
        return self.n_layers * self.layer_linear_params

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.d_model * (1 if self.tied else 2)

    @property
    def total_params(self) -> int:
        counted = self.linear_params + self.embedding_params + self.n_layers * 2 * self.d_model + self.d_model
        return self.n_params or counted


def _first(config: dict, *keys: str) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return None


def shape_from_config(config: dict, n_params: int = 0) -> ModelShape:
    """A shape from a Hugging Face config.json (Llama, Qwen, Mistral, Gemma, GPT-2 style keys)."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    d = _first(text, "hidden_size", "n_embd", "d_model")
    layers = _first(text, "num_hidden_layers", "n_layer", "num_layers")
    vocab = _first(text, "vocab_size")
    if not (d and layers and vocab):
        raise EmguiError("the model's config has no hidden_size, num_hidden_layers or vocab_size")
    heads = _first(text, "num_attention_heads", "n_head") or max(1, d // 64)
    kv = _first(text, "num_key_value_heads") or heads
    head_dim = _first(text, "head_dim") or d // heads
    d_ff = _first(text, "intermediate_size", "n_inner", "ffn_dim") or 4 * d
    tied = bool(_first(text, "tie_word_embeddings") if "tie_word_embeddings" in text else
                config.get("tie_word_embeddings", False))  # fmt: skip
    return ModelShape(int(layers), int(d), int(d_ff), int(heads), int(kv), int(head_dim), int(vocab), tied,
                      int(n_params or 0))  # fmt: skip


def shape_from_folder(folder: str | Path, n_params: int = 0) -> ModelShape:
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EmguiError(f"cannot read the model's config {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise EmguiError(f"{path} is not a JSON object")
    return shape_from_config(config, n_params)


def model_shape(project: Any, model_row: dict) -> ModelShape | None:
    """The shape of a registered model (an adapter's: its base's), or None when its config is unreadable."""
    row = model_row
    for _ in range(8):  # adapters of adapters, never a cycle
        if row["kind"] != "adapter":
            break
        if not row.get("base_model_id"):
            return None
        row = project.get_model(row["base_model_id"])
    path = project.model_path(row)
    if path.is_file():  # a .gguf the model was converted from: its info holds the shape
        info = row.get("info") or {}
        if not (info.get("d_model") and info.get("n_layers")):
            return None
        return shape_from_config(
            {"hidden_size": info["d_model"], "num_hidden_layers": info["n_layers"],
             "vocab_size": info.get("vocab_size") or 32000}, row.get("n_params") or 0)  # fmt: skip
    try:
        return shape_from_folder(path, row.get("n_params") or 0)
    except EmguiError:
        return None


# ----- the settings that matter ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FitSettings:
    method: str = "lora"  # full | lora | qlora
    dtype: str = "fp32"  # the compute dtype: fp32 | bf16 | fp16
    batch_size: int = 4  # rows per device per micro-batch
    max_len: int = 512
    grad_accum: int = 1
    gradient_checkpointing: bool = False
    lora_r: int = 8
    target_modules: Any = "all-linear"
    layers: tuple[int, ...] | None = None
    devices: int = 1
    strategy: str = "ddp"  # ddp | fsdp
    device_kind: str = "cpu"  # cpu | cuda | mps
    full_logits: bool = False  # the loss computes logits at every position (not only labelled ones)

    @property
    def tokens(self) -> int:
        return self.batch_size * self.max_len


@dataclass
class Estimate:
    """Bytes per device, by part."""

    parts: dict[str, float]
    settings: FitSettings
    shape: ModelShape
    trainable: int

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    @property
    def model_bytes(self) -> float:
        """Everything but the fixed overhead: what `torch.cuda.max_memory_allocated` sees."""
        return self.total - self.parts.get("overhead", 0.0)

    def describe(self) -> str:
        names = ("weights", "trainable", "activations", "logits", "allocator", "overhead")
        shown = ", ".join(f"{n} {self.parts[n] / GIB:.2f}" for n in names if self.parts.get(n, 0) >= 0.005 * GIB)
        per = " per device" if self.settings.devices > 1 else ""
        return f"about {self.total / GIB:.2f} GiB{per} ({shown} GiB)"


def _lora_targets(shape: ModelShape, target_modules: Any) -> dict[str, tuple[int, int]]:
    linears = shape.linear_shapes()
    if target_modules in (None, "all-linear", ["all-linear"]):
        return linears
    names = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    picked = {n: linears[n] for n in linears if any(str(t).split(".")[-1] == n for t in names)}
    return picked or linears  # names we do not know: assume every linear layer (an upper bound)


def trainable_params(shape: ModelShape, s: FitSettings) -> int:
    if s.method == "full":
        return shape.total_params
    layers = len(s.layers) if s.layers else shape.n_layers
    per_layer = sum(s.lora_r * (i + o) for i, o in _lora_targets(shape, s.target_modules).values())
    return layers * per_layer


def activation_bytes_per_token(shape: ModelShape, s: FitSettings) -> float:
    """What one decoder layer saves for the backward pass, per token (see the module's docstring)."""
    d, f = shape.d_model, shape.d_ff
    elements = 4 * d + 3 * shape.q_dim + 2 * shape.kv_dim + 4 * f
    if s.method != "full":
        elements += s.lora_r * len(_lora_targets(shape, s.target_modules))
    return elements * DTYPE_BYTES.get(s.dtype, 4)


def estimate(shape: ModelShape, s: FitSettings) -> Estimate:
    """Peak bytes per device for training with settings `s` (see the module's docstring)."""
    wbytes = DTYPE_BYTES.get(s.dtype, 4)
    shard = s.devices if s.strategy == "fsdp" and s.devices > 1 else 1
    trainable = trainable_params(shape, s)
    if s.method == "qlora":
        # embeddings and norms stay in the compute dtype (emgui does not upcast them as peft's recipe does)
        others = shape.total_params - shape.linear_params
        weights = shape.linear_params * NF4_BYTES + others * wbytes
    else:
        weights = shape.total_params * wbytes
    if s.method == "full":
        # AdamW keeps its moments in the parameters' dtype; gradients too
        states, grads = 2 * trainable * wbytes, trainable * wbytes
        weights, states, grads = weights / shard, states / shard, grads / shard
        if shard > 1:  # FSDP gathers one layer's full weights (and their gradients) at a time
            weights += 2 * shape.layer_linear_params * wbytes
    else:
        # LoRA weights in fp32 (peft upcasts adapters), their gradients and two fp32 moments
        states, grads = 2 * trainable * 4, trainable * 4
        weights = weights / shard + trainable * 4
        if shard > 1:
            weights += shape.layer_linear_params * (NF4_BYTES if s.method == "qlora" else wbytes)
    tokens = s.tokens
    per_layer = activation_bytes_per_token(shape, s)
    checkpointing = s.gradient_checkpointing or s.method == "qlora"  # QLoRA turns it on
    if checkpointing:  # each layer's input, plus one layer recomputed in the backward pass
        acts = tokens * (shape.n_layers * shape.d_model * wbytes + per_layer)
    else:
        acts = tokens * shape.n_layers * per_layer
    acts += tokens * 4 * shape.d_model * wbytes  # embeddings out, final norm in/out, the hidden states read
    # fp32 at the loss's backward: the log-softmax output kept for it, the incoming gradient and the logits'
    # gradient (measured: 3 x n x vocab x 4 bytes); in bf16 also the logits before their cast to fp32
    logits = tokens * shape.vocab_size * (3 * 4 + (wbytes if wbytes < 4 else 0))
    if s.method == "full":
        # gradients fill up as activations are freed; AdamW's step allocates one temporary per weight
        extra = max(0.0, grads + trainable * wbytes / shard - (acts + logits))
        trained = states + extra
    else:
        trained = states + grads
    parts = {
        "weights": weights,
        "trainable": trained,
        "activations": acts,
        "logits": logits,
        "overhead": CUDA_OVERHEAD if s.device_kind == "cuda" else CPU_OVERHEAD,
    }
    if s.device_kind == "cpu":
        # glibc's malloc keeps the forward pass's freed temporaries resident (checkpointed or not)
        parts["allocator"] = CPU_HEAP_SLACK * tokens * shape.n_layers * per_layer
    return Estimate(parts, s, shape, trainable)


# ----- free memory and advice ------------------------------------------------------------------------------


def free_bytes(device_kind: str = "cpu", devices: int = 1) -> list[float]:
    """Free memory of each device that would be used: CUDA's own count per GPU, else the system's
    available memory (MemAvailable), shared by every process (so split between `devices` of them)."""
    override = os.environ.get("EMGUI_FREE_MEMORY")  # for tests and for machines that misreport
    if override:
        return [float(override)] * devices
    if device_kind == "cuda":
        import torch

        visible = torch.cuda.device_count()
        return [float(torch.cuda.mem_get_info(i)[0]) for i in range(min(devices, visible))]
    available = _mem_available()
    return [available / devices] * devices


def _mem_available() -> float:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return math.inf


def visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


@dataclass
class FitReport:
    estimate: Estimate
    free: list[float]
    fits: bool
    suggestions: list[tuple[dict, float]] = field(default_factory=list)  # (changed params, bytes)

    @property
    def text(self) -> str:
        s = self.estimate.settings
        where = s.device_kind if s.devices == 1 else f"each of {s.devices} {s.device_kind} devices"
        free = min(self.free) if self.free else math.inf
        have = f"{free / GIB:.1f} GiB free" if math.isfinite(free) else "free memory unknown"
        return f"memory: {self.estimate.describe()} on {where}; {have}"

    def advice(self) -> str:
        if not self.suggestions:
            return "no setting emgui knows makes it fit: use a smaller model or a device with more memory"
        shown = [
            " ".join(f"{k}={_fmt(v)}" for k, v in change.items()) + f" (about {need / GIB:.1f} GiB)"
            for change, need in self.suggestions
        ]
        return "settings that would fit: " + "; ".join(shown)


def _fmt(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _candidates(s: FitSettings, gpus: int) -> list[dict]:
    """Changes to try, cheapest first; each keeps the global batch (batch_size x grad_accum x devices)."""
    out: list[dict] = []
    if not s.gradient_checkpointing and s.method != "qlora":
        out.append({"gradient_checkpointing": True})
    if s.method != "qlora":
        out.append({"method": "qlora", "gradient_checkpointing": True})
    smaller = [b for b in range(s.batch_size - 1, 0, -1) if s.batch_size % b == 0]
    for b in smaller:
        accum = s.grad_accum * s.batch_size // b
        out.append({"batch_size": b, "grad_accum": accum})
        out.append({"batch_size": b, "grad_accum": accum, "gradient_checkpointing": True})
        if s.method != "qlora":
            out.append({"method": "qlora", "gradient_checkpointing": True, "batch_size": b, "grad_accum": accum})
    if s.device_kind == "cuda" and gpus > s.devices:
        for n in range(max(2, s.devices * 2), gpus + 1):
            if gpus % n == 0 or n == gpus:
                out.append({"devices": n, "strategy": "fsdp"})
                out.append({"devices": n, "strategy": "fsdp", "gradient_checkpointing": True})
    return out


def suggest_fits(shape: ModelShape, s: FitSettings, free: float, gpus: int = 0, limit: int = 3) -> list[tuple[dict, float]]:
    """Up to `limit` changes to the settings under which the estimate fits in `free` bytes per device."""
    found: list[tuple[dict, float]] = []
    for change in _candidates(s, gpus):
        settings = replace(s, **change)
        need = estimate(shape, settings).total
        if need <= free and not any(set(prev.items()) <= set(change.items()) for prev, _ in found):
            found.append((change, need))
        if len(found) >= limit:
            break
    return found


def fit_report(shape: ModelShape, s: FitSettings, free: list[float] | None = None) -> FitReport:
    free = free_bytes(s.device_kind, s.devices) if free is None else free
    est = estimate(shape, s)
    room = min(free) if free else math.inf
    fits = est.total <= room and len(free) >= s.devices
    suggestions = [] if fits else suggest_fits(shape, s, room, visible_gpus() if s.device_kind == "cuda" else 0)
    return FitReport(est, free, fits, suggestions)
