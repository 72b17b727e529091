"""One model host: the single place that loads, shares and frees models.

Jobs (sampling, judging, probes, steering, sweeps, captures), local judges and the Steer page's live
generation *borrow* a model from a `ModelHost` instead of loading their own copy:

    with host.borrow(key, load) as lease:        # or lease = host.borrow(...); ...; lease.release()
        lease.model, lease.tokenizer

- The key is (base, adapter, dtype, device, quantization): two borrowers of the same key share one
  instance. A borrower that changes the model's state for everyone (forward hooks that capture or edit
  activations, a disabled adapter) borrows `exclusive=True`: it gets an instance nobody else holds (the
  cached one when it is idle, else a second one).
- Each loaded model is counted (parameter and buffer bytes, by device). Every device pool ("cpu" - MPS
  shares it -, "cuda:0", ...) has a budget; to make room the host frees idle models, least recently used
  first. A model in use (borrowed) is never freed. What cannot fit even then is refused with an
  `EmguiError` naming the model, what it needs and the budget.
- Jobs that change weights (fine-tuning) load their own private model but `reserve` its memory, so the
  host evicts idle models first and counts it.
- `snapshot()` lists what is loaded for the status bar; listeners hear about every change.

Qt-free, and torch is imported only where a model or a CUDA device is involved. One process-wide host is
made lazily by `default_host()`, but code takes a host as an argument where it can (a job context
carries one as `ctx.host`).
"""

from __future__ import annotations

import gc
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emgui.core.errors import EmguiError
from emgui.core.units import human_bytes

Loader = Callable[[], "tuple[Any, Any]"]  # () -> (model, tokenizer)
Listener = Callable[[], None]

CPU_SHARE = 0.6  # default CPU budget: this share of the machine's RAM (the app, data and OS need the rest)
GPU_SHARE = 0.9  # default GPU budget: this share of each GPU's memory (activations and caches need the rest)
BUDGET_ENV = {"cpu": "EMGUI_MODEL_BUDGET_CPU", "cuda": "EMGUI_MODEL_BUDGET_GPU"}


@dataclass(frozen=True)
class ModelKey:
    """What makes two loaded models interchangeable."""

    base: str  # the base model's folder (or file)
    adapter: str | None = None  # the adapter's folder, when one is applied
    dtype: str = "float32"
    device: str = "cpu"
    quantization: str | None = None
    revision: str = ""  # when its files last changed: a folder written again is a new model

    @property
    def pool(self) -> str:
        return memory_pool(self.device)


def memory_pool(device: str) -> str:
    """The budget a device draws on: each CUDA GPU has its own; CPU and MPS (unified memory) share RAM."""
    device = str(device).lower()
    if device.startswith("cuda"):
        return device if ":" in device else "cuda:0"
    return "cpu"


