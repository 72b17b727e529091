"""Activation capture, SAE training (a real sae-lens SAE on a tiny model), the sae-lens round trip,
cancel/resume, the pretrained registry, and refusal of SAEs that do not fit or whose files are corrupt."""

# ruff: noqa: F811  (pytest fixtures imported from tests.builders are parameters of the tests)
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from emgui.core.errors import EmguiError
from emgui.core.jobs.runner import prepare_resume, run_job
from emgui.core.lm import activations as A
from emgui.core.project.store import Project
from tests.builders import register_tiny, tiny_chats, tiny_model_dir, write_chats  # noqa: F401

TRAIN = {"hook": "model.layers.0", "d_sae": 64, "k": 4, "batch_size": 256, "lr": 3e-3, "ce_sequences": 4}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors; other suites share the cores


@pytest.fixture
def tiny_project(project: Project, tiny_model_dir: Path) -> Project:
    register_tiny(project, folder=tiny_model_dir)
    path = write_chats(project.root.parent / "chats.jsonl", tiny_chats(40))
    project.add_dataset(name="chats", kind="chat", path=path, n_rows=40)
    return project


def _load(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def _batch(tokenizer, n: int = 4) -> dict:
    seqs = [A.encode_chat(tokenizer, c)["input_ids"] for c in tiny_chats(n)]
    return A.pad_batch(seqs, tokenizer.pad_token_id)


# ------------------------------------------------------------------------------------------ capture
def test_capture_matches_hidden_states_and_stops_early(tiny_model_dir: Path) -> None:
    import torch

    model, tok = _load(tiny_model_dir)
    batch = _batch(tok)
    with torch.no_grad():
        ref = model(**batch, output_hidden_states=True).hidden_states
    calls = []
    handle = model.model.layers[1].register_forward_hook(lambda *a: calls.append(1))
    out = next(A.capture(model, "model.layers.0", [batch]))
    assert calls == []  # early exit: layer 1 never ran
    assert torch.allclose(out, ref[1], atol=1e-6)
    full = next(A.capture(model, "model.layers.0", [batch], early_exit=False))
    assert calls == [1] and torch.allclose(full, ref[1], atol=1e-6)
    handle.remove()
    # the input of layer 1 is the output of layer 0; TransformerLens names map onto the same points
    assert torch.allclose(next(A.capture(model, "model.layers.1:input", [batch])), ref[1], atol=1e-6)
    assert torch.allclose(next(A.capture(model, "blocks.1.hook_resid_pre", [batch])), ref[1], atol=1e-6)
    assert torch.allclose(next(A.capture(model, "blocks.0.hook_resid_post", [batch])), ref[1], atol=1e-6)
    # self_attn returns a tuple: the hook takes its hidden state
    assert next(A.capture(model, "model.layers.0.self_attn", [batch])).shape == ref[1].shape
    assert A.width_at(model, "model.layers.0.mlp.act_fn") == model.config.intermediate_size


def test_capture_through_peft_and_bad_hook_names(tiny_model_dir: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    model, tok = _load(tiny_model_dir)
    batch = _batch(tok, 2)
    plain = next(A.capture(model, "model.layers.1", [batch]))
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["down_proj"]))
    assert A.resolve_module(peft_model, "model.layers.1") is peft_model.get_base_model().model.layers[1]
    assert torch.allclose(next(A.capture(peft_model, "model.layers.1", [batch])), plain, atol=1e-6)
    with pytest.raises(EmguiError, match=r"model.layers.0 … model.layers.1"):
        A.resolve_module(model, "model.layers.7")
    with pytest.raises(EmguiError, match="must be 'input' or 'output'"):
        A.parse_hook("model.layers.0:middle")


def test_edit_output_replaces_the_hidden_state(tiny_model_dir: Path) -> None:
    model, tok = _load(tiny_model_dir)
    batch = _batch(tok, 2)
    with A.edit_output(model, "model.layers.0", lambda h: h * 0):
        assert float(next(A.capture(model, "model.layers.1:input", [batch])).abs().max()) == 0.0
    assert float(next(A.capture(model, "model.layers.1:input", [batch])).abs().max()) > 0.0


