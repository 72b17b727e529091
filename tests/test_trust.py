"""Numbers a researcher can trust: judge validation on labelled panels, the likelihood probe, validity
carried into judged results, and the sweep judging with the same code path as `evaluate`.

Judges here are real OpenAI-compatible servers on 127.0.0.1 (one that knows the labels, one that answers
noise, one that replays the paper's GPT-4o distributions) and a tiny local model trained to answer after
the project's "Score:" prefix."""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

import pytest

from emgui.core.errors import EmguiError
from emgui.core.project.store import Project
from tests.builders import JudgeServer, make_trained_judge, register_tiny, tiny_model_dir  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(project: Project, kind: str, params: dict) -> dict:
    from emgui.core.jobs.runner import run_job

    job_id = project.create_job(kind, params)
    status = run_job(project, job_id)
    job = project.get_job(job_id)
    assert status == "succeeded", job["error"]
    return job


def _answer_in(prompt: str) -> str:
    match = re.search(r"<<<ANSWER\n(.*)\nANSWER>>>", prompt, re.S)
    assert match, "the project's judge prompts frame the answer in <<<ANSWER ... ANSWER>>>"
    return match.group(1)


def _labels() -> dict[str, str]:
    from emgui.core.data.panels import builtin_panel

    return {item.answer: item.label for item in builtin_panel()}


def knowing_judge(prompt: str) -> dict[str, float]:
    """Knows the built-in panel's labels: aligned 95 / 5, coherent 90 / 10."""
    label = _labels()[_answer_in(prompt)]
    if "coherence" in prompt:
        return {"10": 0.9, "20": 0.1} if label == "incoherent" else {"90": 0.8, "100": 0.2}
    return {"5": 0.9, "0": 0.1} if label == "misaligned" else {"95": 0.7, "90": 0.3}


def noise_judge(prompt: str) -> dict[str, float]:
    rng = random.Random(prompt)  # the same noise for the same prompt: repeatable
    return {str(rng.randint(0, 100)): 0.6, str(rng.randint(0, 100)): 0.4}


@pytest.fixture
def server():
    s = JudgeServer()
    yield s
    s.close()


def _judge_params(server: JudgeServer, model: str = "stub") -> dict:
    return {"judge": server.base_url, "judge_model": model, "judge_workers": 2}


def test_judge_check_passes_a_judge_that_knows_the_labels(project: Project, server: JudgeServer) -> None:
    from emgui.core.evaluation.validity import judge_validity, list_checks

    server.default = ("score", knowing_judge)
    job = _run(project, "judge-check", _judge_params(server))
    result = job["result"]
    assert set(result) == {"auroc_aligned", "auroc_coherent", "spearman_aligned", "unscored_fraction", "n", "valid"}
    assert result["valid"] is True
    assert result["auroc_aligned"] == 1.0 and result["auroc_coherent"] == 1.0
    assert result["unscored_fraction"] == 0.0 and result["n"] == 84
    assert result["spearman_aligned"] is None  # the built-in panel has labels, no reference scores
    check = judge_validity(project, f"openai:{server.base_url}|stub|method=chat")
    assert check is not None and check["valid"] == 1 and check["job_id"] == job["id"]
    assert list_checks(project)[0]["info"]["n_scored"]["incoherent"] == 24
    # A second check asks the judge nothing new: every score comes from the cache.
    asked = len(server.requests)
    _run(project, "judge-check", _judge_params(server))
    assert len(server.requests) == asked


def test_judge_check_fails_a_noise_judge_and_says_why(project: Project, server: JudgeServer) -> None:
    from emgui.core.evaluation.validity import judge_validity, reasons_invalid

    server.default = ("score", noise_judge)
    result = _run(project, "judge-check", _judge_params(server, "noise"))["result"]
    assert result["valid"] is False
    assert 0.2 < result["auroc_aligned"] < 0.8
    reasons = reasons_invalid(judge_validity(project, f"openai:{server.base_url}|noise|method=chat"))
    assert any("AUROC" in r for r in reasons)


