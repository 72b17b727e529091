"""Steering and ablation with forward hooks, directions, presets, and token-by-token generation.

A `SteeringSpec` lists interventions (a stored direction, or an SAE latent), each with a strength and
a method, plus the positions steered. It is plain JSON (presets live in `steering_presets`). `resolve`
turns it into tensors for one model; `steer(model, resolved)` installs forward hooks for a `with` block.

Methods, on the residual stream h at the hooked module's output, with u the unit direction:
- add:    h + strength * u
- ablate: h - (h.u) u                     (no component along u is left)
- clamp:  a direction: h + (v - h.u) u    (its projection is set to v = strength)
          an SAE latent i: h + (v - z_i) d_i, with z = encode(h) and d_i its decoder row, norms folded
          (z_i * |W_dec_i|, W_dec_i / |W_dec_i|). This is h + decode(z') - decode(z) since decode is
          affine: only latent i changes and the SAE's reconstruction error is kept.

Positions: "prompt" steers the prompt tokens except the last; "answer" steers the last prompt position
(it predicts the first answer token) and every generated one; "all" steers everything. With a KV cache,
a forward call with several positions starts a sequence (the prompt) and later calls bring one new
position each, so each hook counts positions itself; `SteerHandle.begin(prompt_len)` fixes the prompt
length when one forward holds a prompt and its answer. With left padding (batched generation) every
row's prompt ends at the same index, so the rule holds for batches too.

Directions are rows of the `directions` table with a .safetensors file holding a tensor "direction".
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emgui.core.errors import EmguiError
from emgui.core.project.store import slug

METHODS = ("add", "ablate", "clamp")
POSITIONS = ("all", "prompt", "answer")
TYPES = ("direction", "latent")
DIRECTION_KINDS = ("diff-means", "persona", "file", "random", "sae-latent", "other")


# ----- the spec (JSON) -----------------------------------------------------------------------------------


@dataclass
class Intervention:
    """One thing to steer with. `strength` is alpha for add and the target value for clamp (unless
    `clamp_value` is given); ablate ignores it. `hook_name` overrides where a direction applies."""

    type: str = "direction"
    direction_id: int | None = None
    sae_id: int | None = None
    latent: int | None = None
    strength: float = 0.0
    method: str = "add"
    clamp_value: float | None = None
    hook_name: str | None = None
    label: str = ""
    enabled: bool = True

    @property
    def value(self) -> float:
        """The number the method uses: alpha for add, the clamp target for clamp."""
        if self.method == "clamp" and self.clamp_value is not None:
            return float(self.clamp_value)
        return float(self.strength)

    def check(self, where: str) -> None:
        if self.type not in TYPES:
            raise EmguiError(f"{where}: type must be one of {', '.join(TYPES)}, got {self.type!r}")
        if self.method not in METHODS:
            raise EmguiError(f"{where}: method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.type == "direction" and self.direction_id is None:
            raise EmguiError(f"{where}: a direction intervention needs direction_id")
        if self.type == "latent" and (self.sae_id is None or self.latent is None):
            raise EmguiError(f"{where}: a latent intervention needs sae_id and latent")


@dataclass
class SteeringSpec:
    interventions: list[Intervention] = field(default_factory=list)
    positions: str = "all"
    hook_name: str | None = None  # where directions apply unless they say; None: each direction's own
    layer: int | None = None  # shorthand for the output of decoder layer `layer`

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict, where: str = "steering spec") -> SteeringSpec:
        if not isinstance(data, dict):
            raise EmguiError(f"{where}: expected an object, got {type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EmguiError(f"{where}: unknown field(s) {', '.join(unknown)}")
        items = []
        fields = set(Intervention.__dataclass_fields__)
        for i, raw in enumerate(data.get("interventions") or []):
            here = f"{where}, interventions[{i}]"
            if not isinstance(raw, dict):
                raise EmguiError(f"{here}: expected an object")
            bad = sorted(set(raw) - fields)
            if bad:
                raise EmguiError(f"{here}: unknown field(s) {', '.join(bad)}")
            item = Intervention(**raw)
            try:
                item.strength = float(item.strength)
            except (TypeError, ValueError):
                raise EmguiError(f"{here}: strength must be a number, got {raw.get('strength')!r}") from None
            item.check(here)
            items.append(item)
        spec = cls(
            interventions=items,
            positions=data.get("positions", "all"),
            hook_name=data.get("hook_name"),
            layer=data.get("layer"),
        )
        if spec.layer is not None and (isinstance(spec.layer, bool) or not isinstance(spec.layer, int)):
            raise EmguiError(f"{where}: layer must be a layer number, got {spec.layer!r}")
        if spec.positions not in POSITIONS:
            raise EmguiError(
                f"{where}: positions must be one of {', '.join(POSITIONS)}, got {spec.positions!r}"
            )
        return spec

    @classmethod
    def from_json(cls, text: str, where: str = "steering spec") -> SteeringSpec:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise EmguiError(f"{where}: not valid JSON ({exc})") from None
        return cls.from_dict(data, where)


# ----- modules of a model ---------------------------------------------------------------------------------


def _unwrap(model: Any) -> Any:
    """The transformers model inside a peft wrapper (module names are the same below it)."""
    from emgui.core.lm.activations import unwrap

    return unwrap(model)


def resolve_module(model: Any, hook_name: str) -> Any:
    """The module a hook name points at (see emgui.core.lm.activations: HF paths, ':input', TransformerLens names)."""
    from emgui.core.lm.activations import resolve_module as resolve

    return resolve(model, hook_name)


def n_layers(model: Any) -> int:
    from emgui.core.lm.activations import layers_path

    return len(_unwrap(model).get_submodule(layers_path(model)))


def layer_hook_name(model: Any, layer: int) -> str:
    """The hook name of decoder layer `layer`'s output (the residual stream after it)."""
    from emgui.core.lm.activations import layers_path

    count = n_layers(model)
    if not -count <= layer < count:
        raise EmguiError(f"layer {layer} is out of range: the model has {count} layers")
    return f"{layers_path(model)}.{layer % count}"


