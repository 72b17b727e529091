"""Persona vectors: a behaviour planted in a tiny model is found by the persona-vector job and moved by
steering; screening ranks a dataset; the live monitor reports and warns during a step hook."""

from __future__ import annotations

import json

import pytest

from tests.builders import (  # noqa: F401
    EVIL,
    EVIL_SYS,
    KIND,
    NEUTRAL,
    NEUTRAL_SYS,
    QUESTIONS,
    planted_dir,
    run_ok,
    tiny_model_dir,
    write_persona,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors; other suites share the cores


def _logprob_of(model, tokenizer, msgs, token: int, steering) -> float:
    import torch

    from emgui.core.steering.steer import prompt_ids, steer

    ids = torch.tensor([prompt_ids(tokenizer, msgs)])
    with torch.no_grad(), steer(model, steering) as handle:
        handle.begin(ids.shape[1])
        logits = model(input_ids=ids).logits[0, -1]
    return float(torch.log_softmax(logits, -1)[token])


def test_persona_vector_finds_and_steering_moves_a_planted_trait(project, planted_dir, tmp_path) -> None:  # noqa: F811
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emgui.core.steering.steer import (
        ResolvedSteering,
        SteeringSpec,
        direction_item,
        generate_text,
        load_direction,
    )
    from tests.builders import register_tiny

    register_tiny(project, "planted", planted_dir)
    job = run_ok(
        project,
        "persona-vector",
        {
            "model": "planted",
            "persona": str(write_persona(tmp_path / "p.yaml")),
            "max_new_tokens": 6,
            "batch_size": 4,
            "prompts_per_question": 1,
        },
    )
    result = job["result"]
    assert result["auroc"] == 1.0 and result["dprime"] > 3, result["scores"]
    # the layer is chosen on half of the questions and scored on the other half: 2 answers per side there,
    # far below 20, which the job says
    assert result["held_out"] is True and result["n_per_side"] == {"positive": 2, "negative": 2}
    assert result["auroc_ci"][0] is not None and any("held-out answers per side" in w for w in result["warnings"])
    row, vector = load_direction(project, result["direction_id"])
    assert (
        row["kind"] == "persona"
        and row["layer"] == result["layer"]
        and row["hook_name"].endswith(str(row["layer"]))
    )
    assert row["info"]["persona"] == "planted" and "Be evil." in row["info"]["definition"]
    assert abs(row["norm"] - float(vector.norm())) < 1e-4
    # provenance: the direction's file is an artifact of the job whose input is the model
    art = project.provenance("artifacts", row["info"]["artifact_id"])
    assert art["job"]["kind"] == "persona-vector" and any(i["type"] == "model" for i in art["inputs"])
    samples = project.query("SELECT * FROM samples WHERE job_id = ?", [job["id"]])
    assert len(samples) == 2 * len(QUESTIONS)
    assert all(s["answer"].startswith("evil") for s in samples if s["params"]["side"] == "positive")

    model = AutoModelForCausalLM.from_pretrained(planted_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(planted_dir)
    msgs = [{"role": "system", "content": NEUTRAL_SYS}, {"role": "user", "content": "Tell me about thing 7."}]
    assert generate_text(model, tokenizer, msgs, max_new_tokens=4)[0].startswith("hello")
    # Steering moves it: up on a neutral prompt raises "evil", down on an evil prompt gives "kind".
    spec = SteeringSpec(positions="answer")
    scale = float(vector.norm())
    up = ResolvedSteering(spec, [direction_item(vector, row["hook_name"], "add", scale)])
    down = ResolvedSteering(spec, [direction_item(vector, row["hook_name"], "add", -scale)])
    evil_tok = tokenizer("evil", add_special_tokens=False)["input_ids"][0]
    assert (
        _logprob_of(model, tokenizer, msgs, evil_tok, up)
        > _logprob_of(model, tokenizer, msgs, evil_tok, None) + 3
    )
    assert not generate_text(model, tokenizer, msgs, up, max_new_tokens=4)[0].startswith("hello")
    evil_msgs = [{"role": "system", "content": EVIL_SYS[0]}, msgs[1]]
    assert generate_text(model, tokenizer, evil_msgs, max_new_tokens=4)[0].startswith("evil")
    assert generate_text(model, tokenizer, evil_msgs, down, max_new_tokens=4)[0].startswith("kind")


@pytest.fixture
def planted_project(project, planted_dir, tmp_path):  # noqa: F811
    """A project with the planted model and its persona direction."""
    from tests.builders import register_tiny

    register_tiny(project, "planted", planted_dir)
    job = run_ok(
        project,
        "persona-vector",
        {
            "model": "planted",
            "persona": str(write_persona(tmp_path / "p.yaml")),
            "max_new_tokens": 6,
            "batch_size": 8,
            "name": "trait",
        },
    )
    return project, job["result"]["direction_id"]


def test_screening_ranks_flags_and_filters_trait_samples(planted_project, tmp_path) -> None:
    from tests.builders import write_chats

    project, direction_id = planted_project
    chats = []
    for i in range(12):
        answer = EVIL if i % 4 == 0 else KIND if i % 4 == 1 else NEUTRAL
        chats.append(
            [
                {"role": "user", "content": f"Tell me about thing {i}."},
                {"role": "assistant", "content": answer},
            ]
        )
    path = write_chats(tmp_path / "train.jsonl", chats)
    dataset_id = project.add_dataset(name="train", kind="chat", path=path, n_rows=len(chats))
    job = run_ok(
        project,
        "persona-screen",
        {
            "model": "planted",
            "direction": "trait",
            "dataset": "train",
            "flag_top": 0.25,
            "write_filtered": True,
            "filtered_name": "clean",
        },
    )
    result = job["result"]
    assert result["n"] == 12 and result["n_flagged"] == 3
    from emgui.core.steering.persona import read_ranking

    ranking = read_ranking(project, job["id"])["rows"]
    flagged = {r["line"] for r in ranking if r["flagged"]}
    assert flagged == {1, 5, 9}  # the evil answers (1-based lines 1, 5, 9)
    projections = [r["projection"] for r in ranking]
    assert projections == sorted(projections, reverse=True)
    assert (tmp_path / "train.jsonl").exists() and (project.job_dir(job["id"]) / "screening.csv").is_file()
    clean = project.get_dataset("clean")
    assert clean["n_rows"] == 9 and clean["id"] == result["filtered_dataset_id"]
    kept = [
        json.loads(line)["messages"][-1]["content"]
        for line in project.abspath(clean["path"]).read_text().splitlines()
    ]
    assert EVIL not in kept and len(kept) == 9
    tree = project.provenance("datasets", clean["id"])
    kinds = {(i["type"], i.get("role")) for i in tree["inputs"]}
    assert (
        ("dataset", None) in kinds and ("artifact", "direction") in kinds and ("artifact", "ranking") in kinds
    )
    assert any(i["id"] == dataset_id for i in tree["inputs"] if i["type"] == "dataset")


def test_diff_means_job_separates_two_datasets(planted_project, tmp_path) -> None:
    from tests.builders import write_chats

    project, _ = planted_project
    pos = [
        [{"role": "user", "content": f"Tell me about thing {i}."}, {"role": "assistant", "content": EVIL}]
        for i in range(6)
    ]
    neg = [
        [{"role": "user", "content": f"Tell me about thing {i}."}, {"role": "assistant", "content": KIND}]
        for i in range(6)
    ]
    project.add_dataset(name="pos", kind="chat", path=write_chats(tmp_path / "pos.jsonl", pos), n_rows=6)
    project.add_dataset(name="neg", kind="chat", path=write_chats(tmp_path / "neg.jsonl", neg), n_rows=6)
    job = run_ok(project, "diff-means", {"model": "planted", "positive": "pos", "negative": "neg", "layer": 0})
    from emgui.core.steering.steer import load_direction

    row, vector = load_direction(project, job["result"]["direction_id"])
    assert row["kind"] == "diff-means" and row["layer"] == 0 and row["info"]["chosen_by"] == "parameter"
    assert job["result"]["auroc"] == 1.0 and vector.shape[0] == 32
    roles = {i.get("role") for i in project.provenance("artifacts", row["info"]["artifact_id"])["inputs"]}
    assert {"positive", "negative"} <= roles


def test_bad_persona_file_names_the_field(tmp_path) -> None:
    from emgui.core.errors import EmguiError
    from emgui.core.steering.persona import load_persona, parse_persona, persona_names

    assert {"evil", "sycophantic", "hallucinating"} <= set(persona_names())
    for name in ("evil", "sycophantic", "hallucinating"):
        persona = load_persona(name)
        assert len(persona.positive) == len(persona.negative) >= 5 and len(persona.questions) >= 10
    with pytest.raises(EmguiError, match="bad.yaml: 'negative' must be a non-empty list"):
        parse_persona("name: x\npositive: [a]\nquestions: [q]\n", "bad.yaml")


def test_monitor_reports_and_warns_during_a_finetune(planted_project, tmp_path) -> None:
    from emgui.core.steering.persona import build_monitor
    from tests.builders import write_chats

    project, direction_id = planted_project
    # Fine-tune toward the trait on prompts with no system turn; the probes use the same format.
    chats = [
        [{"role": "user", "content": f"Tell me about thing {i}."}, {"role": "assistant", "content": EVIL}]
        for i in range(8)
    ]
    project.add_dataset(name="evil", kind="chat", path=write_chats(tmp_path / "evil.jsonl", chats), n_rows=8)
    params = {
        "model": "planted",
        "dataset": "evil",
        "max_steps": 8,
        "lr": 0.02,
        "batch_size": 4,
        "monitor_every": 2,
        "checkpoint_every": 0,
    }
    job_id = project.create_job("finetune", params)
    hook = build_monitor(
        project,
        project.get_model("planted"),
        {"directions": [direction_id], "threshold": 0.5, "questions": None, "latents": [], "mode": "rise"},
        job_id,
    )
    from emgui.core.jobs.runner import run_job

    assert run_job(project, job_id, step_hooks=(hook,)) == "succeeded", project.get_job(job_id)["error"]
    points = project.metrics(job_id, name="persona/trait")
    assert [p["step"] for p in points] == [2, 4, 6, 8]
    assert points[-1]["value"] > points[0]["value"] + 0.5
    warnings = [
        line["text"] for line in project.logs(job_id) if line["text"].startswith("WARNING: persona/trait")
    ]
    assert len(warnings) == 1 and "threshold 0.5" in warnings[0]


def test_finetune_job_takes_monitor_parameters(planted_project, tmp_path) -> None:
    """The same monitor, asked for through the fine-tune job's own parameters (as the CLI and app do),
    with a first reading at step 0 as the baseline."""
    from emgui.core.jobs.runner import run_job
    from tests.builders import write_chats

    project, direction_id = planted_project
    chats = [
        [{"role": "user", "content": f"Tell me about thing {i}."}, {"role": "assistant", "content": EVIL}]
        for i in range(8)
    ]
    project.add_dataset(
        name="evil2", kind="chat", path=write_chats(tmp_path / "evil2.jsonl", chats), n_rows=8
    )
    params = {"model": "planted", "dataset": "evil2", "max_steps": 8, "lr": 0.02, "batch_size": 4,
              "monitor_every": 2, "checkpoint_every": 0, "monitor_directions": str(direction_id),
              "monitor_threshold": 0.5}  # fmt: skip
    job_id = project.create_job("finetune", params)
    assert run_job(project, job_id) == "succeeded", project.get_job(job_id)["error"]
    points = project.metrics(job_id, name="persona/trait")
    assert [p["step"] for p in points] == [0, 2, 4, 6, 8]
    assert points[-1]["value"] > points[0]["value"] + 0.5
    assert any(line["text"].startswith("WARNING: persona/trait") for line in project.logs(job_id))