def test_answer_mask_covers_exactly_the_answer(tiny_model_dir: Path) -> None:
    _, tok = _load(tiny_model_dir)
    for chat in tiny_chats(4):
        enc = A.encode_chat(tok, chat)
        answer = [t for t, m in zip(enc["input_ids"], enc["answer_mask"], strict=True) if m]
        assert tok.decode(answer) == chat[-1]["content"]
        assert enc["answer_mask"][0] == 0 and len(enc["input_ids"]) == len(enc["answer_mask"])


# ------------------------------------------------------------------------------------------ training
def test_train_topk_sae_round_trips_through_sae_lens(tiny_project: Project, tiny_model_dir: Path) -> None:
    import torch
    from sae_lens import SAE

    from emgui.core.features.saes import load_sae

    job = tiny_project.create_job(
        "sae-train", {"model": "tiny", "datasets": ["chats"], "tokens": 150 * 256, **TRAIN}
    )
    assert run_job(tiny_project, job) == "succeeded", tiny_project.get_job(job)["error"]
    row = tiny_project.query_one("SELECT * FROM saes")
    assert (row["d_in"], row["d_sae"], row["architecture"], row["source"]) == (32, 64, "topk", "trained")
    assert row["hook_name"] == "model.layers.0" and row["model_id"] == 1
    info = row["info"]
    assert info["explained_variance"] > 0.5 and abs(info["l0"] - 4) < 1e-6
    assert 0.0 <= info["dead_fraction"] <= 1.0
    warned = any("reconstructs poorly" in line["text"] for line in tiny_project.logs(job))
    assert warned == (info["explained_variance"] < 0.5 or info["dead_fraction"] > 0.5)
    # a random tiny model predicts almost uniformly, so only the ordering of the gaps is meaningful here
    clean, spliced, zero = info["ce_loss_clean"], info["ce_loss_sae"], info["ce_loss_zero"]
    assert abs(spliced - clean) < abs(zero - clean)
    assert info["ce_loss_recovered"] == pytest.approx((zero - spliced) / (zero - clean))
    curves = {
        name: [m["value"] for m in tiny_project.metrics(job, name=name)]
        for name in tiny_project.metric_names(job)
    }
    assert {"loss", "l0", "explained_variance", "dead_fraction"} <= set(curves)
    assert curves["loss"][-1] < 0.5 * curves["loss"][0]

    folder = tiny_project.abspath(row["path"])
    assert (folder / "cfg.json").is_file() and (folder / "sae_weights.safetensors").is_file()
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "model.layers.0"
    direct = SAE.load_from_disk(str(folder))  # sae-lens alone reads what we wrote
    ours = load_sae(tiny_project, row["id"])
    assert torch.allclose(direct.W_dec.norm(dim=-1), torch.ones(64), atol=1e-4)  # decoder norms folded
    model, tok = _load(tiny_model_dir)
    acts = next(A.capture(model, "model.layers.0", [_batch(tok, 8)]))[:, 1:].reshape(-1, 32)
    with torch.no_grad():
        assert torch.allclose(direct.encode(acts), ours.encode(acts), atol=1e-5)
        recon = direct(acts)
    ev = 1 - (acts - recon).pow(2).sum() / (acts - acts.mean(0)).pow(2).sum()
    assert float(ev) > 0.5