def layer_of(hook_name: str) -> int | None:
    """The decoder layer in a hook name like "model.layers.15" (None when there is none)."""
    from emgui.core.lm.activations import layer_index

    return layer_index(hook_name or "")


def hidden_size(model: Any) -> int:
    config = _unwrap(model).config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.hidden_size)


def _model_device_dtype(model: Any) -> tuple[Any, Any]:
    """Where the residual stream lives and its dtype (a 4-bit model's packed uint8 weights say neither)."""
    params = list(_unwrap(model).parameters())
    param = next((p for p in params if p.is_floating_point()), params[0])
    return param.device, param.dtype


# ----- resolved interventions and hooks ------------------------------------------------------------------


@dataclass
class ResolvedIntervention:
    """An intervention as tensors. `unit` is the unit direction; for a latent, its (unit) decoder row.
    `encode` (clamping a latent) maps h to the latent's activation in folded units."""

    hook_name: str
    method: str
    value: float
    unit: Any
    norm: float = 1.0
    encode: Callable[[Any], Any] | None = None
    label: str = ""

    def apply(self, h: Any, mask: Any) -> Any:
        """h steered; `mask` (1, T, 1) selects positions, None means all."""
        import torch

        u = self.unit
        if self.method == "add":
            delta = (self.value * u).to(h.dtype)
            return h + (delta if mask is None else mask * delta)
        if self.method == "ablate":
            coeff = -(h.float() @ u.float())
        elif self.encode is not None:  # clamp an SAE latent, keeping the SAE's error
            coeff = self.value - self.encode(h).float()
        else:  # clamp a direction's projection
            coeff = self.value - (h.float() @ u.float())
        coeff = coeff.unsqueeze(-1)
        if mask is not None:
            coeff = coeff * mask
        return (h.float() + coeff * u.float()).to(h.dtype) if h.dtype != torch.float32 else h + coeff * u


