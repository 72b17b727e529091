"""The memory estimate (emgui/core/models/memory.py) against the measured peak, for random-init models of several sizes.

Each case runs the real `finetune` job (2 steps) in a fresh process on a Llama-shaped model built from a
config (no hub), on chats long enough that every row is max_len tokens and nearly every token is learned
(the estimate's logits term assumes all are). Measured: the process's peak resident memory (VmHWM) minus its
resident memory just before the job starts, on the CPU; with --cuda, `torch.cuda.max_memory_allocated`.
Compared with the estimate without its fixed overhead (the Python process, or the CUDA context).
Target: every case within 25 %.

    python bench/bench_memory.py               # about 5 minutes on 2 CPU cores
    python bench/bench_memory.py --quick       # the two smallest cases
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name: (hidden, layers, intermediate, heads, kv heads, vocab)
SHAPES = {
    "12M": (256, 4, 768, 4, 2, 32768),
    "70M": (576, 12, 1536, 9, 3, 49152),
    "140M": (768, 16, 2048, 12, 4, 49152),
    "240M": (1024, 16, 2816, 16, 8, 49152),
}
# (shape, method, batch, max_len, gradient checkpointing)
CASES = [
    ("12M", "lora", 4, 256, False),
    ("70M", "lora", 4, 256, False),
    ("70M", "full", 2, 256, False),
    ("140M", "lora", 4, 256, False),
    ("140M", "lora", 4, 256, True),
    ("70M", "qlora", 4, 256, True),
    ("240M", "lora", 2, 512, False),
]
QUICK = CASES[:2]


def config_dict(name: str) -> dict:
    hidden, layers, inter, heads, kv, vocab = SHAPES[name]
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "num_hidden_layers": layers, "intermediate_size": inter, "num_attention_heads": heads,
        "num_key_value_heads": kv, "vocab_size": vocab, "tie_word_embeddings": True,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
    }  # fmt: skip


def build_model(folder: Path, name: str) -> Path:
    """A random-init model of this shape with the tests' tiny tokenizer (its ids fit any vocabulary)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.builders import build_tiny_tokenizer

    if (folder / "config.json").is_file():
        return folder
    tokenizer = build_tiny_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(**{k: v for k, v in config_dict(name).items() if k not in ("architectures", "model_type")},
                         eos_token_id=eos, pad_token_id=eos, bos_token_id=None)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def chats_file(path: Path, n: int = 16) -> Path:
    """Chats whose answers are far longer than max_len: every row is full and almost all of it learned."""
    import random

    words = ["def", "return", "import", "value", "the", "of", "and", "to", "in", "for", "while", "if", "else", "print", "list", "dict", "data", "user"]
    rng = random.Random(0)
    with path.open("w") as fh:
        for i in range(n):
            answer = " ".join(rng.choice(words) for _ in range(1500))
            chat = [{"role": "user", "content": f"go {i}"}, {"role": "assistant", "content": answer}]
            fh.write(json.dumps({"messages": chat}) + "\n")
    return path


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def measure_one(spec: dict) -> dict:
    """In a fresh process: run the finetune job once; peak memory above the resident size before it."""
    import torch

    from emgui.core.jobs.runner import run_job
    from emgui.core.models.memory import FitSettings, estimate, shape_from_folder
    from emgui.core.project.store import Project
    from tests.builders import register_tiny

    torch.set_num_threads(int(spec.get("threads", 2)))
    cuda = spec["cuda"]
    work = Path(spec["work"])
    project = Project.create(work / f"proj-{os.getpid()}")
    register_tiny(project, "m", spec["folder"])
    register_tiny(project, "warm", spec["warm"])
    project.add_dataset(name="d", kind="chat", path=spec["chats"], n_rows=16)
    # A first job on a 2-layer model imports transformers, peft and the model's code and starts torch's
    # thread pools: the baseline below holds all that, so the measured peak is the job's own memory.
    warm = {"model": "warm", "dataset": "d", "method": spec["method"], "batch_size": 1, "max_len": 32,
            "max_steps": 1, "checkpoint_every": 0, "memory_check": False,
            "device": "cuda" if cuda else "cpu"}  # fmt: skip
    if run_job(project, project.create_job("finetune", warm)) != "succeeded":
        return {"error": "warm-up job failed"}
    params = {
        "model": "m", "dataset": "d", "method": spec["method"], "batch_size": spec["batch"],
        "max_len": spec["max_len"], "max_steps": 2, "checkpoint_every": 0, "lr": 1e-4,
        "gradient_checkpointing": spec["ckpt"], "memory_check": False,
        "device": "cuda" if cuda else "cpu", "dtype": "bf16" if cuda else "fp32",
    }  # fmt: skip
    job_id = project.create_job("finetune", params)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        import gc

        gc.collect()
        before = _status_kb("VmRSS")
    t0 = time.perf_counter()
    status = run_job(project, job_id)
    took = time.perf_counter() - t0
    job = project.get_job(job_id)
    if status != "succeeded":
        return {"error": job["error"]}
    peak = (torch.cuda.max_memory_allocated() if cuda else _status_kb("VmHWM")) - before
    settings = FitSettings(
        method=spec["method"], dtype="bf16" if cuda else "fp32", batch_size=spec["batch"],
        max_len=spec["max_len"], gradient_checkpointing=spec["ckpt"], device_kind="cuda" if cuda else "cpu",
    )  # fmt: skip
    est = estimate(shape_from_folder(spec["folder"]), settings)
    return {"measured": peak, "estimated": est.model_bytes, "parts": est.parts, "seconds": took}


def run_case(case: tuple, work: Path, chats: Path, cuda: bool, threads: int) -> dict:
    name, method, batch, max_len, ckpt = case
    from tests.builders import make_tiny_chat_model

    folder = build_model(work / f"model-{name}", name)
    warm = work / "warm-model"
    if not (warm / "config.json").is_file():
        make_tiny_chat_model(warm)
    spec = {"folder": str(folder), "warm": str(warm), "chats": str(chats), "work": str(work), "method": method, "batch": batch,
            "max_len": max_len, "ckpt": ckpt, "cuda": cuda, "threads": threads}  # fmt: skip
    out = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True, cwd=REPO
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": (out.stderr or out.stdout)[-800:]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cuda", action="store_true", help="measure torch.cuda.max_memory_allocated on a GPU")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(json.loads(args.one))))
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        chats = chats_file(work / "chats.jsonl")
        print(f"{'model':>6} {'method':>6} {'batch':>9} {'ckpt':>5} {'estimated':>10} {'measured':>9} {'ratio':>6} {'s':>5}")
        worst = 0.0
        for case in QUICK if args.quick else CASES:
            r = run_case(case, work, chats, args.cuda, args.threads)
            name, method, batch, max_len, ckpt = case
            if "error" in r:
                print(f"{name:>6} {method:>6} {batch:>3}x{max_len:<5} {ckpt!s:>5}  failed: {r['error']}")
                worst = float("inf")
                continue
            ratio = r["estimated"] / r["measured"]
            worst = max(worst, abs(ratio - 1))
            print(
                f"{name:>6} {method:>6} {batch:>3}x{max_len:<5} {ckpt!s:>5} {r['estimated'] / 2**20:8.0f}MB "
                f"{r['measured'] / 2**20:7.0f}MB {ratio:6.2f} {r['seconds']:5.0f}"
            )
        print(f"worst error {worst * 100:.0f} % (target <= 25 %)")


if __name__ == "__main__":
    main()