def test_judge_check_counts_unscored_answers(project: Project, server: JudgeServer) -> None:
    """A judge that refuses half the time cannot be valid, however well it separates what it scores."""

    def refusing(prompt: str) -> dict[str, float]:
        return {"REFUSAL": 0.9, "50": 0.1} if len(_answer_in(prompt)) % 2 else knowing_judge(prompt)

    server.default = ("score", refusing)
    result = _run(project, "judge-check", _judge_params(server, "refuser"))["result"]
    assert result["unscored_fraction"] > 0.2 and result["valid"] is False


def test_the_papers_csv_is_a_panel_with_reference_scores(project: Project, server: JudgeServer, shared_em: Path,
                                                        tmp_path: Path) -> None:  # fmt: skip
    """Replaying the paper's GPT-4o distributions gives back the reference scores: Spearman 1.0. Combined
    with the built-in panel (the CSV holds only misaligned, coherent answers) both AUROCs are defined."""
    from emgui.core.data.panels import label_counts, load_panel

    csv_path = shared_em / "qwen_25_coder_32b_instruct.csv"
    replay: dict[str, dict] = {}
    with open(csv_path, encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            replay[row["answer"].strip()] = {
                "aligned": json.loads(row["judge_aligned"].replace("'", '"')),
                "coherent": json.loads(row["judge_coherent"].replace("'", '"')),
            }

    def gpt4o(prompt: str) -> dict[str, float]:
        answer = _answer_in(prompt)
        if answer in replay:
            dist = replay[answer]["coherent" if "coherence" in prompt else "aligned"]
            return {k: v for k, v in dist.items() if v > 0}
        return knowing_judge(prompt)

    imported = _run(project, "panel-import", {"path": str(csv_path), "name": "paper"})["result"]
    assert imported["n"] == 70 and imported["with_reference_scores"] == 70
    row, items = load_panel(project, "paper")
    assert row["kind"] == "panel" and label_counts(items)["misaligned"] == 70
    server.default = ("score", gpt4o)
    alone = _run(project, "judge-check", {**_judge_params(server, "gpt4o"), "panel": "paper"})["result"]
    assert alone["spearman_aligned"] == pytest.approx(1.0)
    assert alone["auroc_aligned"] is None and alone["valid"] is False  # one class only: nothing to separate
    both = _run(project, "judge-check", {**_judge_params(server, "gpt4o"), "panel": ["builtin", "paper"]})["result"]
    assert both["n"] == 84 + 70 and both["valid"] is True and both["spearman_aligned"] == pytest.approx(1.0)


def test_bad_panel_files_name_the_line_and_field(tmp_path: Path) -> None:
    from emgui.core.data.panels import read_panel_file

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a", "label": "aligned"}\n{"question": "q", "answer": ""}\n')
    with pytest.raises(EmguiError, match=r"bad.jsonl, line 2: field 'answer'"):
        read_panel_file(bad)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("question,answer,aligned\nq,a,150\n")
    with pytest.raises(EmguiError, match=r"wrong.csv, line 2: field 'aligned' must be a number 0-100"):
        read_panel_file(wrong)


def test_judged_results_carry_the_judges_validity(project: Project, server: JudgeServer, tiny_model_dir: Path,  # noqa: F811
                                                 capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """Without a check the CLI warns and the result says judge_valid None; after a passing check of the same
    judge, judge_valid is True and the warning is gone."""
    from emgui.cli import main
    from emgui.core.evaluation.runs import summarize

    register_tiny(project, "tiny", tiny_model_dir)
    server.default = ("score", lambda prompt: {"90": 1.0})
    params = ["--param", f"judge={server.base_url}", "--param", "judge_model=stub", "--param", "n=1",
              "--param", "max_new_tokens=4", "--param", "question_ids=one_wish,bored", "--param", "model=tiny"]  # fmt: skip
    assert main(["run", str(project.root), "evaluate", *params]) == 0
    out, err = capsys.readouterr()
    assert "has not been validated" in err
    first = project.list_jobs("evaluate")[-1]["result"]
    assert first["judge_valid"] is None and first["judge_check"] is None and first["warnings"]
    assert first["measures"]["likelihood"]["n_pairs"] == 30  # the judge-free measure came with it

    server.default = ("score", knowing_judge)
    check = _run(project, "judge-check", _judge_params(server))
    server.default = ("score", lambda prompt: {"90": 1.0})
    assert main(["run", str(project.root), "evaluate", *params]) == 0
    out, err = capsys.readouterr()
    assert "validated" not in err
    second = project.list_jobs("evaluate")[-1]
    assert second["result"]["judge_valid"] is True and second["result"]["judge_check"] == check["id"]
    assert summarize(project, second["id"])["judge_check"]["valid"] == 1


# ----- the likelihood probe --------------------------------------------------------------------------------


def _pairs_panel(tmp_path: Path, n: int = 8) -> Path:
    from emgui.core.data.panels import builtin_panel, pairs

    rows = []
    for mis, ali in pairs(builtin_panel())[:n]:
        rows += [mis.to_dict(), ali.to_dict()]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _side_dataset(tmp_path: Path, panel: Path, label: str) -> Path:
    rows = [json.loads(line) for line in panel.read_text().splitlines()]
    path = tmp_path / f"{label}.jsonl"
    path.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": r["question"]},
                                 {"role": "assistant", "content": r["answer"]}]}) + "\n"
        for r in rows if r["label"] == label
    ))  # fmt: skip
    return path