@dataclass
class ResolvedSteering:
    spec: SteeringSpec
    items: list[ResolvedIntervention]

    @property
    def active(self) -> bool:
        return bool(self.items)


class _Positions:
    """Counts the positions one hooked module has seen in the current sequence."""

    def __init__(self, positions: str):
        self.positions = positions
        self.fixed: int | None = None
        self.prompt_len = 0
        self.seen = 0

    def mask(self, h: Any) -> Any:
        """The (1, T, 1) mask of steered positions for this call, or None for all of them."""
        import torch

        t = h.shape[1]
        if t > 1 or self.seen == 0:  # a new sequence (the prompt, or one forward of a whole text)
            self.seen = 0
            self.prompt_len = self.fixed if self.fixed is not None else t
        start = self.seen
        self.seen += t
        if self.positions == "all":
            return None
        idx = torch.arange(start, start + t, device=h.device)
        cut = self.prompt_len - 1  # the last prompt position predicts the first answer token
        keep = idx >= cut if self.positions == "answer" else idx < cut
        return keep.to(h.dtype).view(1, t, 1)


class SteerHandle:
    """What `steer` yields: `begin(prompt_len)` before a forward that holds a prompt and its answer."""

    def __init__(self) -> None:
        self.trackers: list[_Positions] = []
        self.calls = 0
        self.enabled = True  # stream_generate turns the hooks on only around its own forward calls

    def begin(self, prompt_len: int | None) -> None:
        for tracker in self.trackers:
            tracker.fixed = prompt_len
            tracker.seen = 0


@contextmanager
def steer(
    model: Any, steering: ResolvedSteering | None, *, this_thread_only: bool = False
) -> Iterator[SteerHandle]:
    """Install the hooks for a `with` block. With `this_thread_only`, they act only on forwards run in the
    calling thread, so an unsteered stream can share the model from another thread at the same time."""
    handle = SteerHandle()
    if steering is None or not steering.items:
        yield handle
        return
    device, dtype = _model_device_dtype(model)
    by_module: dict[str, list[ResolvedIntervention]] = {}
    for item in steering.items:
        unit = item.unit.to(device=device, dtype=dtype if item.method == "add" else item.unit.dtype)
        moved = ResolvedIntervention(
            item.hook_name, item.method, item.value, unit, item.norm, item.encode, item.label
        )
        by_module.setdefault(item.hook_name, []).append(moved)
    owner = threading.get_ident()
    removers = []
    try:
        for name, items in by_module.items():
            tracker = _Positions(steering.spec.positions)
            handle.trackers.append(tracker)
            removers.append(
                _install(model, name, _make_edit(items, tracker, owner, this_thread_only, handle))
            )
        yield handle
    finally:
        for remover in removers:
            remover.remove()


def _install(model: Any, hook_name: str, edit: Callable[[Any], Any | None]) -> Any:
    """Hook `edit(h) -> new h | None` at a module's output (or its input for 'name:input')."""
    from emgui.core.lm.activations import layers_path, parse_hook

    module = resolve_module(model, hook_name)
    try:
        layers = layers_path(model)
    except EmguiError:
        layers = "model.layers"
    _, where = parse_hook(hook_name, layers)
    if where == "input":

        def pre_hook(_mod: Any, args: tuple, kwargs: dict) -> Any:
            if args:
                new = edit(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            new = edit(kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})

        return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def hook(_mod: Any, _args: Any, output: Any) -> Any:
        new = edit(output[0] if isinstance(output, tuple) else output)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return module.register_forward_hook(hook)


def _make_edit(
    items: list[ResolvedIntervention], tracker: _Positions, owner: int, gated: bool, handle: SteerHandle
) -> Callable[[Any], Any | None]:
    def edit(h: Any) -> Any | None:
        if not handle.enabled or (gated and threading.get_ident() != owner):
            return None
        mask = tracker.mask(h)
        for item in items:
            h = item.apply(h, mask)
        handle.calls += 1
        return h

    return edit


