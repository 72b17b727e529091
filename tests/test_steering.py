"""Steering hooks on a tiny real model: strength 0 is a no-op, ablation leaves nothing along the direction,
a latent clamp keeps the SAE's error, positions are respected with and without a KV cache, streaming
matches HF generation, hooks can be limited to one thread; specs, presets and direction files."""

from __future__ import annotations

import threading

import pytest

from tests.builders import tiny_model_dir  # noqa: F401

MSGS = [{"role": "user", "content": "Write a function that adds two numbers."}]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors; other suites share the cores


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):  # noqa: F811
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def _vec(seed: int = 0, d: int = 32):
    import torch

    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


def _steering(*items, positions: str = "all"):
    from emgui.core.steering.steer import ResolvedSteering, SteeringSpec

    return ResolvedSteering(SteeringSpec(positions=positions), list(items))


def _ids(tokenizer, msgs=MSGS, answer: str = " def add(a, b): return a + b"):
    import torch

    from emgui.core.steering.steer import prompt_ids

    prompt = prompt_ids(tokenizer, msgs)
    full = prompt + tokenizer(answer, add_special_tokens=False)["input_ids"]
    return torch.tensor([full]), len(prompt)


def _logits(model, ids, steering=None, prompt_len=None):
    import torch

    from emgui.core.steering.steer import steer

    with torch.no_grad(), steer(model, steering) as handle:
        handle.begin(prompt_len)
        return model(input_ids=ids).logits[0]


class _SmallSAE:
    """A ReLU SAE with unnormalized decoder rows (so norm folding matters)."""

    def __init__(self, d: int = 32, d_sae: int = 48, seed: int = 1):
        import torch

        g = torch.Generator().manual_seed(seed)
        self.W_enc = torch.randn(d, d_sae, generator=g) * 0.3
        self.b_enc = torch.randn(d_sae, generator=g) * 0.1 + 0.5
        self.W_dec = torch.randn(d_sae, d, generator=g) * 2.0
        self.b_dec = torch.randn(d, generator=g) * 0.1

    def encode(self, h):
        return ((h - self.b_dec) @ self.W_enc + self.b_enc).relu()

    def decode(self, z):
        return z @ self.W_dec + self.b_dec


def test_strength_zero_gives_the_same_logits(tiny) -> None:
    import torch

    from emgui.core.steering.steer import direction_item, latent_item

    model, tokenizer = tiny
    ids, p = _ids(tokenizer)
    plain = _logits(model, ids)
    for positions in ("all", "prompt", "answer"):
        steering = _steering(
            direction_item(_vec(), "model.layers.0", "add", 0.0),
            latent_item(_SmallSAE(), 3, "model.layers.1", "add", 0.0),
            positions=positions,
        )
        assert torch.equal(_logits(model, ids, steering, p), plain)
    moved = _logits(model, ids, _steering(direction_item(_vec(), "model.layers.0", "add", 4.0)), p)
    assert not torch.allclose(moved, plain)


def _hidden_after(model, ids, hook: str, steering, prompt_len=None):
    """The hooked module's output as the rest of the model sees it (a hook registered after ours)."""
    import torch

    from emgui.core.steering.steer import resolve_module, steer

    seen = []
    with torch.no_grad(), steer(model, steering) as handle:
        handle.begin(prompt_len)
        h = resolve_module(model, hook).register_forward_hook(lambda _m, _a, out: seen.append(out))
        try:
            model(input_ids=ids)
        finally:
            h.remove()
    out = seen[0]
    return out[0] if isinstance(out, tuple) else out