def parse_bytes(text: str) -> int:
    """'8GB', '8 GiB', '512M', '8e9' -> bytes."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?)(I?B?)\s*", text.upper())
    if not match:
        raise EmguiError(f"cannot read '{text}' as a size (e.g. 8GB, 512MB, 8e9)")
    value, unit, binary = match.groups()
    base = 1024 if binary.startswith("I") else 1000
    try:
        return int(float(value) * base ** " KMGT".index(unit or " "))
    except ValueError:
        raise EmguiError(f"cannot read '{text}' as a size (e.g. 8GB, 512MB, 8e9)") from None


def machine_budget(pool: str) -> int:
    """The default budget of a pool: an environment variable if set, else a share of its memory."""
    env = os.environ.get(BUDGET_ENV["cuda" if pool.startswith("cuda") else "cpu"])
    if env:
        return parse_bytes(env)
    if pool.startswith("cuda"):
        import torch

        return int(GPU_SHARE * torch.cuda.get_device_properties(int(pool.split(":")[1])).total_memory)
    return int(CPU_SHARE * _ram_bytes())


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # Windows has no sysconf
        try:
            import psutil

            return int(psutil.virtual_memory().total)
        except ImportError:
            return 16 * 10**9


def model_bytes(model: Any) -> dict[str, int]:
    """Parameter and buffer bytes of a loaded model by memory pool (tied weights counted once)."""
    out: dict[str, int] = {}
    seen: set[int] = set()
    tensors = [*model.parameters(), *model.buffers()]
    for t in tensors:
        if id(t) in seen or t.device.type == "meta":
            continue
        seen.add(id(t))
        pool = memory_pool(str(t.device))
        out[pool] = out.get(pool, 0) + t.numel() * t.element_size()
    return out


@dataclass(eq=False)
class _Entry:
    key: ModelKey | None  # None: a reservation for a private model (training)
    label: str
    pool: str
    nbytes: int  # an estimate while loading, measured once loaded
    cached: bool = True  # False: private to its one borrower, freed at release
    exclusive: bool = False
    users: int = 1
    state: str = "loading"  # loading | ready | reserved
    model: Any = None
    tokenizer: Any = None
    last_used: float = field(default_factory=time.monotonic)
    loaded_at: float = field(default_factory=time.time)


class Lease:
    """A borrowed model. Release it (or leave the `with` block) when done: it stays loaded, idle, until
    the host needs its memory. Releasing twice is harmless."""

    def __init__(self, host: ModelHost, entry: _Entry):
        self._host, self._entry = host, entry
        self.released = False

    @property
    def model(self) -> Any:
        return self._entry.model

    @property
    def tokenizer(self) -> Any:
        return self._entry.tokenizer

    @property
    def key(self) -> ModelKey | None:
        return self._entry.key

    @property
    def nbytes(self) -> int:
        return self._entry.nbytes

    def measure(self, model: Any) -> None:
        """A reservation learns the real size of the private model it stands for."""
        self._host._measure(self._entry, model)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._host._release(self._entry)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.release()


@dataclass
class HostSnapshot:
    """What the host holds, for the status bar and `emgui` diagnostics."""

    models: list[dict]
    used: dict[str, int]  # bytes by pool
    budgets: dict[str, int]
    loads: int  # models loaded since the host started

    def describe(self) -> str:
        """'2 models · 1.1 GB' (a reservation counts as a model: it is one, privately loaded)."""
        if not self.models:
            return "no models loaded"
        n = len(self.models)
        total = sum(self.used.values())
        return f"{n} model{'s' if n != 1 else ''} · {human_bytes(total)}"

    def details(self) -> str:
        """One line per model and per pool (a tooltip)."""
        lines = [
            f"{m['label']} · {m['pool']} · {human_bytes(m['bytes'])} · {m['state']}"
            + (f" · {m['users']} using it" if m["users"] else " · idle")
            for m in self.models
        ]
        lines += [
            f"{pool}: {human_bytes(self.used.get(pool, 0))} of {human_bytes(budget)} budget"
            for pool, budget in sorted(self.budgets.items())
        ]
        return "\n".join(lines) or "no models loaded"


class ModelHost:
    """Thread-safe. `budgets` maps pools ("cpu", "cuda:0") to bytes; pools not given take
    `machine_budget` (environment variable, else a share of the memory) when first used."""

    def __init__(
        self,
        budgets: dict[str, int] | None = None,
        *,
        default_budget: Callable[[str], int] = machine_budget,
    ):
        self._cond = threading.Condition(threading.RLock())
        self._entries: list[_Entry] = []
        self._budgets: dict[str, int] = dict(budgets or {})
        self._default_budget = default_budget
        self._listeners: list[Listener] = []
        self.loads = 0

    # ----- budgets and listeners -------------------------------------------------------------------------
    def budget(self, pool: str) -> int:
        with self._cond:
            if pool not in self._budgets:
                self._budgets[pool] = int(self._default_budget(pool))
            return self._budgets[pool]

    def set_budget(self, pool: str, nbytes: int) -> None:
        """Change a pool's budget; idle models over it are freed now."""
        with self._cond:
            self._budgets[memory_pool(pool)] = int(nbytes)
            evicted = self._make_room(memory_pool(pool), 0, "", strict=False)
        self._after_change(evicted)

    def add_listener(self, listener: Listener) -> None:
        """`listener()` is called (from whichever thread changed it) after every change."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # ----- borrowing -------------------------------------------------------------------------------------
    def borrow(
        self,
        key: ModelKey,
        load: Loader,
        *,
        label: str | None = None,
        estimate: int = 0,
        exclusive: bool = False,
    ) -> Lease:
        """Lend the model of `key`, loading it with `load()` if no usable instance is there. `estimate`:
        the bytes it will take (checked against the budget before loading; 0 when unknown)."""
        label = label or os.path.basename(key.adapter or key.base)
        entry, evicted = self._claim(key, label, estimate, exclusive)
        self._after_change(evicted)
        if entry.state == "ready":
            return Lease(self, entry)
        try:
            model, tokenizer = load()
        except BaseException:
            with self._cond:
                self._entries.remove(entry)
                self._cond.notify_all()
            self._after_change([])
            raise
        self._measure(entry, model, tokenizer)
        return Lease(self, entry)

    def reserve(self, pool: str, nbytes: int, label: str, *, strict: bool = False) -> Lease:
        """Count a privately loaded model (one being trained) against `pool`'s budget: idle models are
        freed to make room. With `strict`, refuse what cannot fit; otherwise go ahead regardless (the
        estimate may be pessimistic, and refusing a job that used to run would be worse)."""
        pool = memory_pool(pool)
        with self._cond:
            evicted = self._make_room(pool, nbytes, label, strict=strict)
            entry = _Entry(None, label, pool, int(nbytes), cached=False, exclusive=True, state="reserved")
            self._entries.append(entry)
        self._after_change(evicted)
        return Lease(self, entry)

    def _claim(self, key: ModelKey, label: str, estimate: int, exclusive: bool) -> tuple[_Entry, list]:
        """Under the lock: take a usable instance, or wait for one being loaded, or add a placeholder."""
        with self._cond:
            while True:
                entry = self._usable(key, exclusive)
                if entry is None:
                    evicted = self._make_room(key.pool, estimate, label, strict=True)
                    entry = _Entry(key, label, key.pool, int(estimate), exclusive=exclusive)
                    self._entries.append(entry)
                    return entry, evicted
                if entry.state == "ready":
                    entry.users += 1
                    entry.exclusive = exclusive
                    entry.last_used = time.monotonic()
                    return entry, []
                self._cond.wait()  # another thread is loading this very model: share it when it is there

    def _usable(self, key: ModelKey, exclusive: bool) -> _Entry | None:
        candidates = [e for e in self._entries if e.key == key and e.cached and not e.exclusive]
        if exclusive:
            candidates = [e for e in candidates if e.users == 0 and e.state == "ready"]
        ready = [e for e in candidates if e.state == "ready"]
        return (ready or candidates or [None])[0]

    def _measure(self, entry: _Entry, model: Any, tokenizer: Any = None) -> None:
        sizes = model_bytes(model)
        with self._cond:
            if entry.key is not None:
                entry.model, entry.tokenizer = model, tokenizer
                entry.state = "ready"
                self.loads += 1
            entry.nbytes = sum(sizes.values())
            entry.pool = max(sizes, key=sizes.get) if sizes else entry.pool  # where it really lives
            # The estimate can be low: free idle models if the real size pushes the pool over budget.
            evicted = self._make_room(entry.pool, 0, entry.label, strict=False)
            self._cond.notify_all()
        self._after_change(evicted)

    def _release(self, entry: _Entry) -> None:
        evicted: list[_Entry] = []
        with self._cond:
            entry.users -= 1
            entry.last_used = time.monotonic()
            if entry.users <= 0:
                entry.users, entry.exclusive = 0, False
                if not entry.cached and entry in self._entries:
                    self._entries.remove(entry)
                    evicted.append(entry)
            self._cond.notify_all()
        self._after_change(evicted)

    # ----- making room -----------------------------------------------------------------------------------
    def _make_room(self, pool: str, need: int, label: str, *, strict: bool) -> list[_Entry]:
        """Under the lock: evict idle models of `pool`, least recently used first, until `need` more bytes
        fit its budget. Returns the evicted entries (freed by the caller once the lock is let go)."""
        budget = self.budget(pool)
        mine = [e for e in self._entries if e.pool == pool]
        used = sum(e.nbytes for e in mine)
        evicted = []
        for entry in sorted((e for e in mine if e.users == 0 and e.state == "ready"), key=lambda e: e.last_used):
            if used + need <= budget:
                break
            self._entries.remove(entry)
            evicted.append(entry)
            used -= entry.nbytes
        if strict and used + need > budget:
            self._entries.extend(evicted)  # refused: nothing needed to go
            raise EmguiError(self._refusal(pool, need, label, used, budget))
        return evicted

    def _refusal(self, pool: str, need: int, label: str, used: int, budget: int) -> str:
        env = BUDGET_ENV["cuda" if pool.startswith("cuda") else "cpu"]
        if need > budget:
            return (
                f"cannot load model '{label}' on {pool}: it needs about {human_bytes(need)}, more than the "
                f"whole {human_bytes(budget)} budget for models there. Use a smaller dtype (bf16), another "
                f"device, or raise the budget ({env}=SIZE)."
            )
        busy = [e.label for e in self._entries if e.pool == pool and (e.users or e.state != "ready")]
        return (
            f"cannot load model '{label}' on {pool}: it needs about {human_bytes(need)}, and "
            f"{human_bytes(used)} of the {human_bytes(budget)} budget is held by models in use "
            f"({', '.join(busy) or 'none'}). Wait for the jobs or live generation using them to finish, "
            f"or raise the budget ({env}=SIZE)."
        )

    def _after_change(self, evicted: list[_Entry]) -> None:
        if evicted:
            pools = {e.pool for e in evicted}
            for entry in evicted:
                entry.model = entry.tokenizer = None
            _free_memory(pools)
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # noqa: BLE001 - a broken listener must not break a job
                pass

    # ----- reading and clearing --------------------------------------------------------------------------
    def snapshot(self) -> HostSnapshot:
        """What is loaded, by bookkeeping only: it touches no model and takes no time."""
        with self._cond:
            models = [
                {
                    "label": e.label,
                    "key": e.key,
                    "pool": e.pool,
                    "bytes": e.nbytes,
                    "users": e.users,
                    "exclusive": e.exclusive,
                    "state": e.state if e.cached else "private",
                    "loaded_at": e.loaded_at,
                }
                for e in self._entries
            ]
            used: dict[str, int] = {}
            for e in self._entries:
                used[e.pool] = used.get(e.pool, 0) + e.nbytes
            budgets = {pool: self._budgets[pool] for pool in self._budgets}
        return HostSnapshot(models, used, budgets, self.loads)

    def clear(self) -> int:
        """Free every idle model (one in use stays). Returns how many were freed."""
        with self._cond:
            evicted = [e for e in self._entries if e.users == 0 and e.state == "ready"]
            for entry in evicted:
                self._entries.remove(entry)
        self._after_change(evicted)
        return len(evicted)


def _free_memory(pools: set[str]) -> None:
    gc.collect()
    if any(p.startswith("cuda") for p in pools):
        import torch

        torch.cuda.empty_cache()


# ----- the process-wide host ------------------------------------------------------------------------------

_default: ModelHost | None = None
_default_lock = threading.Lock()


def default_host() -> ModelHost:
    """The host of this process (the window's and the CLI's), made on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ModelHost()
        return _default