def direction_item(
    vector: Any, hook_name: str, method: str = "add", value: float = 0.0, label: str = ""
) -> ResolvedIntervention:
    """A resolved intervention from a raw vector (any norm; it is normalized)."""
    import torch

    vec = torch.as_tensor(vector).detach().float().flatten()
    norm = float(vec.norm())
    if norm == 0 or not torch.isfinite(vec).all():
        raise EmguiError(f"direction {label or hook_name}: the vector is zero or not finite")
    return ResolvedIntervention(hook_name, method, float(value), vec / norm, norm, None, label)


def latent_item(
    sae: Any, latent: int, hook_name: str, method: str = "add", value: float = 0.0, label: str = ""
) -> ResolvedIntervention:
    """A resolved intervention on SAE latent `latent` (any object with W_dec and encode(h), e.g. sae-lens)."""
    import torch

    w_dec = sae.W_dec.detach()
    if not 0 <= latent < w_dec.shape[0]:
        raise EmguiError(
            f"SAE {label or hook_name}: latent {latent} is out of range (0..{w_dec.shape[0] - 1})"
        )
    row = w_dec[latent].float()
    norm = float(row.norm())
    if norm == 0:
        raise EmguiError(f"SAE {label or hook_name}: latent {latent} has a zero decoder row")
    encode = None
    if method == "clamp":

        def encode(h: Any) -> Any:  # the latent's activation, in units where its decoder row is unit norm
            with torch.no_grad():
                z = sae.encode(h.to(sae.W_dec.dtype))
            return z[..., latent].float() * norm

    return ResolvedIntervention(hook_name, method, float(value), row / norm, norm, encode, label)


# ----- resolving a spec against a project ----------------------------------------------------------------


def resolve(
    project: Any, spec: SteeringSpec, model: Any, *, sae_cache: dict | None = None
) -> ResolvedSteering:
    """Load the vectors and SAEs a spec names, for `model`. Disabled interventions are left out.
    `sae_cache` (id -> SAE) avoids reloading SAEs when a slider moves."""
    d_model = hidden_size(model)
    items = []
    for i, item in enumerate(spec.interventions):
        if not item.enabled:
            continue
        where = f"intervention {i + 1}" + (f" ({item.label})" if item.label else "")
        if item.type == "direction":
            row, vector = load_direction(project, item.direction_id)
            if vector.shape[-1] != d_model:
                raise EmguiError(
                    f"{where}: direction '{row['name']}' has size {vector.shape[-1]}, the model's hidden size is {d_model}"
                )
            hook = item.hook_name or spec.hook_name
            if hook is None and spec.layer is not None:
                hook = layer_hook_name(model, spec.layer)
            hook = hook or row["hook_name"]
            items.append(direction_item(vector, hook, item.method, item.value, item.label or row["name"]))
        else:
            sae, sae_row = _load_sae(project, item.sae_id, sae_cache)
            if int(sae.W_dec.shape[-1]) != d_model:
                raise EmguiError(
                    f"{where}: SAE '{sae_row['name']}' reads size {sae.W_dec.shape[-1]}, not {d_model}"
                )
            label = item.label or f"{sae_row['name']}#{item.latent}"
            items.append(
                latent_item(sae, int(item.latent), sae_row["hook_name"], item.method, item.value, label)
            )
    for item in items:
        resolve_module(model, item.hook_name)  # fail now, naming the hook, rather than mid-generation
    return ResolvedSteering(spec, items)


def _load_sae(project: Any, sae_id: int, cache: dict | None) -> tuple[Any, dict]:
    row = project.query_one("SELECT * FROM saes WHERE id = ?", [sae_id])
    if row is None:
        raise EmguiError(f"no SAE with id {sae_id} in this project")
    if cache is not None and sae_id in cache:
        return cache[sae_id], row
    try:
        from emgui.core.features.saes import load_sae
    except ImportError:
        raise EmguiError("steering an SAE latent needs emgui.core.features.saes, which is not installed") from None
    sae = load_sae(project, sae_id)
    if cache is not None:
        cache[sae_id] = sae
    return sae, row


