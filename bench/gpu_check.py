"""GPU check: emgui's training, sampling and steering on random-init models, for a lent GPU (one H200: < 8 min).

No hub, no Qt: the models are built from configs (a SmolLM2-135M-shaped and a Llama-7B-shaped one), saved
into a temporary project with a small local tokenizer, and run through emgui's own jobs and functions:

  - `finetune` with LoRA and with QLoRA (4-bit NF4 base, bitsandbytes): training tokens/s (median of the steps
    after the first) and the model FLOPs utilisation, MFU = k x N x tokens/s / peak, with N the weights, k = 4
    for LoRA (forward, and the backward pass's input gradients; the frozen base gets no weight gradients)
    plus 2 with gradient checkpointing (the recomputed forward); attention FLOPs not counted;
  - the memory estimate (emgui.core.models.memory, the submit check's) against the measured peak
    (`torch.cuda.max_memory_allocated`, which sees live tensors: compared with the estimate less its fixed
    overhead);
  - batched sampling tokens/s (emgui.core.lm.generation), and steered (a random direction added at the middle
    layer, emgui.core.steering.steer) against plain generation;
  - an out-of-memory case: a full fine-tune too big for the device is refused at submit with settings that
    would fit, and with memory_check=false it fails the job with emgui's out-of-memory message, leaving the
    device's memory as it was.

It prints one table. `--smoke` runs the same steps on a tiny model on the CPU in a few seconds (the test
suite runs it); there the MFU and the measured peak are not meaningful and are shown as n/a.

    python bench/gpu_check.py            # on a GPU machine
    python bench/gpu_check.py --smoke    # anywhere
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES = {
    # SmolLM2-135M-Instruct's config (llama)
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    # Llama-2-7B's (Qwen2.5-7B differs in vocabulary and GQA, not in scale)
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False),
    "smoke": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),
}  # fmt: skip
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}  # dense bf16 tensor-core peaks, FLOP/s
GIB = 2**30


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, model: str, check: str, value: str, note: str = "") -> None:
        self.rows.append((model, check, value, note))
        print(f"  {model:8} {check:34} {value:>16}  {note}", flush=True)

    def show(self, header: str) -> None:
        widths = [max(len(r[i]) for r in self.rows + [("model", "check", "value", "note")]) for i in range(4)]
        line = "  ".join("-" * w for w in widths)
        print(f"\n{header}\n{line}")
        for row in [("model", "check", "value", "note"), *self.rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        print(line)


# ----- set-up: a random-init model in a temporary project --------------------------------------------------


def build_model(project: Any, name: str, shape: dict, device: str, dtype: Any) -> dict:
    """Save a random-init Llama of `shape` with a local tokenizer into the project; return its row."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tests.builders import CHAT_TEMPLATE, build_tiny_tokenizer

    folder = project.root.parent / f"{name}-model"
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(**shape, max_position_embeddings=8192, eos_token_id=eos, pad_token_id=eos, bos_token_id=None)
    torch.manual_seed(0)
    with torch.device(device):  # built where it runs: a 7B model initialises in seconds on a GPU
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    free_memory()
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    model_id = project.add_model(name=name, kind="folder", source=str(folder), path=folder,
                                 architecture="LlamaForCausalLM", n_params=n_params,
                                 dtype=str(dtype).replace("torch.", ""), size_bytes=size)  # fmt: skip
    return project.get_model(model_id)