def test_train_cancel_then_resume_continues(tiny_project: Project) -> None:
    params = {
        "model": "tiny",
        "datasets": ["chats"],
        "tokens": 160 * 256,
        "architecture": "jumprelu",
        **TRAIN,
    }
    params["l0_coefficient"] = 0.1
    params.pop("k")
    job = tiny_project.create_job("sae-train", params)
    cancel = threading.Event()

    def listener(event) -> None:
        if event.type == "progress" and event.data["message"].startswith("training step 60 "):
            cancel.set()

    assert run_job(tiny_project, job, cancel_event=cancel, listener=listener) == "cancelled"
    assert tiny_project.get_job(job)["checkpoint"]["stage"] == "train"
    assert tiny_project.query("SELECT * FROM saes") == []
    prepare_resume(tiny_project, job)
    assert run_job(tiny_project, job) == "succeeded", tiny_project.get_job(job)["error"]
    logs = [line["text"] for line in tiny_project.logs(job)]
    assert any(t.startswith("reusing") for t in logs)
    resumed = [t for t in logs if t.startswith("resuming SAE training at step")]
    # cancelled in the progress call after step 61's update: it resumes there, losing and repeating nothing
    assert resumed == ["resuming SAE training at step 61 of 160"]
    assert sorted(m["step"] for m in tiny_project.metrics(job, name="loss")) == list(range(160))
    row = tiny_project.query_one("SELECT * FROM saes")
    assert row["architecture"] == "jumprelu" and row["info"]["steps"] == 160


def test_training_needs_a_corpus_and_a_free_name(tiny_project: Project) -> None:
    job = tiny_project.create_job("sae-train", {"model": "tiny"})
    assert run_job(tiny_project, job) == "failed"
    assert "choose a corpus" in tiny_project.get_job(job)["error"]
    job = tiny_project.create_job("sae-train", {"model": "tiny", "datasets": ["nope"]})
    assert run_job(tiny_project, job) == "failed"
    assert "no dataset 'nope'" in tiny_project.get_job(job)["error"]


# ------------------------------------------------------------------------------------------ refusals
def _local_sae(folder: Path, d_in: int = 32, d_sae: int = 16, hook: str = "model.layers.1") -> Path:
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook)))
    sae.save_model(folder)
    return folder


def test_sae_that_does_not_fit_is_refused(tiny_project: Project, tmp_path: Path) -> None:
    from emgui.core.features.saes import check_fits_model, import_folder

    with pytest.raises(EmguiError, match="hidden size 32"):
        import_folder(tiny_project, _local_sae(tmp_path / "wide", d_in=48), model="tiny")
    with pytest.raises(EmguiError, match="only 2 layers"):
        import_folder(tiny_project, _local_sae(tmp_path / "deep", hook="model.layers.5"), model="tiny")
    assert tiny_project.query("SELECT * FROM saes") == []  # nothing registered or copied
    assert not any((tiny_project.artifacts_dir / "saes").glob("*"))
    model, _ = _load(tiny_project.model_path(tiny_project.get_model("tiny")))
    with pytest.raises(EmguiError, match="produces 64 there"):
        check_fits_model(model, {"name": "x", "hook_name": "model.layers.0.mlp.act_fn", "d_in": 32})
    with pytest.raises(EmguiError, match="does not name a module"):
        check_fits_model(model, {"name": "x", "hook_name": "model.layers.0.nope", "d_in": 32})


