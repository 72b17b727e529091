"""Fine-tuning on several devices: torch.distributed (DDP or FSDP2), launched with torchrun.

Why torchrun and not Ray Train: it ships with torch (no extra dependency on a workstation with two GPUs), its
agent starts one process per device, forwards signals to them and fails the whole group when one dies; and a
job sent to a Ray cluster runs the same launcher inside its Ray task, on the GPUs Ray gave it.

A `finetune` or `realign` job with `devices=N` (N > 1) does not train in the app's process. `launch` writes a
spec next to the job's artifacts and starts `torchrun --standalone --nproc-per-node N -m emgui.core.training.distributed
SPEC` in its own session. Every worker opens the project, runs the same job function with a `RankContext`, and
the training loop splits each micro-batch's rows between the ranks (`batch_size` is per device; the plan is the
single-device plan with `batch_size x N` rows, so the global batch is the same). Rank 0 writes the job's
progress, metrics, log lines and checkpoints to an events file that `launch` relays into the job's own context:
the store and the listeners (the CLI's progress line, the window) see them exactly as for one device. Rank 0
saves and registers the outputs. Cancelling touches a cancel file the workers poll, then stops torchrun (which
stops its workers), then kills any worker still alive, by the process ids they reported.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emgui.core.errors import Cancelled, EmguiError
from emgui.core.jobs.runner import JobFiles
from emgui.core.project.store import pid_alive

STRATEGIES = ("ddp", "fsdp")
WORKER_ENV = "EMGUI_DISTRIBUTED_WORKER"  # set in the workers' environment


@dataclass
class Rank:
    """This process's place in a multi-device run."""

    rank: int
    world: int
    strategy: str
    device: str

    @property
    def main(self) -> bool:
        return self.rank == 0


_CURRENT: Rank | None = None


def current() -> Rank | None:
    """The rank of this process when it is a worker of a multi-device job, else None."""
    return _CURRENT


# ----- the parent: launch torchrun and relay rank 0's events into the job ------------------------------------