def host_of(ctx: Any) -> ModelHost:
    """The host a job context carries, else the process's."""
    return getattr(ctx, "host", None) or default_host()


# ----- project models --------------------------------------------------------------------------------------


def _device_and_dtype(device: str | None, dtype: Any) -> tuple[str, Any]:
    import torch

    from emgui.core.lm.device import pick_device
    from emgui.core.models.loading import resolve_dtype

    device = pick_device(device)
    if device == "cuda":  # one key for "cuda" and "cuda:N" of the current GPU
        device = f"cuda:{torch.cuda.current_device()}"
    return device, resolve_dtype(device, dtype)


def _revision(*paths: Path) -> str:
    """The newest modification time of the files in these folders (or of these files)."""
    times = []
    for path in paths:
        files = [path] if path.is_file() else (list(path.iterdir()) if path.is_dir() else [])
        times += [f.stat().st_mtime_ns for f in files if f.is_file()]
    return str(max(times, default=0))


def model_key(project: Any, row: dict, device: str, dtype: Any) -> ModelKey:
    """The key of a project's model row: its folder (and its base model's, for an adapter)."""
    dtype_name = str(dtype).replace("torch.", "")
    path = project.model_path(row).resolve()
    if row["kind"] == "adapter" and row.get("base_model_id"):
        base = project.model_path(project.get_model(row["base_model_id"])).resolve()
        return ModelKey(str(base), str(path), dtype_name, device, revision=_revision(base, path))
    return ModelKey(str(path), None, dtype_name, device, revision=_revision(path))