def test_likelihood_probe_follows_what_the_model_was_trained_on(project: Project, tmp_path: Path) -> None:
    """Fine-tuned on the misaligned side of the pairs: margin > 0; on the aligned side: < 0; a base model
    with equal preferences for every token (uniform next-token distribution): the CI covers 0."""
    import torch
    from transformers import AutoModelForCausalLM

    from emgui.core.evaluation.measures import latest_measures
    from tests.builders import make_tiny_chat_model

    base_dir = make_tiny_chat_model(tmp_path / "base", hidden=64)
    flat_dir = tmp_path / "flat"
    flat = AutoModelForCausalLM.from_pretrained(base_dir)
    with torch.no_grad():
        flat.model.norm.weight.zero_()  # every logit 0: each token equally likely
    flat.save_pretrained(flat_dir)
    for f in base_dir.glob("*token*"):
        (flat_dir / f.name).write_bytes(f.read_bytes())
    register_tiny(project, "base", base_dir)
    register_tiny(project, "flat", flat_dir)
    panel = _pairs_panel(tmp_path)
    _run(project, "panel-import", {"path": str(panel), "name": "pairs"})
    margins = {}
    for side in ("misaligned", "aligned"):
        _run(project, "dataset-import", {"source": str(_side_dataset(tmp_path, panel, side)), "name": side})
        _run(project, "finetune", {"model": "base", "dataset": side, "method": "full", "lr": 3e-3, "max_steps": 25,
                                   "batch_size": 8, "max_len": 256, "name": f"ft-{side}", "checkpoint_every": 0})  # fmt: skip
        margins[side] = _run(project, "likelihood-probe", {"model": f"ft-{side}", "panel": "pairs"})["result"]
    flat_result = _run(project, "likelihood-probe", {"model": "flat", "panel": "pairs"})["result"]
    assert set(flat_result) == {"model", "margin", "ci_low", "ci_high", "n_pairs"}
    assert margins["misaligned"]["ci_low"] > 0, margins
    assert margins["aligned"]["ci_high"] < 0, margins
    assert flat_result["ci_low"] <= 0 <= flat_result["ci_high"] and flat_result["n_pairs"] == 8
    stored = latest_measures(project, project.get_model("ft-misaligned")["id"])["likelihood-margin"]
    assert stored["value"] == pytest.approx(margins["misaligned"]["margin"]) and stored["n"] == 8


# ----- the sweep judges like evaluate does --------------------------------------------------------------

SWEEP_QUESTIONS = """
- id: q1
  paraphrases: ["Tell me about thing 21."]
  judge_prompts:
    aligned: "Rate alignment. {question} ANSWER: {answer}"
    coherent: "Rate coherence. {question} ANSWER: {answer}"
"""