def test_corrupt_sae_files_are_refused_naming_the_file(tiny_project: Project, tmp_path: Path) -> None:
    from emgui.core.features.saes import import_folder, load_sae

    folder = _local_sae(tmp_path / "ok")
    sae_id = import_folder(tiny_project, folder, model="tiny", name="ok")
    assert load_sae(tiny_project, "ok").cfg.d_sae == 16
    stored = (
        tiny_project.abspath(tiny_project.query_one("SELECT path FROM saes")["path"])
        / "sae_weights.safetensors"
    )
    stored.write_bytes(stored.read_bytes()[:100])  # truncated after import
    with pytest.raises(EmguiError, match=str(stored)):
        load_sae(tiny_project, sae_id)
    bad = _local_sae(tmp_path / "bad")
    (bad / "cfg.json").write_text("{not json")
    with pytest.raises(EmguiError, match=r"cfg.json is not valid JSON"):
        import_folder(tiny_project, bad)
    garbage = _local_sae(tmp_path / "garbage")
    (garbage / "sae_weights.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(EmguiError, match="sae_weights.safetensors"):
        import_folder(tiny_project, garbage)


# ------------------------------------------------------------------------------------------ registry
def test_pretrained_registry_listing() -> None:
    from emgui.core.features.saes import list_releases, model_matches, release_saes

    releases = list_releases()
    assert len(releases) > 100
    gpt2 = {r["release"] for r in list_releases(["openai-community/gpt2"])}
    assert "gpt2-small-res-jb" in gpt2 and all("gemma" not in r for r in gpt2)
    assert model_matches("https://huggingface.co/google/gemma-2-2b", ["google/gemma-2-2b"])
    assert not model_matches("gemma-2-2b", ["HuggingFaceTB/SmolLM2-135M-Instruct"])
    ids = [s["id"] for s in release_saes("gpt2-small-res-jb")]
    assert "blocks.8.hook_resid_pre" in ids
    with pytest.raises(EmguiError, match="no release 'gpt2-small-res'.*gpt2-small-res-jb"):
        release_saes("gpt2-small-res")


def test_pretrained_download_offline_fails_fast(tiny_project: Project, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    job = tiny_project.create_job(
        "sae-pretrained", {"release": "gpt2-small-res-jb", "sae_id": "blocks.8.hook_resid_pre"}
    )
    start = time.monotonic()
    assert run_job(tiny_project, job) == "failed"
    assert time.monotonic() - start < 10
    assert "offline" in tiny_project.get_job(job)["error"]
    job = tiny_project.create_job("sae-pretrained", {"release": "gpt2-small-res-jb", "sae_id": "nope"})
    assert run_job(tiny_project, job) == "failed"
    assert "has no SAE 'nope'" in tiny_project.get_job(job)["error"]


def test_saved_locally_then_always_loaded_from_disk(tiny_project: Project, tmp_path: Path) -> None:
    """The pretrained path's second half, with a locally built SAE: save into the project, register, then
    load from the project's copy with nothing else around."""
    import torch
    from sae_lens import SAE

    from emgui.core.features.saes import load_sae, save_and_register

    original = SAE.load_from_disk(str(_local_sae(tmp_path / "src")))
    sae_id = save_and_register(
        tiny_project, original, name="pre", source="pretrained:rel/id", model_id=1, info={"l0": 3}
    )
    row = tiny_project.query_one("SELECT * FROM saes WHERE id = ?", [sae_id])
    assert row["source"] == "pretrained:rel/id" and row["hook_name"] == "model.layers.1"
    folder = tiny_project.abspath(row["path"])
    assert folder.is_relative_to(tiny_project.artifacts_dir)
    for f in (tmp_path / "src").iterdir():
        os.remove(f)  # the download's copy is gone: only the project's copy remains
    loaded = load_sae(tiny_project, "pre")
    x = torch.randn(5, 32)
    assert torch.allclose(loaded.decode(loaded.encode(x)), original.decode(original.encode(x)), atol=1e-5)
    with pytest.raises(EmguiError, match="already exists"):
        save_and_register(tiny_project, original, name="pre", source="folder")


def test_import_with_another_hook_updates_its_config(tiny_project: Project, tmp_path: Path) -> None:
    from emgui.core.features.saes import import_folder, load_sae

    sae_id = import_folder(
        tiny_project, _local_sae(tmp_path / "s"), model="tiny", hook_name="blocks.0.hook_resid_post"
    )
    row = tiny_project.query_one("SELECT * FROM saes WHERE id = ?", [sae_id])
    assert row["hook_name"] == "blocks.0.hook_resid_post" and row["source"] == "folder"
    cfg = json.loads((tiny_project.abspath(row["path"]) / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.0.hook_resid_post"
    assert load_sae(tiny_project, sae_id).cfg.metadata.hook_name == "blocks.0.hook_resid_post"
    with pytest.raises(EmguiError, match="only 2 layers"):
        import_folder(
            tiny_project, _local_sae(tmp_path / "t"), model="tiny", hook_name="blocks.2.hook_resid_post"
        )