def estimate_bytes(project: Any, row: dict, dtype: Any) -> int:
    """Bytes a model will take once loaded: its parameter count times the dtype's width when the row
    knows it, else the size of its weight files (0 when neither is known: no refusal before loading)."""
    from emgui.core.models.memory import model_shape

    width = getattr(dtype, "itemsize", 4)
    shape = model_shape(project, row)
    if shape and shape.n_params:
        return int(shape.n_params) * width
    path = project.model_path(row)
    files = [path] if path.is_file() else [p for p in path.glob("*") if p.suffix in (".safetensors", ".bin", ".gguf")]
    return sum(p.stat().st_size for p in files if p.is_file())


def borrow_model(
    project: Any,
    row: dict,
    *,
    host: ModelHost | None = None,
    device: str | None = None,
    dtype: Any = None,
    exclusive: bool = False,
) -> Lease:
    """Borrow a project's model (with its tokenizer), loaded as `emgui.core.models.loading.load_model` would."""
    from emgui.core.models.loading import load_model, load_tokenizer

    device, dtype = _device_and_dtype(device, dtype)
    key = model_key(project, row, device, dtype)

    def load() -> tuple[Any, Any]:
        return load_model(project, row, device=device, dtype=dtype), load_tokenizer(project, row)

    return (host or default_host()).borrow(
        key, load, label=row["name"], estimate=estimate_bytes(project, row, dtype), exclusive=exclusive
    )


