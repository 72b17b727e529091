"""The memory estimate: shapes from configs, trainable counts against peft's, how settings move it, and a
fine-tune refused at submit (no job row) with settings that would fit. The estimate against measured peaks
is bench/bench_memory.py (a bench, not a test: it takes minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from emgui.core.errors import EmguiError
from emgui.core.jobs.runner import JobManager
from emgui.core.models.memory import (
    GIB,
    FitSettings,
    estimate,
    fit_report,
    shape_from_config,
    trainable_params,
)
from emgui.core.project.store import Project
from tests.builders import register_tiny, tiny_chats, write_chats

SMOLLM2 = {  # SmolLM2-135M-Instruct's config.json (the parts that matter)
    "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
    "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True,
}  # fmt: skip
LLAMA7B = {
    "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False,
}  # fmt: skip
QWEN32B = {
    "hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 64, "num_attention_heads": 40,
    "num_key_value_heads": 8, "vocab_size": 152064, "tie_word_embeddings": False,
}  # fmt: skip


@pytest.fixture
def proj(project: Project, tiny_model_dir: Path, tmp_path: Path) -> Project:
    register_tiny(project, "tiny", tiny_model_dir)
    project.add_dataset(name="mem", kind="chat", path=write_chats(tmp_path / "mem.jsonl", tiny_chats(8)), n_rows=8)
    return project


def test_shapes_count_the_parameters_of_real_configs() -> None:
    assert shape_from_config(SMOLLM2).total_params == 134_515_008  # what its safetensors hold
    assert shape_from_config(LLAMA7B).total_params == 6_738_415_616  # Llama-2-7B
    qwen = shape_from_config(QWEN32B).total_params
    assert 32.0e9 < qwen < 32.8e9  # Qwen2.5-32B without its q/k/v biases (5 M)


def test_lora_trainable_count_matches_peft(tiny_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from emgui.core.models.memory import shape_from_folder

    shape = shape_from_folder(tiny_model_dir)
    for r, targets, layers in ((8, "all-linear", None), (1, ["down_proj"], [1]), (4, ["q_proj", "v_proj"], None)):
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
            LoraConfig(r=r, target_modules=targets, layers_to_transform=layers, task_type="CAUSAL_LM"),
        )
        counted = sum(p.numel() for p in model.parameters() if p.requires_grad)
        settings = FitSettings(lora_r=r, target_modules=targets, layers=tuple(layers) if layers else None)
        assert trainable_params(shape, settings) == counted, (r, targets, layers)


def test_settings_move_the_estimate_the_right_way() -> None:
    shape = shape_from_config(LLAMA7B)
    base = FitSettings(method="lora", dtype="bf16", batch_size=4, max_len=1024, device_kind="cuda")
    lora = estimate(shape, base)
    ckpt = estimate(shape, FitSettings(**{**base.__dict__, "gradient_checkpointing": True}))
    qlora = estimate(shape, FitSettings(**{**base.__dict__, "method": "qlora"}))
    full = estimate(shape, FitSettings(**{**base.__dict__, "method": "full"}))
    fsdp = estimate(shape, FitSettings(**{**base.__dict__, "method": "full", "devices": 4, "strategy": "fsdp"}))
    assert ckpt.parts["activations"] < lora.parts["activations"] / 10
    assert ckpt.parts["weights"] == lora.parts["weights"]
    assert qlora.parts["weights"] < lora.parts["weights"] / 3  # 4-bit linear layers, 16-bit embeddings
    assert full.parts["trainable"] > 2 * shape.total_params * 2  # AdamW's two moments in bf16 at least
    def sharded(e):  # what FSDP divides between devices (activations are per device's own batch)
        return e.parts["weights"] + e.parts["trainable"]

    assert sharded(fsdp) < sharded(full) / 2.5 and fsdp.parts["activations"] == full.parts["activations"]
    assert abs(lora.parts["weights"] - shape.total_params * 2) < 0.01 * shape.total_params * 2
    assert estimate(shape, FitSettings(**{**base.__dict__, "batch_size": 8})).total > lora.total


def test_a_7b_lora_on_a_24gb_gpu_needs_checkpointing_and_a_32b_needs_qlora() -> None:
    s = FitSettings(method="lora", dtype="bf16", batch_size=4, max_len=1024, device_kind="cuda")
    report = fit_report(shape_from_config(LLAMA7B), s, free=[24 * GIB])
    assert not report.fits
    changes = [change for change, _ in report.suggestions]
    assert changes[0] == {"gradient_checkpointing": True}
    assert all(need <= 24 * GIB for _, need in report.suggestions)
    assert "gradient_checkpointing=true" in report.advice()

    big = fit_report(shape_from_config(QWEN32B), s, free=[24 * GIB])
    assert not big.fits and big.suggestions
    assert all(change.get("method") == "qlora" for change, _ in big.suggestions)
    on_80 = fit_report(shape_from_config(QWEN32B), s, free=[80 * GIB])  # H100: LoRA in bf16 with checkpointing
    assert not on_80.fits and on_80.suggestions[0][0] == {"gradient_checkpointing": True}


def test_a_job_that_will_not_fit_is_refused_at_submit_with_settings_that_would(
    proj: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    from emgui.core.models.memory import model_shape
    from emgui.core.training.trainer import TrainConfig, fit_settings

    settings = fit_settings(TrainConfig(batch_size=8, max_len=1024))
    need = estimate(model_shape(proj, proj.get_model("tiny")), settings)
    # room for the model, but not for batch 8 x 1024 tokens' activations and logits
    monkeypatch.setenv("EMGUI_FREE_MEMORY", str(int(need.total - 0.5 * need.parts["logits"])))
    manager = JobManager(proj)
    params = {"model": "tiny", "dataset": "mem", "batch_size": 8, "max_len": 1024, "max_steps": 1}
    with pytest.raises(EmguiError) as err:
        manager.submit("finetune", params)
    text = str(err.value)
    assert "will not fit" in text and "settings that would fit" in text and "batch_size=4 grad_accum=2" in text
    assert "memory_check=false" in text
    assert proj.list_jobs() == []  # refused before a row exists

    job_id = manager.submit("finetune", {**params, "memory_check": False})
    assert manager.wait(job_id, 120) == "succeeded"
    lines = [row["text"] for row in proj.logs(job_id)]
    assert any(line.startswith("memory: about") and "may not fit" in line for line in lines)


def test_the_estimate_is_logged_by_a_job_that_fits(proj: Project) -> None:
    manager = JobManager(proj)
    job_id = manager.submit("finetune", {"model": "tiny", "dataset": "mem", "max_steps": 1})
    assert manager.wait(job_id, 120) == "succeeded"
    lines = [row["text"] for row in proj.logs(job_id)]
    assert any(line.startswith("memory: about") and "GiB free" in line for line in lines), lines


def test_bad_training_parameters_are_refused_at_submit(proj: Project) -> None:
    with pytest.raises(EmguiError, match="strategy"):
        JobManager(proj).submit("finetune", {"model": "tiny", "dataset": "mem", "strategy": "zero3"})
    with pytest.raises(EmguiError, match="method"):
        JobManager(proj).submit("realign", {"model": "tiny", "method": "int8"})
    assert proj.list_jobs() == []
