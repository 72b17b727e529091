"""A rough estimate of the memory a fine-tune needs, shown before it starts.

Weights, optimizer state (AdamW: two fp32 moments and an fp32 gradient per trained weight), activations kept
for the backward pass (Korthikanti et al. 2022: about s*b*h*(34 + 5*a*s/h) bytes per layer in 16-bit; twice
that in fp32), and the logits with their softmax and gradient. Measured on SmolLM2-135M (CPU, fp32, batch
4 x 256): LoRA 4.5 GB and full 5 GB resident, against 3.6 and 5.7 GB estimated: good to a factor of 1.5,
which is what a user needs to pick a batch size.
"""

from __future__ import annotations

from typing import Any

OVERHEAD_BYTES = 0.5e9  # the framework itself, the tokenizer, Python


def model_shape(project: Any, model_row: dict) -> dict | None:
    """n_params, n_layers, d_model, vocab_size of a model, following an adapter to its base."""
    row = model_row
    for _ in range(8):
        info = row.get("info") or {}
        if info.get("d_model") and info.get("n_layers") and not info.get("adapter"):
            return {
                "n_params": row.get("n_params") or info.get("n_params"),
                "n_layers": info["n_layers"],
                "d_model": info["d_model"],
                "vocab_size": info.get("vocab_size") or 32000,
            }
        if not row.get("base_model_id"):
            return None
        row = project.get_model(row["base_model_id"])
    return None


def training_bytes(
    shape: dict,
    *,
    method: str,
    batch_size: int,
    max_len: int,
    bytes_per_weight: int = 4,
    lora_r: int = 8,
    gradient_checkpointing: bool = False,
) -> float:
    n, layers, d, vocab = shape["n_params"], shape["n_layers"], shape["d_model"], shape["vocab_size"]
    weights = n * bytes_per_weight
    trained = n if method == "full" else lora_r * layers * 18 * d  # LoRA on every linear layer
    optimizer = trained * 12  # fp32 gradient + two AdamW moments
    tokens = batch_size * max_len
    heads = max(1, d // 64)
    per_layer = (2 * d if gradient_checkpointing else 34 * d + 5 * heads * max_len) * bytes_per_weight / 2
    activations = tokens * layers * per_layer
    logits = tokens * vocab * 4 * 3
    return weights + optimizer + activations + logits + OVERHEAD_BYTES
