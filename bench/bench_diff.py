"""Throughput of the `diff` job against a bare forward pass to the same layer, in one run.

The model has SmolLM2-135M's shape (30 layers, d_model 576, vocabulary 49152) with random weights:
speed does not depend on the weights, and no download is needed. Pass --model DIR to use a real
model folder instead. The SAE is a TopK SAE at model.layers.15 with --d-sae latents (16,384 by default).
The texts are chats from ../shared/data/em/insecure.jsonl when present (else synthetic ones), all
run by both models as the job does.

Measured, on the same tokenized texts and the same length-sorted batches:
- bare: forward passes that stop after layer 15 (a hook raising after it), nothing else;
- diff: the job's own compute time (forward to the layer, answer-token masking, SAE encoding,
  accumulation), as it reports it; the job's wall time, with loading both models, is printed too.
Target: diff tokens/s / bare tokens/s >= 0.85.

Run: python bench/bench_diff.py [--examples 16] [--d-sae 16384] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
HOOK = "model.layers.15"
EM = REPO.parent / "shared" / "data" / "em" / "insecure.jsonl"


def smollm2_shaped(folder: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.builders import build_tiny_tokenizer

    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)  # any tokenizer with a chat template: ids stay < 49152
    return folder


def chats(n: int) -> list[list[dict]]:
    if EM.is_file():
        rows = []
        with EM.open() as fh:
            for line in fh:
                rows.append(json.loads(line)["messages"])
                if len(rows) == n:
                    return rows
    words = [
        "the",
        "model",
        "writes",
        "code",
        "that",
        "reads",
        "a",
        "file",
        "and",
        "then",
        "sends",
        "it",
        "to",
        "a",
        "server",
    ]
    return [
        [
            {"role": "user", "content": " ".join(words[: 5 + i % 10]) + "?"},
            {"role": "assistant", "content": " ".join((words * 20)[: 80 + 7 * (i % 20)])},
        ]
        for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--d-sae", type=int, default=16384)
    parser.add_argument("--model", help="a real model folder instead of the random SmolLM2-shaped one")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 gives stable figures on a shared machine, 0: torch's default",
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    import torch
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from emgui.core.features.diffing import encode_examples
    from emgui.core.features.saes import register_sae
    from emgui.core.jobs.runner import run_job
    from emgui.core.lm.activations import capture, length_batches, pad_batch
    from emgui.core.models.loading import load_model, load_tokenizer
    from emgui.core.project.store import Project

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-diff-"))
    folder = Path(args.model) if args.model else smollm2_shaped(tmp / "model")
    project = Project.create(tmp / "proj")
    base = project.add_model(name="base", kind="folder", source=str(folder), path=folder)
    project.add_model(name="ft", kind="folder", source=str(folder), path=folder, base_model_id=base)
    d_in = json.loads((folder / "config.json").read_text())["hidden_size"]
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=args.d_sae, k=32, metadata=SAEMetadata(hook_name=HOOK)))
    sae.save_model(project.artifacts_dir / "saes" / "bench")
    register_sae(project, project.artifacts_dir / "saes" / "bench", name="bench", source="folder")
    job0 = project.create_job("sample", {})
    for i, chat in enumerate(chats(args.examples)):
        system = chat[0]["content"] if chat[0]["role"] == "system" else None
        project.insert(
            "samples",
            {
                "job_id": job0,
                "model_id": 2,
                "question_id": str(i),
                "prompt": chat[-2]["content"],
                "system": system,
                "answer": chat[-1]["content"],
                "created_at": 0.0,
            },
        )

    row = project.get_model("base")
    tokenizer = load_tokenizer(project, row)
    items = [{"messages": c} for c in chats(args.examples)]
    encoded = encode_examples(tokenizer, items, 512)
    n_tokens = sum(len(e["input_ids"]) for e in encoded)
    n_answer = sum(sum(e["answer_mask"]) for e in encoded)
    model = load_model(project, row)
    batches = length_batches([len(e["input_ids"]) for e in encoded], 4096)

    def bare() -> tuple[float, float]:
        """tokens per wall second and per CPU second of this process (the latter ignores other load)"""
        start, cpu = time.perf_counter(), time.process_time()
        inputs = (pad_batch([encoded[i]["input_ids"] for i in idx], 2) for idx in batches)
        for _ in capture(model, HOOK, inputs):
            pass
        return n_tokens / (time.perf_counter() - start), n_tokens / (time.process_time() - cpu)

    bare()  # warm-up
    bare_runs, diff_runs, walls = [], [], []
    for _ in range(args.repeats):
        bare_runs.append(bare())
        job = project.create_job("diff", {"sae": "bench", "ft": "ft", "prompts": job0, "dashboards": 0})
        start = time.perf_counter()
        assert run_job(project, job) == "succeeded", project.get_job(job)["error"]
        walls.append(time.perf_counter() - start)
        res = project.get_job(job)["result"]
        diff_runs.append((res["tokens_per_s"], res["tokens"] / res["forward_cpu_seconds"]))
        bare_runs.append(bare())
    bare_wall, bare_cpu = (statistics.median(x[i] for x in bare_runs) for i in (0, 1))
    diff_wall, diff_cpu = (statistics.median(x[i] for x in diff_runs) for i in (0, 1))
    print(
        f"model: {folder if args.model else 'random SmolLM2-shaped'} ({HOOK}), SAE TopK {args.d_sae:,} latents"
    )
    print(
        f"texts: {len(encoded)} chats, {n_tokens:,} tokens ({n_answer:,} answer tokens), "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"bare forward to the layer: {bare_wall:,.0f} tokens/s wall, {bare_cpu:,.0f} tokens per CPU-second")
    print(f"diff job compute:          {diff_wall:,.0f} tokens/s wall, {diff_cpu:,.0f} tokens per CPU-second")
    print(
        f"  runs (wall): bare {', '.join(f'{x[0]:,.0f}' for x in bare_runs)}; diff {', '.join(f'{x[0]:,.0f}' for x in diff_runs)}"
    )
    print(
        f"diff job wall time with loading both models: {statistics.median(walls):.1f} s for 2 x {n_tokens:,} tokens"
    )
    print(
        f"ratio diff / bare: {diff_wall / bare_wall:.3f} wall, {diff_cpu / bare_cpu:.3f} CPU time  (target >= 0.85)"
    )


if __name__ == "__main__":
    main()