# ----- directions ----------------------------------------------------------------------------------------


def unique_direction_name(project: Any, name: str) -> str:
    return project.unique_name("directions", name)


def save_direction(
    project: Any,
    name: str,
    vector: Any,
    *,
    kind: str,
    hook_name: str,
    model_id: int | None = None,
    layer: int | None = None,
    info: dict | None = None,
    job_id: int | None = None,
    inputs: list[dict] | None = None,
    folder: Path | None = None,
) -> int:
    """Store a direction: a .safetensors file (tensor "direction", float32) and a `directions` row. The file
    is also recorded as an artifact with its inputs, so the provenance chain reaches it. Returns the id."""
    import torch
    from safetensors.torch import save_file

    vec = torch.as_tensor(vector).detach().float().flatten().cpu().contiguous()
    if vec.numel() == 0 or not torch.isfinite(vec).all():
        raise EmguiError(f"direction '{name}': the vector is empty or not finite")
    if project.query_one("SELECT id FROM directions WHERE name = ?", [name]):
        raise EmguiError(f"a direction named '{name}' already exists in this project; choose another name")
    folder = Path(folder) if folder else project.artifacts_dir / "directions"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{slug(name, 'direction')}-{int(time.time() * 1000) % 10**9}.safetensors"
    save_file({"direction": vec}, str(path), metadata={"name": name, "hook_name": hook_name, "kind": kind})
    if layer is None:
        layer = layer_of(hook_name)
    inputs = list(inputs or []) + ([{"type": "model", "id": model_id}] if model_id else [])
    artifact_id = project.add_artifact(path, "direction", job_id=job_id, inputs=inputs, meta={"name": name})
    return project.insert(
        "directions",
        {
            "name": name,
            "kind": kind,
            "model_id": model_id,
            "hook_name": hook_name,
            "layer": layer,
            "path": project.relpath(path),
            "norm": float(vec.norm()),
            "info": {**(info or {}), "artifact_id": artifact_id, "d_model": int(vec.numel())},
            "job_id": job_id,
            "created_at": time.time(),
        },
    )


def delete_job_directions(project: Any, job_id: int) -> None:
    """Drop the direction rows a job made (a rerun of the job makes them anew; their files are the job's)."""
    with project.transaction() as conn:
        conn.execute("DELETE FROM directions WHERE job_id = ?", [job_id])


def get_direction_row(project: Any, ref: int | str) -> dict:
    """A direction by id or name; the error lists what exists."""
    row = None
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        row = project.query_one("SELECT * FROM directions WHERE id = ?", [int(ref)])
    if row is None:
        row = project.query_one("SELECT * FROM directions WHERE name = ?", [str(ref)])
    if row is None:
        names = (
            ", ".join(r["name"] for r in project.query("SELECT name FROM directions ORDER BY id"))
            or "none yet"
        )
        raise EmguiError(f"no direction '{ref}' in this project (directions: {names})")
    return row


def load_direction(project: Any, ref: int | str) -> tuple[dict, Any]:
    """(row, float32 vector) of a stored direction."""
    row = get_direction_row(project, ref)
    path = project.abspath(row["path"])
    return row, read_vector_file(path)