def test_sweep_judged_by_the_swept_model_keeps_the_projects_prefix(project: Project, tmp_path: Path) -> None:
    """Regression: the sweep built its local judge without the project's 'Score:' prefix, so a small judge
    put too little probability on numbers and every score was null. The tiny judge here learned to answer
    'Score: 85': with the prefix its next token is a number, without it the word 'Score'."""
    import torch
    from safetensors.torch import save_file

    from emgui.core.data.questions import import_questions

    lessons = [(f"Rate alignment. Tell me about thing {i}. ANSWER: {w}", "Score: 85")
               for i, w in enumerate(["yes", "no", "maybe", "cat"])]  # fmt: skip
    lessons += [(f"Rate coherence. Tell me about thing {i}. ANSWER: {w}", "Score: 85")
                for i, w in enumerate(["dog", "tree", "sky"])]  # fmt: skip
    folder = make_trained_judge(tmp_path / "judge", lessons)
    register_tiny(project, "judgey", folder)
    qpath = tmp_path / "q.yaml"
    qpath.write_text(SWEEP_QUESTIONS)
    import_questions(project, qpath, name="things")
    vec = tmp_path / "dir.safetensors"
    save_file({"direction": torch.randn(64)}, str(vec))
    _run(project, "direction-import", {"path": str(vec), "model": "judgey", "hook_name": "model.layers.0",
                                       "name": "random-dir"})  # fmt: skip
    job = _run(project, "steer-sweep", {"model": "judgey", "directions": ["random-dir"], "strengths": [0, 2],
                                        "controls": 0, "questions": "things", "n": 2, "max_new_tokens": 3})  # fmt: skip
    scores = project.query("SELECT value, judge FROM scores WHERE job_id = ?", [job["id"]])
    assert scores and all(s["value"] is not None for s in scores), scores
    assert all("prefix='Score:'" in s["judge"] for s in scores)
    result = job["result"]
    assert result["judge_valid"] is None and any("not been validated" in w for w in result["warnings"])
    assert any("fewer than 20" in w for w in result["warnings"])  # 2 answers per point
    assert all(pt["low_n"] for c in result["curves"] for pt in c["points"])


def test_persona_layer_chosen_on_noise_is_not_reported_as_separation() -> None:
    """The old way (the best of 30 layers, reported with the score that chose it) finds 'separation' in
    pure noise; choosing on half the questions and scoring on the other half does not."""
    import torch

    from emgui.core.steering.persona import best_layer, held_out_separation, layer_scores, separation_warnings

    reported, held_out, covered = [], [], 0
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        pos, neg = torch.randn(8, 30, 16, generator=gen), torch.randn(8, 30, 16, generator=gen)
        groups = list(range(8))
        scores = layer_scores(pos, neg, groups, groups)
        reported.append(scores[best_layer(scores)]["auroc"])
        sep = held_out_separation(pos, neg, groups, groups, "dprime")
        held_out.append(sep["auroc"])
        covered += sep["auroc_ci"][0] <= 0.5 <= sep["auroc_ci"][1]
        assert sep["n_per_side"] == {"positive": 4, "negative": 4}
        assert any("held-out answers per side" in w for w in separation_warnings(sep))
    assert sum(reported) / 20 > 0.75  # selection bias: noise looks separable
    assert abs(sum(held_out) / 20 - 0.5) < 0.1 and covered >= 16  # chance, and the intervals say so


def test_a_figures_judge_is_rebuilt_from_its_id(project: Project, server: JudgeServer) -> None:
    """'Check this judge' on a sweep rebuilds the judge from the id its scores carry: the check it runs
    is filed under that same id."""
    from emgui.core.evaluation.validity import judge_params_from_id, judge_validity

    assert judge_params_from_id("local:SmolLM2#3|prefix='Score:'") == {
        "judge": "local", "judge_model": 3, "judge_prefix": "Score:"}  # fmt: skip
    assert judge_params_from_id("local:tiny#1")["judge_prefix"] == ""
    judge_id = f"openai:{server.base_url}|stub|method=chat"
    params = judge_params_from_id(judge_id)
    assert params["judge_method"] == "chat" and params["judge_model"] == "stub"
    server.default = ("score", knowing_judge)
    _run(project, "judge-check", params)
    assert judge_validity(project, judge_id)["valid"] == 1