def launch(ctx: Any, kind: str, params: dict, devices: int, strategy: str, device: str) -> dict:
    """Run job `kind` with `params` on `devices` worker processes; returns rank 0's result."""
    if os.environ.get(WORKER_ENV):  # a worker never starts workers of its own (no runaway process tree)
        raise EmguiError(f"{kind}: a distributed worker tried to launch workers (rank not set up)")
    run_dir = ctx.artifact_dir / "distributed"
    run_dir.mkdir(parents=True, exist_ok=True)
    events, cancel_file, log_path = run_dir / "events.jsonl", run_dir / "cancel", run_dir / "workers.log"
    for stale in (events, cancel_file):
        stale.unlink(missing_ok=True)
    spec = {
        "project": str(ctx.project.root), "job_id": ctx.job_id, "kind": kind, "params": params,
        "resume_state": ctx.resume_state, "events": str(events), "cancel": str(cancel_file),
        "parent_pid": os.getpid(), "strategy": strategy, "device": device,
    }  # fmt: skip
    spec_path = run_dir / "spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
        "--nproc-per-node", str(devices), "--max-restarts", "0", "-m", "emgui.core.training.distributed", str(spec_path),
    ]  # fmt: skip
    env = dict(os.environ)
    # the workers import the very emgui this process runs (a checkout may shadow an installed copy)
    import emgui

    package_root = str(Path(emgui.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or devices) // devices)))
    env[WORKER_ENV] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    ctx.log(f"starting {devices} workers ({strategy}) with torchrun; their output goes to {log_path}")
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    relay = _Relay(ctx, events)
    try:
        while True:
            relay.pump()
            ctx.check_cancelled()
            if proc.poll() is not None:
                relay.pump()
                break
            time.sleep(0.2)
    except BaseException as exc:
        stop_workers(proc, relay.pids, cancel_file)
        relay.stopping = True
        relay.pump()  # the last checkpoint rank 0 wrote before it stopped reaches the job row
        if isinstance(exc, Cancelled) and relay.result is not None:
            ctx.log("the workers had finished when the cancel reached them: the job's result stands")
            return relay.result  # its model is registered: calling the job cancelled would hide it
        raise
    finally:
        relay.close()
    if relay.result is not None and proc.returncode == 0:
        return relay.result
    if relay.error is not None:
        raise EmguiError(relay.error)
    tail = log_path.read_text(encoding="utf-8", errors="replace")[-1500:] if log_path.exists() else ""
    raise EmguiError(f"{kind}: the {devices} workers failed (torchrun exit code {proc.returncode}):\n{tail}")


def stop_workers(proc: subprocess.Popen, pids: list[int], cancel_file: Path, grace: float = 8.0) -> None:
    """Ask the workers to stop (cancel file), then torchrun (SIGTERM: it stops its workers), then kill
    whatever is left: torchrun's session and each worker's own (torchrun starts every worker in one)."""
    cancel_file.touch()
    # a worker still importing torch has not said hello yet: find it as torchrun's child
    workers = set(pids) | set(descendants(proc.pid))
    deadline = time.monotonic() + grace
    while proc.poll() is None and time.monotonic() < deadline - grace / 2:
        time.sleep(0.1)
    if proc.poll() is None:
        workers |= set(descendants(proc.pid))
        _signal_group(proc.pid, signal.SIGTERM)
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in [proc.pid, *workers]:
        _signal_group(pid, signal.SIGKILL)
    proc.wait()


def descendants(pid: int) -> list[int]:
    """The process ids below `pid` (Linux /proc; elsewhere none: the pids the workers report are used)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = entry.read_text()
            ppid = int(text[text.rindex(")") + 2 :].split()[1])  # after "pid (name) state"
        except (OSError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError, OSError):
        pass


class _Relay:
    """Reads rank 0's events as they are appended and replays them on the job's context."""

    def __init__(self, ctx: Any, path: Path):
        self.ctx, self.path = ctx, path
        self._fh = None
        self._partial = ""
        self.pids: list[int] = []
        self.result: dict | None = None
        self.error: str | None = None
        self.stopping = False  # after a cancel: keep logs, metrics and checkpoints, skip progress (it raises)
        self._pending: deque[dict] = deque()

    def pump(self) -> None:
        if self._fh is None:
            if not self.path.exists():
                return
            self._fh = self.path.open("r", encoding="utf-8")
        data = self._partial + self._fh.read()
        lines = data.split("\n")
        self._partial = lines.pop()  # an incomplete last line waits for the rest
        self.feed([json.loads(line) for line in lines if line.strip()])

    def feed(self, events: list[dict]) -> None:
        """Apply events in order. One that raises (a progress report that finds the job cancelled) leaves
        the rest queued for the next call: the last checkpoint and metrics are never dropped."""
        self._pending.extend(events)
        while self._pending:
            self._apply(self._pending.popleft())

    def _apply(self, event: dict) -> None:
        ctx, kind = self.ctx, event["t"]
        if kind == "hello":
            self.pids.append(int(event["pid"]))
        elif kind == "progress":
            if not self.stopping:
                ctx.progress(event["fraction"], event["message"])
        elif kind == "metrics":
            for step, name, value in event["rows"]:
                ctx.metric(name, step, value)
        elif kind == "log":
            ctx.log(event["text"])
        elif kind == "checkpoint":
            ctx.save_checkpoint(event["state"])
        elif kind == "result":
            self.result = event["result"]
        elif kind == "error" and self.error is None:  # the first failure is the cause
            self.error = event["error"]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


# ----- a worker: what a job sees inside torchrun ---------------------------------------------------------------


class RankContext(JobFiles):
    """The job context of a worker: the real project; rank 0's reports go to the parent through the events
    file, the other ranks report nothing. Cancelled when the cancel file appears or the app's process ends."""

    POLL_SECONDS = 0.5

    def __init__(self, spec: dict, rank: Rank, sink: Callable[[dict], None] | None = None):
        from emgui.core.project.store import Project

        self.project = Project(spec["project"])
        self.job_id = int(spec["job_id"])
        self.params = spec["params"]
        self.resume_state = spec.get("resume_state")
        self.rank = rank
        self.step_hooks: tuple = ()  # hooks are the parent's (tests, benches); the workers run the monitor alone
        self.host = None  # a worker's models are its own (emgui.core.models.host falls back to the default)
        self._cancel_file = Path(spec["cancel"]) if spec.get("cancel") else None
        self._parent = int(spec["parent_pid"]) if spec.get("parent_pid") else None
        # where events go: the events file torchrun's parent reads, or (a Ray task) a queue to the driver
        self._events = None if sink else open(spec["events"], "a", encoding="utf-8")  # noqa: SIM115
        self._sink = sink
        self._metrics: list[tuple[int, str, float]] = []
        self._last_flush = self._last_poll = self._last_progress = 0.0
        self._cancelled = False
        self.progress_value, self.last_message = 0.0, ""
        self.emit("hello", pid=os.getpid(), rank=rank.rank)

    def emit(self, kind: str, **data: Any) -> None:
        if self._sink is not None:
            self._sink(json.loads(json.dumps({"t": kind, **data}, default=str)))
            return
        self._events.write(json.dumps({"t": kind, **data}, default=str) + "\n")
        self._events.flush()

    # reporting (rank 0 only)
    def progress(self, fraction: float | None, message: str = "") -> None:
        self.check_cancelled()
        if not self.rank.main:
            return
        if fraction is not None:
            self.progress_value = fraction
        self.last_message = message or self.last_message
        now = time.monotonic()
        if now - self._last_progress >= 0.1 or fraction in (0.0, 1.0):
            self._last_progress = now
            self.emit("progress", fraction=fraction, message=message)

    def metric(self, name: str, step: int, value: float) -> None:
        if self.rank.main:
            self._metrics.append((int(step), name, float(value)))
            if time.monotonic() - self._last_flush >= 0.5:
                self.flush()

    def log(self, text: str) -> None:
        if self.rank.main:
            self.flush()
            self.emit("log", text=str(text))

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        rows = [r for r in self._metrics if r[2] == r[2] and abs(r[2]) != float("inf")]
        self._metrics = []
        if rows and self.rank.main:
            self.emit("metrics", rows=rows)

    # cancellation
    @property
    def cancelled(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now - self._last_poll >= self.POLL_SECONDS:
            self._last_poll = now
            gone = self._parent is not None and not pid_alive(self._parent)
            self._cancelled = gone or (self._cancel_file is not None and self._cancel_file.exists())
        return self._cancelled

    def check_cancelled(self) -> None:
        if self.cancelled:
            raise Cancelled(f"job {self.job_id} cancelled")

    def save_checkpoint(self, state: dict) -> None:
        if self.rank.main:
            self.flush()
            self.emit("checkpoint", state=state)
        self.resume_state = state

    def close(self) -> None:
        self.flush()
        if self._events is not None:
            self._events.close()
        self.project.close()


# ----- the training loop's distributed pieces ---------------------------------------------------------------


def _loss_module_class() -> type:
    import torch

    class _LossModule(torch.nn.Module):
        """The model and its loss as one module, so that DDP's and FSDP's forward hooks wrap the whole step
        (the loss reads the decoder and the output head directly)."""

        def __init__(self, model: Any, loss_fn: Any):
            super().__init__()
            self.model = model
            self.loss_fn = loss_fn

        def forward(self, input_ids: Any, labels: Any, position_ids: Any, segments: Any = None, mode: str = "loss") -> Any:
            if mode == "logits":
                return self.model(input_ids=input_ids, use_cache=False).logits
            return self.loss_fn(input_ids, labels, position_ids, segments)

    return _LossModule


def wrap(model: Any, loss_fn: Any, rank: Rank) -> Any:
    """The training module of this rank: DDP (every rank a full copy, gradients all-reduced) or FSDP2
    (`fully_shard` on every decoder layer and the root: weights, gradients and optimizer state sharded)."""
    import torch

    module = _loss_module_class()(model, loss_fn)
    if rank.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.device(rank.device).index] if rank.device.startswith("cuda") else None
        return DistributedDataParallel(module, device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(rank.device.split(":")[0], (rank.world,))
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    for layer in getattr(hf.get_decoder(), "layers", []):
        fully_shard(layer, mesh=mesh)
    fully_shard(module, mesh=mesh)
    return module.to(rank.device)  # the shards (loaded on the CPU) go to this rank's device


def gradient_sync(wrapped: Any, rank: Rank, sync: bool) -> Any:
    """A context for one micro-batch's backward: gradients are exchanged only on a step's last one."""
    if rank.strategy == "ddp":
        return nullcontext() if sync else wrapped.no_sync()
    wrapped.set_requires_gradient_sync(sync)
    return nullcontext()


def all_sum(*values: float) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(t)
    return [float(x) for x in t]


def all_min(value: bool) -> bool:
    import torch
    import torch.distributed as dist

    t = torch.tensor([1.0 if value else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0.5)


def full_state(wrapped: Any, names: set[str] | None = None) -> dict | None:
    """FSDP: the full (gathered) state dict on CPU, by the model's own parameter names, on rank 0 (every rank
    must call it); `names` keeps only those parameters."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    out = {k.removeprefix("model."): v for k, v in sd.items() if k.startswith("model.")}
    return {k: v for k, v in out.items() if names is None or k in names}


def optimizer_state(wrapped: Any, optimizer: Any) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(wrapped, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_state(wrapped: Any, optimizer: Any, params: dict, optim: dict) -> None:
    """FSDP: load full state dicts read from a checkpoint (every rank reads the same files)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(wrapped, {f"model.{k}": v for k, v in params.items()}, options=options)
    set_optimizer_state_dict(wrapped, optimizer, optim, options=StateDictOptions(full_state_dict=True))


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


# ----- the worker's entry point (run by torchrun) ---------------------------------------------------------------


def _init(spec: dict) -> Rank:
    import torch
    import torch.distributed as dist

    from emgui.core.lm.device import pick_device

    device = pick_device(spec["device"])
    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group("nccl" if cuda else "gloo")
    return Rank(dist.get_rank(), dist.get_world_size(), spec["strategy"], device)


def worker_main(argv: list[str]) -> int:
    global _CURRENT
    from emgui.core.jobs.kinds import get_kind
    from emgui.core.jobs.runner import _oom_message

    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    rank = _init(spec)
    _CURRENT = rank
    ctx = RankContext(spec, rank)
    code = 0
    try:
        result = get_kind(spec["kind"]).load()(dict(spec["params"]), ctx)
        if rank.main:
            ctx.flush()
            ctx.emit("result", result=result or {})
    except Cancelled:
        code = 3
    except EmguiError as exc:
        code = 1
        ctx.emit("error", error=str(exc), rank=rank.rank)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the job
        code = 1
        error = _oom_message(exc) or f"{type(exc).__name__}: {exc}"
        ctx.emit("error", error=f"rank {rank.rank}: {error}", rank=rank.rank)
        traceback.print_exc()
    finally:
        ctx.close()
    if code == 0:
        import torch.distributed as dist

        dist.destroy_process_group()
    return code


def _die_with_parent() -> None:
    """Linux: this worker gets SIGKILL when torchrun's agent dies, even by SIGKILL (no orphan keeps a GPU)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere the worker still stops when the app's process ends (RankContext polls it)


if __name__ == "__main__":
    # Run through the imported module: `python -m` executes this file as __main__, a second copy whose
    # globals (the current rank) the training code, which imports emgui.core.training.distributed, would not see.
    from emgui.core.training import distributed

    distributed._die_with_parent()
    sys.exit(distributed.worker_main(sys.argv[1:]))