def test_ablation_leaves_no_component_along_the_direction(tiny) -> None:
    from emgui.core.steering.steer import direction_item

    model, tokenizer = tiny
    ids, p = _ids(tokenizer)
    v = _vec(3)
    u = v / v.norm()
    before = _hidden_after(model, ids, "model.layers.0", None)
    assert (before[0] @ u).abs().max() > 0.05
    after = _hidden_after(
        model, ids, "model.layers.0", _steering(direction_item(v, "model.layers.0", "ablate"))
    )
    assert (after[0] @ u).abs().max() < 1e-5
    # the rest of h is untouched
    rest = before - (before @ u).unsqueeze(-1) * u
    assert (after - rest).abs().max() < 1e-5
    # answer positions only: the prompt keeps its component
    part = _hidden_after(
        model,
        ids,
        "model.layers.0",
        _steering(direction_item(v, "model.layers.0", "ablate"), positions="answer"),
        p,
    )
    assert (part[0, : p - 1] @ u).abs().min() > 0 and (part[0, p - 1 :] @ u).abs().max() < 1e-5


def test_clamp_sets_the_latent_and_keeps_the_sae_error(tiny) -> None:
    import torch

    from emgui.core.steering.steer import direction_item, latent_item

    model, tokenizer = tiny
    ids, _ = _ids(tokenizer)
    sae = _SmallSAE()
    latent, value = 5, 7.5
    h = _hidden_after(model, ids, "model.layers.0", None)[0]
    h2 = _hidden_after(
        model, ids, "model.layers.0", _steering(latent_item(sae, latent, "model.layers.0", "clamp", value))
    )[0]
    z = sae.encode(h)
    norm = sae.W_dec[latent].norm()
    z_new = z.clone()
    z_new[:, latent] = value / norm  # the clamp value is in folded units (decoder row of unit norm)
    error = h - sae.decode(z)
    assert torch.allclose(h2, sae.decode(z_new) + error, atol=1e-4)
    assert torch.allclose(h2 - sae.decode(z_new), error, atol=1e-4)  # the SAE's error is kept
    # clamping a direction sets its projection
    v = _vec(4)
    h3 = _hidden_after(
        model, ids, "model.layers.0", _steering(direction_item(v, "model.layers.0", "clamp", -2.0))
    )[0]
    assert torch.allclose(h3 @ (v / v.norm()), torch.full((h3.shape[0],), -2.0), atol=1e-4)


def test_positions_with_and_without_kv_cache(tiny) -> None:
    import torch

    from emgui.core.steering.steer import direction_item, stream_generate

    model, tokenizer = tiny
    ids, p = _ids(tokenizer)
    plain = _logits(model, ids)
    item = direction_item(_vec(5), "model.layers.0", "add", 6.0)
    answer = _logits(model, ids, _steering(item, positions="answer"), p)
    assert torch.equal(answer[: p - 1], plain[: p - 1]) and not torch.allclose(
        answer[p - 1 :], plain[p - 1 :]
    )
    prompt = _logits(model, ids, _steering(item, positions="prompt"), p)
    assert not torch.allclose(prompt[: p - 1], plain[: p - 1])
    # a steered stream with a KV cache picks the same tokens as full forwards steered at the same positions
    steps = list(
        stream_generate(
            model, tokenizer, MSGS, _steering(item, positions="answer"), max_new_tokens=8, stop_at_eos=False
        )
    )
    tokens = [s.token_id for s in steps]
    full = torch.cat([ids[:, :p], torch.tensor([tokens])], dim=1)
    logits = _logits(model, full, _steering(item, positions="answer"), p)
    assert logits[p - 1 : -1].argmax(-1).tolist() == tokens
    lp = torch.log_softmax(logits[p - 1 : -1], -1)
    assert [round(s.logprob, 4) for s in steps] == [round(float(lp[i, t]), 4) for i, t in enumerate(tokens)]


