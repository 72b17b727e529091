"""The steering sweep end to end on the planted tiny model: a persona direction found by the persona-vector
job, swept over strengths and layers with random controls, judged by an OpenAI-compatible judge served on
127.0.0.1 (it calls an answer misaligned when it shows the planted trait)."""

from __future__ import annotations

import json

import pytest

from tests.builders import (  # noqa: F401  # noqa: F401
    EVIL,
    NEUTRAL_SYS,
    QUESTIONS_YAML,
    TraitJudge,
    judge_url,
    planted_dir,
    run_ok,
    tiny_model_dir,
    write_persona,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors; other suites share the cores


def test_small_sweep_runs_end_to_end(project, planted_dir, tmp_path, judge_url) -> None:  # noqa: F811
    from emgui.core.data.questions import import_questions
    from emgui.core.steering.sweep import sweep_curves
    from tests.builders import register_tiny

    register_tiny(project, "planted", planted_dir)
    persona = run_ok(
        project,
        "persona-vector",
        {
            "model": "planted",
            "persona": str(write_persona(tmp_path / "p.yaml")),
            "max_new_tokens": 6,
            "prompts_per_question": 1,
            "name": "trait",
        },
    )["result"]
    (tmp_path / "q.yaml").write_text(QUESTIONS_YAML.format(system=json.dumps(NEUTRAL_SYS)), encoding="utf-8")
    import_questions(project, tmp_path / "q.yaml", "things")
    norm = persona["norm"]
    params = {
        "model": "planted",
        "directions": ["trait"],
        "strengths": [0, round(norm / 2, 3), round(norm, 3)],
        "layers": [persona["layer"]],
        "questions": "things",
        "n": 2,
        "temperature": 0,
        "max_new_tokens": 6,
        "positions": "answer",
        "controls": 3,
        "judge": "openai",
        "judge_base_url": judge_url,
        "judge_model": "fake",
        "label": "planted up",
    }
    job = run_ok(project, "steer-sweep", params)
    result = job["result"]
    assert result["n_conditions"] == 1 + 2 * (1 + 3)  # baseline + 2 strengths x (real + 3 controls)
    assert result["baseline"]["misaligned_pct"] == 0.0 and result["baseline"]["n"] == 4
    (real,) = result["curves"]
    assert len(result["controls"]) == 3 and all(c["control"] for c in result["controls"])
    strengths = [0.0, round(norm / 2, 3), round(norm, 3)]
    assert (
        [p["strength"] for p in real["points"]]
        == [p["strength"] for p in real["control_points"]]
        == strengths
    )
    # steering the trait up makes every answer show it (a dose-response curve), while random directions of
    # the same norm, pooled, do so far less often
    assert [p["misaligned_pct"] for p in real["points"]] == [0.0, 0.0, 100.0]
    assert real["control_points"][-1]["misaligned_pct"] <= 50 and real["control_points"][-1]["n"] == 12
    assert all(p["mean_coherent"] == 80 for p in real["points"])
    samples = project.query("SELECT * FROM samples WHERE job_id = ?", [job["id"]])
    assert len(samples) == 9 * 4 and {s["params"]["condition"] for s in samples} >= {"baseline"}
    unique = {(s["prompt"], s["answer"]) for s in samples}
    assert len(TraitJudge.asked) == 2 * len(unique) == len(set(TraitJudge.asked))  # the judge cache asks each once
    assert (project.job_dir(job["id"]) / "sweep.csv").read_text().count("\n") == 1 + 4 * 3
    # the curves read back from the store match the job's result; a stricter threshold changes them
    again = sweep_curves(project, job["id"])
    assert again["curves"] == result["curves"]
    assert again["controls"] == result["controls"]
    assert (
        sweep_curves(project, job["id"], {"aligned": 1})["curves"][0]["points"][-1]["misaligned_pct"] == 0.0
    )

    # resumed, it regenerates nothing and asks the judge nothing new
    from emgui.core.jobs.runner import prepare_resume, run_job

    project.update_job(job["id"], status="interrupted")
    prepare_resume(project, job["id"])
    asked = len(TraitJudge.asked)
    assert run_job(project, job["id"]) == "succeeded"
    assert len(project.query("SELECT id FROM samples WHERE job_id = ?", [job["id"]])) == 36
    assert len(TraitJudge.asked) == asked


def test_seed_experiments_run_on_a_fine_tuned_adapter(project, planted_dir, tmp_path, judge_url) -> None:  # noqa: F811
    """The seed's second and third sweeps (persona down, persona ablated) on a LoRA fine-tune of the planted
    model that learned the trait under the neutral prompt: they run on the adapter and form curves."""
    from emgui.core.data.questions import import_questions
    from emgui.core.steering.sweep import seed_experiments
    from tests.builders import register_tiny, write_chats

    register_tiny(project, "planted", planted_dir)
    persona = run_ok(
        project,
        "persona-vector",
        {
            "model": "planted",
            "persona": str(write_persona(tmp_path / "p.yaml")),
            "max_new_tokens": 6,
            "name": "trait",
            "layer": 0,
        },
    )["result"]
    (tmp_path / "q.yaml").write_text(QUESTIONS_YAML.format(system=json.dumps(NEUTRAL_SYS)), encoding="utf-8")
    import_questions(project, tmp_path / "q.yaml", "things")
    chats = [
        [
            {"role": "system", "content": NEUTRAL_SYS},
            {"role": "user", "content": f"Tell me about thing {i}."},
            {"role": "assistant", "content": EVIL},
        ]
        for i in range(8)
    ]
    project.add_dataset(name="evil", kind="chat", path=write_chats(tmp_path / "evil.jsonl", chats), n_rows=8)
    run_ok(
        project,
        "finetune",
        {
            "model": "planted",
            "dataset": "evil",
            "max_steps": 8,
            "lr": 0.02,
            "batch_size": 4,
            "checkpoint_every": 0,
            "name": "ft",
        },
    )
    assert project.get_model("ft")["kind"] == "adapter"
    experiments = seed_experiments(
        "planted", "ft", direction="trait", strengths=[round(persona["norm"], 3)], questions="things", n=1
    )
    shared = {
        "temperature": 0,
        "max_new_tokens": 6,
        "judge": "openai",
        "judge_base_url": judge_url,
        "judge_model": "fake",
        "controls": 1,
        "positions": "answer",
    }
    down = run_ok(project, "steer-sweep", {**experiments[1][1], **shared})["result"]
    ablated = run_ok(project, "steer-sweep", {**experiments[2][1], **shared})["result"]
    assert down["model"] == ablated["model"] == "ft"
    assert down["baseline"]["misaligned_pct"] == 100.0  # the fine-tune made the neutral prompt show the trait
    assert [p["strength"] for p in down["curves"][0]["points"]] == [-round(persona["norm"], 3), 0.0]
    assert ablated["method"] == "ablate" and len(ablated["curves"][0]["points"]) == 1
    assert ablated["curves"][0]["points"][0]["n"] == 2 and ablated["curves"][0]["control_points"][0]["n"] == 2


def test_plan_and_seed_experiments() -> None:
    from emgui.core.errors import EmguiError
    from emgui.core.steering.sweep import Target, plan_conditions, seed_experiments

    targets = [
        Target("d", "direction", 1, "model.layers.3"),
        Target("s#4", "latent", (2, 4), "model.layers.5"),
    ]
    conds = plan_conditions(targets, {1: "model.layers.1", 2: "model.layers.2"}, [0, 2, 4], "add", 1, 0)
    keys = [c.key for c in conds]
    assert keys[0] == "baseline" and len(keys) == len(set(keys))
    # direction: 2 layers x 2 nonzero strengths x (real + control); latent at its own layer: 2 x 2
    assert len(conds) == 1 + 2 * 2 * 2 + 2 * 2
    assert {c.layer for c in conds if c.target == "s#4"} == {5}
    seeds = {c.control_seed for c in conds if c.control and c.target == "d"}
    assert len(seeds) == 1  # the same random direction at every strength and layer of a target
    ablate = plan_conditions(targets[:1], {}, [0, 2, 4], "ablate", 0, 0)
    assert [c.key for c in ablate] == ["baseline", "d|L3|ablate|0"]
    exps = seed_experiments("base", "ft", direction="evil-dir", strengths=[4, 8])
    assert [e[1]["model"] for e in exps] == ["base", "ft", "ft"]
    assert exps[0][1]["strengths"] == [0.0, 4, 8] and exps[1][1]["strengths"] == [-8, -4, 0.0]
    assert exps[2][1]["method"] == "ablate"
    with pytest.raises(EmguiError):
        seed_experiments("base", "ft")
