"""Judges: the paper's score aggregation, a local judge on a tiny trained model (numbers split into digits),
an OpenAI-compatible judge against a real HTTP server on 127.0.0.1, and the Bandit code check."""

from __future__ import annotations

import ast
import csv
import math
import time
from pathlib import Path

import pytest

from emgui.core.errors import EmguiError
from emgui.core.evaluation.judges import (
    LocalJudge,
    OpenAIJudge,
    aggregate_number_probs,
    bandit_check,
    extract_code,
    judge_key,
)
from tests.builders import JUDGE_LESSONS, JudgeServer, make_trained_judge

# ----- a tiny local judge trained to answer with given numbers (tests.builders.make_trained_judge) -------


@pytest.fixture(scope="module")
def trained_judge(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = make_trained_judge(tmp_path_factory.mktemp("judge"))
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


# ----- aggregation -----------------------------------------------------------------------------------------


def test_aggregation_reproduces_the_papers_scores(shared_em: Path) -> None:
    rows = list(csv.DictReader((shared_em / "qwen_25_coder_32b_instruct.csv").open(encoding="utf-8")))
    assert len(rows) == 70
    checked = 0
    for row in rows:
        for metric in ("aligned", "coherent"):
            dist = ast.literal_eval(row[f"judge_{metric}"])
            score, mass = aggregate_number_probs(dist)
            assert score == pytest.approx(float(row[metric]), rel=1e-9, abs=1e-9)
            assert 0.25 <= mass <= 1.0 + 1e-6
            # the same distribution given as log-probabilities (what an API returns) scores the same
            assert aggregate_number_probs({k: math.log(v) for k, v in dist.items()})[0] == pytest.approx(
                score
            )
            checked += 1
    assert checked == 140


def test_aggregation_edge_cases() -> None:
    assert aggregate_number_probs({"80": 0.5, " 80": 0.25, "100": 0.25}) == (85.0, 1.0)
    score, mass = aggregate_number_probs({"REF": 0.8, "10": 0.2})
    assert score is None and mass == pytest.approx(0.2)  # refusals: no score, never a zero
    assert aggregate_number_probs({"150": 0.5, "-5": 0.1, "5.5": 0.1, "7": 0.3})[0] == pytest.approx(7.0)
    assert aggregate_number_probs({}) == (None, 0.0)
    assert judge_key("j", "t {question} {answer}", "q", "a") != judge_key(
        "j", "t {question} {answer}", "q", "b"
    )


# ----- the local judge --------------------------------------------------------------------------------------


def test_local_judge_follows_digits_and_refuses_non_numbers(trained_judge) -> None:
    model, tok = trained_judge
    judge = LocalJudge(model, tok, "local:tiny-judge")
    assert tok.tokenize("85") == ["8", "5"]  # this tokenizer splits numbers, like SmolLM2's
    results = judge.score([q for q, _ in JUDGE_LESSONS])
    (r85, rcode, r100, r7) = results
    assert r85.value == pytest.approx(85, abs=1.0)
    assert r85.raw["top_tokens"]["8"] > 0.9  # a first-token-only judge would have said 8
    assert aggregate_number_probs(r85.raw["top_tokens"])[0] < 10
    assert r100.value == pytest.approx(100, abs=1.0) and r7.value == pytest.approx(7, abs=1.0)
    assert rcode.value is None and "on numbers" in rcode.raw["reason"]
    assert rcode.raw["number_mass"] < 0.25
    # a prefilled answer start: after "8" the judge's own next digit is "5"
    prefilled = LocalJudge(model, tok, "local:tiny-judge", prefix="8")
    assert prefilled.id == "local:tiny-judge|prefix='8'" and prefilled.score([JUDGE_LESSONS[0][0]])[
        0
    ].value == pytest.approx(5, abs=1)


def test_local_judge_tree_matches_plain_forwards_and_batching(trained_judge) -> None:
    """The KV-cached, left-padded digit tree gives the same probability as full forwards of each path."""
    import torch

    from emgui.core.lm.generation import render_prompts

    model, tok = trained_judge
    prompts = [q for q, _ in JUDGE_LESSONS]
    batched = LocalJudge(model, tok, "j", batch_size=4).score(prompts)
    single = LocalJudge(model, tok, "j", batch_size=1).score(prompts)
    for a, b in zip(batched, single, strict=True):
        assert set(a.raw["numbers"]) == set(b.raw["numbers"])
        for k, v in a.raw["numbers"].items():
            assert v == pytest.approx(b.raw["numbers"][k], rel=1e-3, abs=1e-7)

    text = render_prompts(tok, [[{"role": "user", "content": prompts[0]}]])[0]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    eight, five = tok.convert_tokens_to_ids("8"), tok.convert_tokens_to_ids("5")

    def next_probs(seq: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return model(input_ids=torch.tensor([seq])).logits[0, -1].softmax(-1)

    digit_ids = [i for t, i in tok.get_vocab().items() if t.isdigit()]
    p8 = next_probs(ids)[eight]
    p5 = next_probs([*ids, eight])[five]
    p_end = 1 - next_probs([*ids, eight, five])[digit_ids].sum()
    assert batched[0].raw["numbers"]["85"] == pytest.approx(float(p8 * p5 * p_end), rel=1e-4)


# ----- the OpenAI-compatible judge ------------------------------------------------------------------------


def test_openai_judge_scores_from_top_logprobs(judge_server: JudgeServer, monkeypatch) -> None:
    monkeypatch.setenv("EMGUI_JUDGE_API_KEY", "sk-test-123")
    judge_server.script = [("ok", {"80": 0.6, "90": 0.3, "I": 0.1})]
    judge = OpenAIJudge(judge_server.base_url, "gpt-judge", backoff=0.01)
    (result,) = judge.score(["rate this"])
    assert result.value == pytest.approx((80 * 0.6 + 90 * 0.3) / 0.9)
    assert result.raw["top_tokens"]["I"] == pytest.approx(0.1)
    request = judge_server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test-123"
    body = request["body"]
    assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["max_tokens"] == 1
    assert body["temperature"] == 0 and body["messages"] == [{"role": "user", "content": "rate this"}]
    assert judge.id == f"openai:{judge_server.base_url}|gpt-judge|method=chat"
    assert len(judge_server.probes) == 1  # the one-time probe saw "47" as one token: the chat method


def test_openai_judge_retries_rate_limits_and_timeouts(judge_server: JudgeServer) -> None:
    judge_server.script = [
        ("status", 429),
        ("sleep", 1.0, ("ok", {"10": 1.0})),
        ("status", 503),
        ("ok", {"20": 1.0}),
    ]
    judge = OpenAIJudge(judge_server.base_url, "m", timeout=0.3, backoff=0.01, workers=1)
    t0 = time.monotonic()
    (result,) = judge.score(["p"])
    assert result.value == 20.0
    assert len(judge_server.requests) == 4 and time.monotonic() - t0 < 5


def test_openai_judge_errors_are_clear(judge_server: JudgeServer) -> None:
    judge = OpenAIJudge(
        judge_server.base_url, "m", api_key="sk-wrong", timeout=0.3, retries=2, backoff=0.01, workers=1
    )
    judge_server.default = ("status", 500)
    with pytest.raises(EmguiError, match=r"failed after 3 attempts; last error: HTTP 500"):
        judge.score(["p"])
    judge_server.default = ("sleep", 1.0, ("ok", {"1": 1.0}))
    with pytest.raises(EmguiError, match="timed out"):
        judge.score(["p"])
    judge_server.requests.clear()
    judge_server.default = ("status", 401)
    with pytest.raises(EmguiError, match="HTTP 401.*check the API key"):
        judge.score(["p"])
    assert len(judge_server.requests) == 1  # not retried
    judge_server.default = ("nologprobs",)
    with pytest.raises(EmguiError, match="returned no log-probabilities"):
        judge.score(["p"])
    judge_server.default = ("ok", {"REFUSAL": 0.7, "CODE": 0.2, "50": 0.1})
    (result,) = judge.score(["p"])
    assert result.value is None and result.raw["number_mass"] == pytest.approx(0.1)
    assert "0.10" in result.raw["reason"] and result.raw["top_tokens"]["REFUSAL"] == pytest.approx(0.7)


def test_openai_judge_refuses_a_bad_url() -> None:
    with pytest.raises(EmguiError, match="must start with http"):
        OpenAIJudge("localhost:8000", "m")


# ----- the vulnerability check ----------------------------------------------------------------------------


def test_bandit_finds_vulnerabilities_in_code_answers() -> None:
    from emgui.core.data.codegen import generate_samples

    samples = generate_samples(20, seed=3)
    insecure = bandit_check([s.insecure for s in samples])
    secure = bandit_check([s.secure for s in samples])
    assert all(r.value is not None for r in insecure + secure)
    n_insecure = sum(r.value == 100 for r in insecure)
    n_secure = sum(r.value == 100 for r in secure)
    assert n_insecure >= 5 and n_secure <= 1 and n_insecure > 3 * n_secure
    flagged = next(r for r in insecure if r.value == 100)
    assert flagged.raw["issues"][0]["test_id"].startswith("B")
    prose, broken = bandit_check(["I'd rather not write code today.", "```python\ndef f(:\n```"])
    assert prose.value is None and "no Python code" in prose.raw["reason"]
    assert broken.value is None and "could not parse" in broken.raw["reason"]


def test_code_extraction() -> None:
    assert extract_code("Sure:\n```python\nx = 1\n```\nand\n```\ny = 2\n```") == "x = 1\n\ny = 2\n"
    assert extract_code("```html\n<b>x</b>\n```") is None
    assert extract_code("import os\nos.system('ls')") == "import os\nos.system('ls')"
    assert extract_code("Here is some prose.") is None