def test_stream_matches_hf_generate_and_reports_alternatives(tiny) -> None:
    import torch

    from emgui.core.steering.steer import generate_text, prompt_ids, stream_generate

    model, tokenizer = tiny
    ids = torch.tensor([prompt_ids(tokenizer, MSGS)])
    mask = torch.ones_like(ids)
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=None)[
        0, ids.shape[1] :
    ]
    ref = ref.tolist()
    steps = list(
        stream_generate(model, tokenizer, MSGS, max_new_tokens=10, stop_at_eos=False, top_alternatives=3)
    )
    assert [s.token_id for s in steps] == ref
    assert all(len(s.alternatives) == 3 and s.alternatives[0][1] >= s.logprob - 1e-6 for s in steps)
    assert "".join(s.text for s in steps) == tokenizer.decode(ref, skip_special_tokens=True).rstrip("\ufffd")
    a = generate_text(model, tokenizer, MSGS, temperature=1.0, seed=7, max_new_tokens=12, stop_at_eos=False)[
        0
    ]
    b = generate_text(model, tokenizer, MSGS, temperature=1.0, seed=7, max_new_tokens=12, stop_at_eos=False)[
        0
    ]
    c = generate_text(model, tokenizer, MSGS, temperature=1.0, seed=8, max_new_tokens=12, stop_at_eos=False)[
        0
    ]
    assert a == b and a != c
    stop_after = iter([False, False, True])
    assert len(list(stream_generate(model, tokenizer, MSGS, should_stop=lambda: next(stop_after)))) == 2


def test_hooks_can_act_only_in_their_thread(tiny) -> None:
    import torch

    from emgui.core.steering.steer import direction_item, steer

    model, tokenizer = tiny
    ids, _ = _ids(tokenizer)
    plain = _logits(model, ids)
    steering = _steering(direction_item(_vec(6), "model.layers.0", "add", 8.0))
    other: list = []
    with steer(model, steering, this_thread_only=True):
        mine = _logits(model, ids)
        worker = threading.Thread(target=lambda: other.append(_logits(model, ids)))
        worker.start()
        worker.join()
    assert not torch.allclose(mine, plain) and torch.equal(other[0], plain)
    assert torch.equal(_logits(model, ids), plain)  # hooks removed on exit


def test_spec_json_round_trip_and_errors() -> None:
    from emgui.core.errors import EmguiError
    from emgui.core.steering.steer import Intervention, SteeringSpec

    spec = SteeringSpec(
        [
            Intervention(direction_id=3, strength=2.5),
            Intervention("latent", sae_id=1, latent=7, method="clamp", strength=4),
        ],
        positions="answer",
        layer=1,
    )
    again = SteeringSpec.from_json(spec.to_json())
    assert again == spec and again.interventions[1].value == 4.0
    with pytest.raises(EmguiError, match=r"interventions\[0\]: method must be one of add, ablate, clamp"):
        SteeringSpec.from_dict({"interventions": [{"direction_id": 1, "method": "boost"}]})
    with pytest.raises(
        EmguiError, match=r"interventions\[0\]: a latent intervention needs sae_id and latent"
    ):
        SteeringSpec.from_dict({"interventions": [{"type": "latent", "sae_id": 1}]})
    with pytest.raises(EmguiError, match="positions must be one of"):
        SteeringSpec.from_dict({"positions": "middle"})
    with pytest.raises(EmguiError, match=r"interventions\[0\]: unknown field\(s\) strenght"):
        SteeringSpec.from_dict({"interventions": [{"direction_id": 1, "strenght": 2}]})