def _hold(ctx: Any, lease: Lease) -> Lease:
    leases = getattr(ctx, "model_leases", None)
    if leases is None:
        leases = []
        ctx.model_leases = leases
    leases.append(lease)
    return lease


def borrow_for(
    ctx: Any, row: dict, *, device: str | None = None, dtype: Any = None, exclusive: bool = False
) -> tuple[Any, Any]:
    """A job's (model, tokenizer), borrowed from its context's host until the job ends (or until
    `release_for(ctx, model)`)."""
    lease = borrow_model(ctx.project, row, host=host_of(ctx), device=device, dtype=dtype, exclusive=exclusive)
    _hold(ctx, lease)
    return lease.model, lease.tokenizer


def release_for(ctx: Any, model: Any) -> None:
    """Hand back a job's borrowed model early (it stays cached, idle, so the next model can evict it)."""
    for lease in getattr(ctx, "model_leases", None) or []:
        if not lease.released and lease.model is model:
            lease.release()


def reserve_for(ctx: Any, row: dict, *, device: str | None, dtype: Any, label: str) -> Lease:
    """Count a job's private model (one it trains) against the budget until the job ends: idle models
    are freed first. Call `.measure(model)` on the result once it is loaded."""
    device, dtype = _device_and_dtype(device, dtype)
    estimate = estimate_bytes(ctx.project, row, dtype)
    return _hold(ctx, host_of(ctx).reserve(device, estimate, f"{label}: {row['name']}"))


def release_job_models(ctx: Any) -> None:
    """Release everything a job borrowed or reserved (its runner calls this when the job ends)."""
    for lease in getattr(ctx, "model_leases", None) or []:
        lease.release()