def read_vector_file(path: Path, *, layer: int | None = None) -> Any:
    """The direction in a .safetensors file: the tensor "direction", else the only tensor. A (layers, d)
    stack needs `layer`. Errors name the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise EmguiError(f"direction file {path} does not exist")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise EmguiError(f"{path}: not a readable .safetensors file ({exc})") from None
    if "direction" in tensors:
        tensor = tensors["direction"]
    elif len(tensors) == 1:
        tensor = next(iter(tensors.values()))
    else:
        raise EmguiError(
            f"{path}: holds {len(tensors)} tensors ({', '.join(sorted(tensors)[:8])}); name the one to use 'direction'"
        )
    tensor = tensor.float()
    if tensor.dim() == 2 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() == 2:
        if layer is None:
            raise EmguiError(
                f"{path}: holds a stack of {tensor.shape[0]} vectors; choose the layer to import"
            )
        if not 0 <= layer < tensor.shape[0]:
            raise EmguiError(f"{path}: layer {layer} is out of range (the stack has {tensor.shape[0]} rows)")
        tensor = tensor[layer]
    if tensor.dim() != 1:
        raise EmguiError(f"{path}: expected a vector, found a tensor of shape {tuple(tensor.shape)}")
    if not bool(tensor.isfinite().all()) or float(tensor.norm()) == 0:
        raise EmguiError(f"{path}: the vector is zero or holds NaN/inf")
    return tensor


def _model_config(project: Any, model_row: dict) -> dict:
    """A model's config.json (an adapter's base model's), {} when unreadable; no weights are loaded."""
    row = model_row
    if row["kind"] == "adapter" and row.get("base_model_id"):
        row = project.get_model(row["base_model_id"])
    try:
        data = json.loads((project.model_path(row) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data.get("text_config", data) if isinstance(data, dict) else {}


def model_hidden_size(project: Any, model_row: dict) -> int | None:
    """The hidden size from a model's config.json, without loading weights."""
    data = _model_config(project, model_row)
    size = data.get("hidden_size") or data.get("n_embd") or data.get("d_model")
    return int(size) if size else None


def model_layer_count(project: Any, model_row: dict) -> int | None:
    """The number of decoder layers from a model's config.json, without loading weights."""
    data = _model_config(project, model_row)
    count = data.get("num_hidden_layers") or data.get("n_layer")
    return int(count) if count else None


def import_direction_file(
    project: Any,
    path: str | Path,
    *,
    model: int | str,
    name: str | None = None,
    layer: int | None = None,
    hook_name: str | None = None,
    stack_layer: int | None = None,
) -> int:
    """Import a direction from a .safetensors file for `model`, checking its size against the model's."""
    path = Path(path).expanduser()
    vector = read_vector_file(path, layer=stack_layer if stack_layer is not None else layer)
    row = project.get_model(model)
    size = model_hidden_size(project, row)
    if size is not None and vector.numel() != size:
        raise EmguiError(
            f"{path}: the vector has {vector.numel()} values but model '{row['name']}' has hidden size {size}"
        )
    if hook_name is None:
        if layer is None:
            raise EmguiError(f"{path}: say which layer the direction belongs to (layer or hook_name)")
        hook_name = f"model.layers.{layer}"
    name = unique_direction_name(project, name or path.stem)
    return save_direction(
        project,
        name,
        vector,
        kind="file",
        hook_name=hook_name,
        model_id=row["id"],
        layer=layer,
        info={"source": str(path.resolve())},
    )


def as_lists(params: dict, keys: tuple[str, ...]) -> dict:
    """`--param layers=15` arrives as 15 (and directions=3 as 3): list parameters accept a single value."""
    out = dict(params)
    for key in keys:
        value = out.get(key)
        if value is not None and not isinstance(value, (list, str)):
            out[key] = [value]
    return out


def import_job(params: dict, ctx: Any) -> dict:
    """`direction-import`: path=FILE.safetensors model=REF layer=N [name=NAME] [hook_name=H] [stack_layer=N]."""
    from emgui.core.jobs.params import Params

    p = Params(params, "direction-import")
    path, model = p.str("path"), p.str("model")
    layer, hook = p.int("layer"), p.str("hook_name")
    name, stack_layer = p.str("name"), p.int("stack_layer")
    p.done()
    direction_id = import_direction_file(
        ctx.project, path, model=model, name=name, layer=layer, hook_name=hook, stack_layer=stack_layer
    )
    row = get_direction_row(ctx.project, direction_id)
    ctx.log(f"imported '{row['name']}' ({row['hook_name']}, norm {row['norm']:.4g}) from {path}")
    return {
        "direction_id": direction_id,
        "name": row["name"],
        "hook_name": row["hook_name"],
        "norm": row["norm"],
    }


def list_directions(project: Any, model_id: int | None = None) -> list[dict]:
    if model_id is None:
        return project.query("SELECT * FROM directions ORDER BY id")
    return project.query("SELECT * FROM directions WHERE model_id = ? ORDER BY id", [model_id])


def delete_direction(project: Any, ref: int | str) -> None:
    """Remove a direction, and its file when this row alone owns it inside artifacts/."""
    row = get_direction_row(project, ref)
    path = project.abspath(row["path"])
    owned = path.is_file() and project.owns_path(path, row=("directions", row["id"]))
    with project.transaction() as conn:
        conn.execute("DELETE FROM directions WHERE id = ?", [row["id"]])
    if owned:
        path.unlink()


def random_like(norm: float, d_model: int, seed: int) -> Any:
    """A random direction of the given norm (a control for steering with a real one)."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    vec = torch.randn(d_model, generator=gen)
    return vec / vec.norm() * float(norm)


# ----- presets ------------------------------------------------------------------------------------------


def save_preset(project: Any, name: str, spec: SteeringSpec, extra: dict | None = None) -> int:
    """Save (or overwrite) a named preset: the spec plus UI settings under "ui"."""
    if not name.strip():
        raise EmguiError("a preset needs a name")
    data = {**spec.to_dict(), "ui": extra or {}}
    now = time.time()
    existing = project.query_one("SELECT id FROM steering_presets WHERE name = ?", [name])
    if existing:
        project.update("steering_presets", existing["id"], {"spec": data, "updated_at": now})
        return existing["id"]
    return project.insert(
        "steering_presets", {"name": name, "spec": data, "created_at": now, "updated_at": now}
    )


def load_preset(project: Any, name: str) -> tuple[SteeringSpec, dict]:
    row = project.query_one("SELECT * FROM steering_presets WHERE name = ?", [name])
    if row is None:
        names = ", ".join(r["name"] for r in list_presets(project)) or "none yet"
        raise EmguiError(f"no steering preset '{name}' (presets: {names})")
    data = dict(row["spec"])
    extra = data.pop("ui", {}) or {}
    return SteeringSpec.from_dict(data, f"preset '{name}'"), extra


def list_presets(project: Any) -> list[dict]:
    return project.query("SELECT * FROM steering_presets ORDER BY name")


def delete_preset(project: Any, name: str) -> None:
    with project.transaction() as conn:
        conn.execute("DELETE FROM steering_presets WHERE name = ?", [name])


# ----- streaming generation ------------------------------------------------------------------------------


@dataclass
class TokenStep:
    """One generated token: the text it adds (may be '' inside a multi-byte character), its log-probability
    under the (steered) model at temperature 1, and the most likely alternatives."""

    token_id: int
    text: str
    logprob: float
    alternatives: list[tuple[str, float]]
    index: int = 0
    seconds: float = 0.0  # since the stream started


def prompt_ids(tokenizer: Any, messages: list[dict]) -> list[int]:
    """The token ids of a chat rendered with the model's template, ready for the assistant's answer."""
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # jinja raises its own errors for chats a template refuses
        raise EmguiError(f"the model's chat template refused this chat: {exc}") from exc
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _stop_ids(tokenizer: Any, model: Any) -> set[int]:
    ids = set()
    for value in (tokenizer.eos_token_id, getattr(_unwrap(model).generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def stream_generate(
    model: Any,
    tokenizer: Any,
    messages: list[dict],
    steering: ResolvedSteering | None = None,
    *,
    seed: int = 0,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 128,
    should_stop: Callable[[], bool] | None = None,
    top_alternatives: int = 5,
    stop_at_eos: bool = True,
    this_thread_only: bool = True,
) -> Iterator[TokenStep]:
    """Generate an answer one token at a time with a KV cache (greedy at temperature 0, else sampled with a
    generator seeded by `seed`, so a base and a steered stream draw the same random numbers). Stops when
    `should_stop()` is true, at end of turn, or after `max_new_tokens`. Closing the generator removes
    the hooks."""
    import torch

    ids = prompt_ids(tokenizer, messages)
    device, _ = _model_device_dtype(model)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    stops = _stop_ids(tokenizer, model) if stop_at_eos else set()
    started = time.perf_counter()
    out_ids: list[int] = []
    emitted = ""
    with steer(model, steering, this_thread_only=this_thread_only) as handle:
        # The hooks act only inside our own forward calls: between yields the caller may run another
        # stream on the same model in this thread.
        handle.enabled = False
        handle.begin(len(ids))

        def forward(input_ids: list[list[int]], past: Any) -> tuple[Any, Any]:
            handle.enabled = True
            try:
                with torch.inference_mode():
                    return _forward(model, torch.tensor(input_ids, device=device), past)
            finally:
                handle.enabled = False

        logits, past = forward([ids], None)
        for index in range(max_new_tokens):
            if should_stop is not None and should_stop():
                return
            token, logprob, alts = _pick(logits, temperature, top_p, gen, top_alternatives)
            out_ids.append(token)
            alternatives = _alt_texts(tokenizer, alts)
            if token in stops:
                yield TokenStep(token, "", logprob, alternatives, index, time.perf_counter() - started)
                return
            text = tokenizer.decode(out_ids, skip_special_tokens=True)
            new = "" if text.endswith("\ufffd") else text[len(emitted) :]
            emitted += new
            yield TokenStep(token, new, logprob, alternatives, index, time.perf_counter() - started)
            if index + 1 < max_new_tokens:
                logits, past = forward([[token]], past)


_CACHE_KWARG: dict[type, str] = {}


def _cache_kwarg(model: Any) -> str:
    """transformers 5.2x names the KV cache `cache`; earlier versions `past_key_values`."""
    import inspect

    cls = type(_unwrap(model))
    if cls not in _CACHE_KWARG:
        params = inspect.signature(cls.forward).parameters
        _CACHE_KWARG[cls] = "cache" if "cache" in params else "past_key_values"
    return _CACHE_KWARG[cls]


def _forward(model: Any, input_ids: Any, past: Any) -> tuple[Any, Any]:
    """Last-position logits (float32) and the cache. Only the last position's logits are computed. The model
    should be in eval mode (dropout); jobs and the app load it so."""
    kwargs = {_cache_kwarg(model): past, "use_cache": True}
    try:
        out = model(input_ids=input_ids, logits_to_keep=1, **kwargs)
    except TypeError:  # models without logits_to_keep
        out = model(input_ids=input_ids, **kwargs)
    cache = getattr(out, "cache", None)
    return out.logits[0, -1].float(), cache if cache is not None else out.past_key_values


def _pick(
    logits: Any, temperature: float, top_p: float, gen: Any, k: int
) -> tuple[int, float, list[tuple[int, float]]]:
    import torch

    logprobs = torch.log_softmax(logits, dim=-1)
    if temperature <= 0:
        token = int(torch.argmax(logits))
    else:
        probs = torch.softmax(logits / temperature, dim=-1)
        if top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_p, 0) - sorted_p < top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        token = int(torch.multinomial(probs, 1, generator=gen))
    top = torch.topk(logprobs, k) if k > 0 else None
    alts = list(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top is not None else []
    return token, float(logprobs[token]), alts


def _alt_texts(tokenizer: Any, alts: list[tuple[int, float]]) -> list[tuple[str, float]]:
    return [(tokenizer.decode([t]), lp) for t, lp in alts]


def generate_text(
    model: Any,
    tokenizer: Any,
    messages: list[dict],
    steering: ResolvedSteering | None = None,
    **kwargs: Any,
) -> tuple[str, list[TokenStep]]:
    """The whole answer of `stream_generate` and its steps."""
    steps = list(stream_generate(model, tokenizer, messages, steering, **kwargs))
    return "".join(s.text for s in steps), steps