def write_dataset(project: Any, name: str, n_chats: int, words: int) -> None:
    """Chats long enough to fill max_len (overlong chats are truncated): every row is a full row."""
    import random

    rng = random.Random(0)
    vocab = ["def", "return", "value", "the", "of", "and", "to", "in", "for", "while", "if", "else", "print", "list", "dict", "data", "user"]
    path = project.root.parent / f"{name}.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n_chats):
            answer = " ".join(rng.choice(vocab) for _ in range(words))
            chat = [{"role": "user", "content": f"Write code {i}."}, {"role": "assistant", "content": answer}]
            fh.write(json.dumps({"messages": chat}) + "\n")
    project.add_dataset(name=name, kind="chat", path=path, n_rows=n_chats)


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_peak() -> None:
    import torch

    free_memory()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_bytes() -> float | None:
    import torch

    return float(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


# ----- the checks ------------------------------------------------------------------------------------------


def run(project: Any, kind: str, params: dict) -> dict:
    from emgui.core.jobs.runner import run_job

    job_id = project.create_job(kind, params)
    run_job(project, job_id)
    return project.get_job(job_id)


def check_training(project: Any, table: Table, label: str, row: dict, method: str, opts: dict, peak_flops: float | None) -> None:
    from emgui.core.jobs.kinds import resolve_params
    from emgui.core.training.trainer import form_fit

    params = {"model": row["name"], "dataset": opts["dataset"], "method": method, "max_steps": opts["steps"],
              "batch_size": opts["batch"], "max_len": opts["max_len"], "checkpoint_every": 0, "lr": 1e-4,
              "memory_check": False, "name": f"{row['name']}-{method}"}  # fmt: skip
    report = form_fit(project, "finetune", row, resolve_params("finetune", params))
    reset_peak()
    job = run(project, "finetune", params)
    if job["status"] != "succeeded":
        table.add(label, f"{method} fine-tune", "FAILED", (job["error"] or "")[:120])
        return
    measured = peak_bytes()
    rates = [m["value"] for m in project.metrics(job["id"], name="tokens_per_s")][1:] or [0.0]
    tps = statistics.median(rates)
    k = 4 + (2 if method == "qlora" or opts.get("checkpointing") else 0)
    mfu = f"MFU {k * row['n_params'] * tps / peak_flops:.1%}" if peak_flops else "MFU n/a (no known peak)"
    table.add(label, f"{method} train tokens/s", f"{tps:,.0f}", f"{mfu}; batch {opts['batch']} x {opts['max_len']}")
    est = report.estimate.model_bytes
    if measured is None:
        table.add(label, f"{method} memory est. / peak", f"{est / GIB:.2f} / n/a GiB", "peak is measured on CUDA only")
    else:
        table.add(label, f"{method} memory est. / peak", f"{est / GIB:.2f} / {measured / GIB:.2f} GiB",
                  f"estimate {est / measured - 1:+.0%} (target: within 25 %)")  # fmt: skip


def check_sampling(project: Any, table: Table, label: str, row: dict, opts: dict) -> None:
    import torch

    from emgui.core.lm.generation import generate_batch
    from emgui.core.models.loading import load_model, load_tokenizer
    from emgui.core.steering.steer import (
        ResolvedSteering,
        SteeringSpec,
        direction_item,
        layer_hook_name,
        steer,
    )

    free_memory()
    model, tokenizer = load_model(project, row), load_tokenizer(project, row)
    convs = [[{"role": "user", "content": f"Tell me about thing {i}."}] for i in range(opts["gen_batch"])]
    new = opts["new_tokens"]

    def timed(model: Any, steering: Any) -> float:
        generate_batch(model, tokenizer, convs[:2], max_new_tokens=4, batch_size=2)  # warm-up
        sync()
        t0 = time.perf_counter()
        with steer(model, steering):
            generate_batch(model, tokenizer, convs, max_new_tokens=new, batch_size=len(convs), seed=1)
        sync()
        # random weights rarely sample the end-of-turn token: every answer runs to the limit (an upper bound)
        return len(convs) * new / (time.perf_counter() - t0)

    plain = timed(model, None)
    hook = layer_hook_name(model, model.config.num_hidden_layers // 2)
    vector = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    steered = timed(model, ResolvedSteering(SteeringSpec(), [direction_item(vector, hook, "add", 8.0, "random")]))
    table.add(label, "sampling tokens/s", f"{plain:,.0f}", f"batch {len(convs)}, {new} new tokens")
    table.add(label, "steered / plain generation", f"{steered / plain:.2f}", f"steered {steered:,.0f} tokens/s at {hook}")
    del model
    free_memory()


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def check_oom(project: Any, table: Table, label: str, row: dict, opts: dict, on_gpu: bool) -> None:
    """Too big: refused at submit with settings that fit; forced (memory_check=false), it fails cleanly."""
    import torch

    from emgui.core.errors import EmguiError
    from emgui.core.jobs.kinds import get_kind, resolve_params

    params = {"model": row["name"], "dataset": opts["oom_dataset"], "method": "full", "max_steps": 1,
              "batch_size": opts["oom_batch"], "max_len": opts["oom_len"], "name": f"{row['name']}-oom"}  # fmt: skip
    try:
        get_kind("finetune").run_precheck(project, resolve_params("finetune", params))
        table.add(label, "too big: refused at submit", "NO", "the estimate thought it fits")
    except EmguiError as exc:
        advice = str(exc).split("settings that would fit: ")[-1][:70]
        table.add(label, "too big: refused at submit", "yes", f"suggests {advice}")
    if not on_gpu:
        table.add(label, "too big, forced: job fails cleanly", "skipped", "on the CPU it would swap, not fail")
        return
    before = torch.cuda.memory_allocated()
    job = run(project, "finetune", {**params, "memory_check": False})
    free_memory()
    after = torch.cuda.memory_allocated()
    clean = job["status"] == "failed" and (job["error"] or "").startswith("out of memory")
    note = f"{(job['error'] or job['status'])[:60]}...; {abs(after - before) / GIB:.2f} GiB left behind"
    table.add(label, "too big, forced: job fails cleanly", "yes" if clean and after - before < GIB else "NO", note)


# ----- main --------------------------------------------------------------------------------------------------


def plan(smoke: bool) -> tuple[list[tuple[str, dict, dict]], str]:
    import torch

    on_gpu = torch.cuda.is_available() and not smoke
    if not on_gpu:
        opts = {"steps": 3, "batch": 2, "max_len": 64, "gen_batch": 4, "new_tokens": 8,
                "oom_batch": 4096, "oom_len": 8192}  # fmt: skip
        return [("smoke", SHAPES["smoke"], opts)], "cpu"
    small = {"steps": 12, "batch": 16, "max_len": 1024, "gen_batch": 64, "new_tokens": 128,
             "oom_batch": 64, "oom_len": 8192}  # fmt: skip
    big = {"steps": 8, "batch": 4, "max_len": 1024, "gen_batch": 32, "new_tokens": 64,
           "oom_batch": 32, "oom_len": 8192}  # fmt: skip
    return [("smollm2", SHAPES["smollm2"], small), ("7b", SHAPES["7b"], big)], "cuda"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny model on the CPU, in seconds")
    parser.add_argument("--only", choices=sorted(SHAPES), help="run one model shape")
    args = parser.parse_args(argv)
    import torch

    from emgui.core.lm.device import training_dtype
    from emgui.core.project.store import Project

    runs, device = plan(args.smoke)
    runs = [r for r in runs if args.only in (None, r[0])]
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None) if device == "cuda" else None
    dtype = training_dtype(device)
    has_bnb = _has_bitsandbytes()
    table = Table()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="emgui-gpu-check-") as tmp:
        project = Project.create(Path(tmp) / "proj")
        for label, shape, opts in runs:
            t0 = time.monotonic()
            row = build_model(project, label, shape, device, dtype)
            write_dataset(project, f"{label}-data", opts["steps"] * opts["batch"], words=opts["max_len"])
            write_dataset(project, f"{label}-long", opts["oom_batch"] if device == "cuda" else 2, words=opts["oom_len"])
            opts = {**opts, "dataset": f"{label}-data", "oom_dataset": f"{label}-long"}
            check_training(project, table, label, row, "lora", opts, peak)
            if has_bnb:
                check_training(project, table, label, row, "qlora", opts, peak)
            else:
                table.add(label, "qlora fine-tune", "skipped", "bitsandbytes is not installed")
            check_sampling(project, table, label, row, opts)
            check_oom(project, table, label, row, opts, device == "cuda")
            table.add(label, "wall time", f"{time.monotonic() - t0:.0f} s", f"{row['n_params'] / 1e6:,.2f} M weights")
        project.close()
    table.show(f"emgui GPU check on {name} ({dtype}, torch {torch.__version__}) in {time.monotonic() - started:.0f} s")
    return 1 if any(r[2] in ("FAILED", "NO") for r in table.rows) else 0


def _has_bitsandbytes() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