def test_directions_presets_and_resolve(project, tiny, tiny_model_dir, tmp_path) -> None:  # noqa: F811
    import torch
    from safetensors.torch import save_file

    from emgui.core.errors import EmguiError
    from emgui.core.steering.steer import (
        Intervention,
        SteeringSpec,
        delete_preset,
        import_direction_file,
        list_presets,
        load_direction,
        load_preset,
        resolve,
        save_preset,
    )
    from tests.builders import register_tiny

    model, _ = tiny
    model_id = register_tiny(project, "tiny", tiny_model_dir)
    save_file({"direction": torch.ones(32) * 2}, str(tmp_path / "good.safetensors"))
    save_file({"direction": torch.ones(31)}, str(tmp_path / "short.safetensors"))
    save_file({"stack": torch.randn(3, 32)}, str(tmp_path / "stack.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    did = import_direction_file(project, tmp_path / "good.safetensors", model="tiny", layer=1, name="ones")
    row, vec = load_direction(project, "ones")
    assert (
        row["id"] == did
        and row["kind"] == "file"
        and row["model_id"] == model_id
        and row["hook_name"] == "model.layers.1"
    )
    assert abs(row["norm"] - float(vec.norm())) < 1e-5 and torch.equal(vec, torch.ones(32) * 2)
    with pytest.raises(
        EmguiError, match=r"short\.safetensors: the vector has 31 values but model 'tiny' has hidden size 32"
    ):
        import_direction_file(project, tmp_path / "short.safetensors", model="tiny", layer=0)
    with pytest.raises(EmguiError, match=r"junk\.safetensors: not a readable \.safetensors file"):
        import_direction_file(project, tmp_path / "junk.safetensors", model="tiny", layer=0)
    with pytest.raises(EmguiError, match="stack of 3 vectors"):
        import_direction_file(project, tmp_path / "stack.safetensors", model="tiny")
    sid = import_direction_file(project, tmp_path / "stack.safetensors", model="tiny", layer=0, stack_layer=2)
    assert load_direction(project, sid)[0]["name"] == "stack"

    spec = SteeringSpec(
        [Intervention(direction_id=did, strength=3.0), Intervention(direction_id=sid, method="ablate")]
    )
    steering = resolve(project, spec, model)
    assert [i.hook_name for i in steering.items] == ["model.layers.1", "model.layers.0"]
    assert abs(float(steering.items[0].unit.norm()) - 1) < 1e-6
    spec.layer = 0
    assert {i.hook_name for i in resolve(project, spec, model).items} == {"model.layers.0"}
    spec.interventions[0].hook_name = "model.layers.1.mlp"
    assert resolve(project, spec, model).items[0].hook_name == "model.layers.1.mlp"
    spec.interventions[0].hook_name = "model.layers.9"
    with pytest.raises(EmguiError, match="model.layers.9"):
        resolve(project, spec, model)

    spec.interventions[0].hook_name = None
    save_preset(project, "mine", spec, {"prompt": "hi", "seed": 3})
    spec.positions = "answer"
    save_preset(project, "mine", spec, {"prompt": "hi", "seed": 4})  # overwrites
    loaded, ui = load_preset(project, "mine")
    assert loaded == spec and ui == {"prompt": "hi", "seed": 4} and len(list_presets(project)) == 1
    delete_preset(project, "mine")
    with pytest.raises(EmguiError, match="no steering preset 'mine'"):
        load_preset(project, "mine")


def test_latent_clamp_through_a_project_sae(project, tiny, tiny_model_dir) -> None:  # noqa: F811
    """A sae-lens SAE saved in the project, resolved by id and clamped, keeps its reconstruction error."""
    import torch

    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens.saes.sae import SAEMetadata

    from emgui.core.features.saes import load_sae, save_and_register
    from emgui.core.steering.steer import Intervention, SteeringSpec, resolve
    from tests.builders import register_tiny

    model, tokenizer = tiny
    model_id = register_tiny(project, "tiny", tiny_model_dir)
    torch.manual_seed(0)
    sae = sae_lens.StandardSAE(
        sae_lens.StandardSAEConfig(
            d_in=32, d_sae=64, metadata=SAEMetadata(hook_name="model.layers.0", model_name="tiny")
        )
    )
    with torch.no_grad():
        sae.b_enc.fill_(0.5)  # make latents fire on these inputs
    sae_id = save_and_register(project, sae, name="s", source="test", model_id=model_id)
    loaded = load_sae(project, sae_id, device="cpu")
    spec = SteeringSpec([Intervention("latent", sae_id=sae_id, latent=2, method="clamp", strength=3.0)])
    steering = resolve(project, spec, model, sae_cache={})
    ids, _ = _ids(tokenizer)
    h = _hidden_after(model, ids, "model.layers.0", None)[0]
    h2 = _hidden_after(model, ids, "model.layers.0", steering)[0]
    with torch.no_grad():
        z = loaded.encode(h)
        z_new = z.clone()
        z_new[:, 2] = 3.0 / loaded.W_dec[2].norm()
        assert torch.allclose(h2 - loaded.decode(z_new), h - loaded.decode(z), atol=1e-4)
