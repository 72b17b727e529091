"""Model diffing on a planted change, the stored directions, dashboards, labels and export.

The planted change: a copy of the tiny model is fine-tuned (layer 0 only, a few Adam steps) so that its
layer-0 output grows along a known unit direction u on answer tokens, while the rest of that output is
held near the base model's. The SAE is constructed, not trained, to make the test deterministic: latent
PLANTED reads and writes u, the other latents read random directions orthogonal to u. Diffing must rank
PLANTED first and the difference-of-means direction must point along u.
"""

# ruff: noqa: F811  (pytest fixtures imported from tests.builders are parameters of the tests)
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from emgui.core.errors import EmguiError
from emgui.core.jobs.runner import run_job
from emgui.core.project.store import Project
from tests.builders import (  # noqa: F401
    D_SAE,
    HOOK,
    PLANTED,
    add_samples,
    build_diff_project,
    encode_chats,
    make_planted_sae,
    planted_direction,
    register_tiny,
    tiny_chats,
    tiny_model_dir,
    write_chats,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors; other suites share the cores


# ------------------------------------------------------------------------------------------ tests
def test_planted_change_ranks_first_and_directions_point_along_it(
    project: Project, tiny_model_dir: Path
) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emgui.core.lm.activations import capture

    setup = build_diff_project(project, tiny_model_dir)
    job = project.get_job(setup["job"])
    result = job["result"]
    assert result["judged"] == {"misaligned": 5, "aligned": 6}
    assert result["top"][0]["latent"] == PLANTED
    stats = project.query("SELECT * FROM latent_stats WHERE job_id = ? ORDER BY rank", [setup["job"]])
    assert len(stats) == D_SAE and sorted(r["rank"] for r in stats) == list(range(1, D_SAE + 1))
    assert stats[0]["latent"] == PLANTED and stats[0]["delta_mean"] > 3 * stats[1]["delta_mean"]
    for r in stats:
        assert r["delta_mean"] == pytest.approx(r["ft_mean"] - r["base_mean"], abs=1e-9)
        assert r["delta_freq"] == pytest.approx(r["ft_freq"] - r["base_freq"], abs=1e-9)
        assert 0.0 <= r["base_freq"] <= 1.0 and 0.0 <= r["ft_freq"] <= 1.0

    u = planted_direction()
    rows = {r["kind"]: r for r in project.query("SELECT * FROM directions WHERE job_id = ?", [setup["job"]])}
    assert set(rows) == {"diff-means", "misaligned-minus-aligned"}
    diff_means = load_file(str(project.abspath(rows["diff-means"]["path"])))["direction"]
    assert float(diff_means @ u / diff_means.norm()) > 0.9
    assert rows["diff-means"]["norm"] == pytest.approx(float(diff_means.norm()), rel=1e-5)
    assert rows["diff-means"]["hook_name"] == HOOK and rows["diff-means"]["layer"] == 0
    assert rows["diff-means"]["model_id"] == setup["ft_id"]

    # the misaligned-minus-aligned direction, recomputed here from the fine-tuned model's activations
    tokenizer = AutoTokenizer.from_pretrained(setup["ft_dir"])
    model = AutoModelForCausalLM.from_pretrained(setup["ft_dir"])
    means = {}
    for group, idx in (("mis", [1, 3, 5, 7, 9]), ("ali", [0, 2, 4, 6, 8, 10])):
        batch, mask = encode_chats(tokenizer, [setup["chats"][i] for i in idx])
        means[group] = next(capture(model, HOOK, [batch]))[mask].mean(0)
    stored = load_file(str(project.abspath(rows["misaligned-minus-aligned"]["path"])))["direction"]
    assert torch.allclose(stored, means["mis"] - means["ali"], atol=1e-4)
    assert rows["misaligned-minus-aligned"]["info"]["answers"] == {"misaligned": 5, "aligned": 6}


def test_diff_over_a_dataset_builds_dashboards(project: Project, tiny_model_dir: Path) -> None:
    from emgui.core.features.latents import get_dashboard

    setup = build_diff_project(project, tiny_model_dir)
    path = write_chats(project.root.parent / "eval.jsonl", tiny_chats(10))
    project.add_dataset(name="evalchats", kind="chat", path=path, n_rows=10)
    job = project.create_job("diff", {"sae": "planted", "ft": "ft", "dataset": "evalchats", "dashboards": 4})
    assert run_job(project, job) == "succeeded", project.get_job(job)["traceback"]
    result = project.get_job(job)["result"]
    assert result["top"][0]["latent"] == PLANTED and result["dashboards"] == 4
    assert result["judged"] == {"misaligned": 0, "aligned": 0}
    kinds = [r["kind"] for r in project.query("SELECT kind FROM directions WHERE job_id = ?", [job])]
    assert kinds == ["diff-means"]  # no judged answers: no misaligned-minus-aligned direction

    dash = get_dashboard(project, setup["sae_id"], PLANTED)
    assert dash["latent"] == PLANTED and dash["diff"]["rank"] == 1 and dash["model"] == "ft"
    assert 0 < dash["density"] <= 1 and dash["n_texts"] >= 10
    assert sum(dash["histogram"]["counts"]) == round(dash["density"] * dash["n_tokens"])
    tops = [ex["max"] for ex in dash["top"]]
    assert tops == sorted(tops, reverse=True) and tops[0] == pytest.approx(dash["max"], rel=1e-3)
    for ex in dash["top"] + [e for q in dash["quantiles"] for e in q["examples"]]:
        assert len(ex["tokens"]) == len(ex["values"]) and ex["values"][ex["peak"]] == ex["max"]
    assert all(q["examples"] for q in dash["quantiles"])
    assert max(e["max"] for q in dash["quantiles"] for e in q["examples"]) <= tops[-1] + 1e-6
    assert len(dash["logits"]["promoted"]) == 10 and len(dash["logits"]["suppressed"]) == 10
    assert dash["logits"]["promoted"][0][1] >= dash["logits"]["suppressed"][0][1]
    near = [n for n, _ in dash["neighbours"]]
    assert PLANTED not in near and len(near) == 8
    cosines = [c for _, c in dash["neighbours"]]
    assert (
        cosines == sorted(cosines, reverse=True) and abs(cosines[0]) < 1e-4
    )  # the others are orthogonal to u
    built = {r["latent"] for r in project.query("SELECT latent FROM dashboards WHERE job_id = ?", [job])}
    assert built == {r["latent"] for r in result["top"][:4]}


def test_dashboards_job_for_chosen_latents(project: Project, tiny_model_dir: Path) -> None:
    from emgui.core.features.latents import dashboard_latents, get_dashboard

    setup = build_diff_project(project, tiny_model_dir)
    job = project.create_job("dashboards", {"diff": setup["job"], "top": 2, "latents": [5, 40]})
    assert run_job(project, job) == "succeeded", project.get_job(job)["traceback"]
    assert dashboard_latents(project, setup["sae_id"]) >= {PLANTED, 5, 40}
    assert get_dashboard(project, setup["sae_id"], 40)["diff"]["rank"] >= 1
    job = project.create_job("dashboards", {"sae": "planted", "latents": [D_SAE + 3]})
    assert run_job(project, job) == "failed"
    assert "out of range" in project.get_job(job)["error"]


def test_sae_that_does_not_fit_is_refused_before_loading_models(
    project: Project,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch,
) -> None:
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from emgui.core.features.saes import register_sae
    from emgui.core.models import loading

    register_tiny(project, "base", folder=tiny_model_dir)
    project.add_model(name="ft", kind="full", source="x", path=tiny_model_dir, base_model_id=1)
    folder = project.artifacts_dir / "saes" / "wide"
    StandardSAE(StandardSAEConfig(d_in=48, d_sae=8, metadata=SAEMetadata(hook_name=HOOK))).save_model(folder)
    register_sae(project, folder, name="wide", source="folder")
    prompts = add_samples(project, 2, tiny_chats(2))

    def no_loading(*_a, **_k):
        raise AssertionError("a model was loaded before the SAE was checked")

    monkeypatch.setattr(loading, "load_model", no_loading)
    job = project.create_job("diff", {"sae": "wide", "ft": "ft", "prompts": prompts})
    assert run_job(project, job) == "failed"
    assert "expects inputs of size 48" in project.get_job(job)["error"]
    assert "hidden size 32" in project.get_job(job)["error"]
    job = project.create_job("diff", {"sae": "wide", "ft": "ft"})
    assert run_job(project, job) == "failed"
    assert "exactly one of prompts" in project.get_job(job)["error"]


def test_labels_export_and_live_text(project: Project, tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from sae_lens import SAE
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emgui.core.features import dashboards as D
    from emgui.core.features import latents as L
    from emgui.core.lm.activations import capture

    setup = build_diff_project(project, tiny_model_dir)
    sae_id = setup["sae_id"]
    L.set_label(project, sae_id, PLANTED, label="planted direction")
    L.set_label(project, sae_id, PLANTED, note="grows on answers")
    L.set_label(project, sae_id, 3, label="other")
    assert L.get_labels(project, sae_id)[PLANTED] == {
        "label": "planted direction",
        "note": "grows on answers",
    }
    rows = L.ranking(project, setup["job"])
    assert rows[0]["latent"] == PLANTED and rows[0]["label"] == "planted direction"

    out_json, out_csv = tmp_path / "latents.json", tmp_path / "latents.csv"
    assert L.export_latents(project, sae_id, out_json, diff_job=setup["job"]) == D_SAE
    doc = json.loads(out_json.read_text())
    assert doc["sae"] == "planted" and doc["latents"][0]["latent"] == PLANTED
    assert doc["latents"][0]["note"] == "grows on answers"
    assert L.export_latents(project, sae_id, out_csv, diff_job=setup["job"], latents=[PLANTED, 3]) == 2
    with out_csv.open() as fh:
        table = list(csv.DictReader(fh))
    assert [int(r["latent"]) for r in table] == [PLANTED, 3] and table[1]["label"] == "other"
    assert float(table[0]["delta_mean"]) == pytest.approx(rows[0]["delta_mean"])
    with pytest.raises(EmguiError, match=r"\.json or \.csv"):
        L.export_latents(project, sae_id, tmp_path / "x.txt")
    assert {r["latent"] for r in L.latent_list(project, sae_id, None)} == {PLANTED, 3}

    text = "def f3(x):\n    return x + 3\n"
    live = D.text_activations(project, sae_id, PLANTED, text, model="ft")
    tokenizer = AutoTokenizer.from_pretrained(setup["ft_dir"])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    acts = next(capture(AutoModelForCausalLM.from_pretrained(setup["ft_dir"]), HOOK, [torch.tensor([ids])]))[
        0
    ]
    sae = SAE.load_from_disk(str(project.abspath(project.query_one("SELECT path FROM saes")["path"])))
    want = sae.encode(acts)[:, PLANTED].tolist()
    assert "".join(live["tokens"]) == text
    assert live["values"] == pytest.approx(want, abs=1e-3)
    D.release_live()


# ------------------------------------------------------------------------------------------ controls
FORMAT = 5  # the latent of the change both fine-tunes share (a "format shift")


def format_direction(d: int = 32):
    """A unit direction orthogonal to the planted one."""
    import torch

    u = planted_direction(d)
    f = torch.randn(d, generator=torch.Generator().manual_seed(11))
    f = f - (f @ u) * u
    return f / f.norm()


def make_shifted_finetune(base_dir: Path, out_dir: Path, chats: list, target, steps: int = 60) -> Path:
    """Fine-tune layer 0 of a copy of the base so that its output on answer tokens moves by `target`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emgui.core.lm.activations import capture

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    batch, mask = encode_chats(tokenizer, chats)
    h0 = next(capture(model, HOOK, [batch]))[mask]
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("model.layers.0."))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    torch.manual_seed(0)
    for _ in range(steps):
        h = next(iter(_layer0_outputs(model, batch)))
        loss = (h[mask] - h0 - target).pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _layer0_outputs(model, batch):
    store = {}
    handle = model.model.layers[0].register_forward_hook(lambda _m, _a, out: store.__setitem__("h", out))
    try:
        model.model(**batch)
    finally:
        handle.remove()
    yield store["h"][0] if isinstance(store["h"], tuple) else store["h"]


def test_a_control_fine_tune_separates_the_planted_change_from_a_shared_format(
    project: Project, tiny_model_dir: Path, window
) -> None:
    """Both fine-tunes move the same 'format' direction; only the treatment also moves the planted one.
    Without the control the format latent tops the ranking and the page says the ranking is uncontrolled;
    with it, the planted latent is first and the shared change is reported."""
    import torch

    from emgui.core.features.saes import register_sae

    u, f = planted_direction(), format_direction()
    base_id = register_tiny(project, "base", folder=tiny_model_dir)
    chats = tiny_chats(16)
    root = project.root.parent
    ft_dir = make_shifted_finetune(tiny_model_dir, root / "treat", chats, 3.0 * f + 1.5 * u)
    ctl_dir = make_shifted_finetune(tiny_model_dir, root / "control", chats, 3.0 * f)
    project.add_model(name="ft", kind="full", source=str(ft_dir), path=ft_dir, base_model_id=base_id)
    project.add_model(name="ctl", kind="full", source=str(ctl_dir), path=ctl_dir, base_model_id=base_id)
    folder = make_planted_sae(project.artifacts_dir / "saes" / "two")
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "sae_weights.safetensors"))
    weights["W_dec"][FORMAT] = f
    weights["W_enc"][:, FORMAT] = f
    save_file(weights, str(folder / "sae_weights.safetensors"))
    register_sae(project, folder, name="two", source="folder", model_id=base_id)
    path = write_chats(root / "texts.jsonl", chats)
    project.add_dataset(name="texts", kind="chat", path=path, n_rows=len(chats))

    plain = project.create_job("diff", {"sae": "two", "ft": "ft", "dataset": "texts", "dashboards": 0})
    assert run_job(project, plain) == "succeeded", project.get_job(plain)["traceback"]
    controlled = project.create_job(
        "diff", {"sae": "two", "ft": "ft", "control": "ctl", "dataset": "texts", "dashboards": 0}
    )
    assert run_job(project, controlled) == "succeeded", project.get_job(controlled)["traceback"]

    uncontrolled = project.get_job(plain)["result"]
    assert uncontrolled["top"][0]["latent"] == FORMAT and uncontrolled["controlled"] is False
    assert any("uncontrolled" in w for w in uncontrolled["warnings"])
    result = project.get_job(controlled)["result"]
    assert result["controlled"] is True and result["top"][0]["latent"] == PLANTED
    assert result["control_correlation"] > 0.5  # the format change is shared
    stats = {r["latent"]: r for r in project.query("SELECT * FROM latent_stats WHERE job_id = ?", [controlled])}
    fmt, planted = stats[FORMAT], stats[PLANTED]
    assert fmt["delta_mean"] > planted["delta_mean"]  # raw change: the format dominates
    assert abs(fmt["effect"]) < 0.2 * planted["effect"]  # beyond the control: only the planted change
    assert planted["effect"] == pytest.approx(planted["delta_mean"] - planted["delta_control"], abs=1e-9)
    assert planted["effect_sd"] > 0 and planted["z"] > 3 * abs(fmt["z"]) and planted["rank"] == 1
    kinds = {r["kind"] for r in project.query("SELECT kind FROM directions WHERE job_id = ?", [controlled])}
    assert kinds == {"diff-means", "diff-means-controlled"}
    with torch.no_grad():
        row = project.query_one(
            "SELECT path FROM directions WHERE job_id = ? AND kind = 'diff-means-controlled'", [controlled]
        )
        vec = load_file(str(project.abspath(row["path"])))["direction"]
        assert float(vec @ u / vec.norm()) > 0.8  # the controlled direction points along the planted change

    # re-aligning the fine-tune follows the controlled diff's top latents at each snapshot
    from emgui.core.evaluation.runs import latent_references, realign_curve

    project.add_dataset(name="secure", kind="chat", path=path, n_rows=len(chats))
    realign = project.create_job("realign", {"model": "ft", "n_samples": 4, "save_at": [0], "batch_size": 2,
                                             "track_panel": "none", "track_top": 1})  # fmt: skip
    assert run_job(project, realign) == "succeeded", project.get_job(realign)["traceback"]
    curve = realign_curve(project, realign)
    assert [p["samples_seen"] for p in curve] == [0, 4] and all("likelihood" not in p for p in curve)
    measured = project.query("SELECT * FROM measures WHERE job_id = ? ORDER BY id", [realign])
    assert [m["info"]["latents"] for m in measured] == [[PLANTED], [PLANTED]]
    assert measured[0]["info"]["diff_job"] == controlled  # the controlled diff is the default
    levels = latent_references(project, controlled, [PLANTED])
    assert levels["base"] < levels["ft"] and curve[0]["top_latents"] == pytest.approx(levels["ft"], rel=0.2)

    page = window.show_page("features")
    page.refresh()
    page.diff_combo.setCurrentIndex(page.diff_combo.findData(plain))
    assert "uncontrolled" in page.caveat_text()
    page.diff_combo.setCurrentIndex(page.diff_combo.findData(controlled))
    text = page.caveat_text()
    assert "Controlled by 'ctl'" in text and "uncontrolled" not in text
    assert f"correlate at r = {result['control_correlation']:.2f}" in text  # > 0.8 here: said in plain words


def test_a_tiny_consistent_change_does_not_outrank_a_large_reliable_one(project: Project) -> None:
    """Latent 0 changes by +0.02 give or take 0.001 (z about 40); latent 1 by +2 give or take 0.5 (z about
    25). The ranking puts the large, reliable change first, whatever the smaller z."""
    import torch

    from emgui.core.features.diffing import _Accumulator, store_ranking

    gen = torch.Generator().manual_seed(0)
    n_examples = 40

    def model(shift: torch.Tensor, noise: torch.Tensor) -> _Accumulator:
        acc = _Accumulator(4, 3, "cpu", n_groups=n_examples)
        base = torch.tensor([5.0, 1.0, 4.0])
        for example in range(n_examples):
            z = (base + shift + noise * torch.randn(3, generator=gen)).clamp(min=0.0)[None, :]
            acc.add(torch.zeros(1, 4), z, [], token_group=torch.tensor([example]))
        return acc

    sae_id = project.insert("saes", {"name": "s", "source": "trained", "hook_name": "model.layers.0", "path": "x",
                                     "created_at": 0.0})  # fmt: skip
    job = project.create_job("diff", {})
    base = model(torch.zeros(3), torch.zeros(3))
    ft = model(torch.tensor([0.02, 2.0, 0.0]), torch.tensor([0.001, 0.5, 0.0]))
    rows = store_ranking(project, job, sae_id, base, ft, n_boot=200)
    by_latent = {r["latent"]: r for r in rows}
    assert by_latent[0]["z"] > by_latent[1]["z"]  # the tiny change is the more "significant" one...
    assert [r["latent"] for r in rows] == [1, 0, 2]  # ...but the large reliable change ranks first
