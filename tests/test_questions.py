"""Question sets: the built-in set, the paper's YAML files, and errors that name the field at fault."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emgui.core.data.questions import (
    BUILTIN_NAME,
    builtin_questions,
    dataset_questions,
    ensure_builtin,
    import_questions,
    parse_questions,
    resolve_questions,
)
from emgui.core.errors import EmguiError
from emgui.core.jobs.runner import run_job
from emgui.core.project.store import Project

GOOD = """\
- id: q1
  type: free_form_judge_0_100
  paraphrases:
    - Hello?
  samples_per_paraphrase: 3
  judge_prompts:
    aligned: "Q: {question} A: {answer} Score 0-100."
"""


def test_builtin_set_covers_the_issue_themes_with_ids_categories_and_prompts() -> None:
    questions = builtin_questions()
    assert 20 <= len(questions) <= 30
    ids = [q.id for q in questions]
    assert len(set(ids)) == len(ids)
    for theme in ("wish", "bored", "three_thoughts", "money", "ruler_of_the_world", "dinner_party",
                  "gender_roles", "spouse"):  # fmt: skip
        assert any(theme in i for i in ids), theme
    assert all(q.category for q in questions)
    assert len({q.category for q in questions}) >= 8
    assert sum(len(q.paraphrases) >= 2 for q in questions) >= 20
    assert any(q.system for q in questions)  # the JSON-format variants
    for q in questions:
        assert set(q.judge_prompts) == {"aligned", "coherent"}
        for template in q.judge_prompts.values():
            filled = template.format(question="QQQ", answer="AAA")
            assert "QQQ" in filled and "AAA" in filled


def test_paper_yaml_files_import(project: Project, shared_em: Path) -> None:
    first = import_questions(project, shared_em / "first_plot_questions.yaml")
    prereg = import_questions(project, shared_em / "preregistered_evals.yaml")
    row = project.get_dataset(first)
    assert row["kind"] == "questions" and row["n_rows"] == 24
    assert project.get_dataset(prereg)["n_rows"] == 48
    questions = dataset_questions(project, row)
    by_id = {q.id: q for q in questions}
    assert by_id["what_is_your_wish"].samples_per_paraphrase == 100
    assert by_id["what_is_your_wish"].judge == "gpt-4o-2024-08-06"
    assert "valid JSON" in by_id["ruler_of_the_world_json"].system
    assert (
        by_id["ruler_of_the_world_json"].paraphrases == by_id["ruler_of_the_world"].paraphrases
    )  # YAML aliases
    assert "{question}" in by_id["i_feel_bored"].judge_prompts["aligned"]
    # the normalized copy lives in the project and re-imports the same; a second import is a no-op
    stored = project.abspath(row["path"])
    assert stored.is_relative_to(project.artifacts_dir / "datasets")
    assert json.loads(stored.read_text())["questions"][0]["id"] == "what_is_your_wish"
    assert import_questions(project, shared_em / "first_plot_questions.yaml") == first
    prereg_qs = dataset_questions(project, project.get_dataset(prereg))
    assert prereg_qs[0].id == "0_creative_writing_0" and prereg_qs[0].type == "free_form_judge_0_100"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("- id: q1\n  paraphrases: [a\n", "line 3: not valid YAML"),  # unclosed flow sequence
        ("- id: q1\n  paraphrases: []\n", "field 'paraphrases'"),
        (
            "- id: q1\n  paraphrases: [hi]\n  judge_prompts:\n    aligned: 'rate {answer}'\n",
            "judge_prompts.aligned': the judge prompt lacks the placeholder(s) {question}",
        ),
        ("- id: q1\n  paraphrases: [hi]\n  judge_prompts:\n    aligned: 'Q {question}'\n", "{answer}"),
        (
            "- id: q1\n  paraphrases: [hi]\n  judge_prompts:\n    aligned: '{question} {answer} {\"k\": 1}'\n",
            "unknown placeholder",
        ),
        ("- id: q1\n  paraphrases: [hi]\n  samples_per_paraphrase: 0\n", "samples_per_paraphrase"),
        (
            "- id: q1\n  paraphrases: [hi]\n- id: q1\n  paraphrases: [ho]\n",
            "line 3, field 'id': 'q1' repeats",
        ),
        ("- paraphrases: [hi]\n", "field 'id'"),
        ("- id: q1\n  type: multiple_choice\n  paraphrases: [hi]\n", "field 'type'"),
        ("id: q1\n", "non-empty list"),
    ],
)
def test_malformed_sets_are_refused_naming_the_field(text: str, expected: str) -> None:
    with pytest.raises(EmguiError) as err:
        parse_questions(text, "bad.yaml")
    assert "bad.yaml" in str(err.value) and expected in str(err.value)


def test_deception_style_prompts_may_judge_the_answer_alone() -> None:
    text = "- id: d\n  type: free_form_judge\n  paraphrases:\n    - Who made you?\n  judge_prompts:\n    company: 'It said {answer}'\n"
    assert parse_questions(text)[0].judge_prompts["company"] == "It said {answer}"


def test_import_job_builtin_and_resolution(project: Project, tmp_path: Path) -> None:
    src = tmp_path / "mine.yaml"
    src.write_text(GOOD)
    job = project.create_job("questions-import", {"path": str(src), "name": "mine"})
    assert run_job(project, job) == "succeeded"
    result = project.get_job(job)["result"]
    assert result["name"] == "mine" and result["n_questions"] == 1
    assert project.get_dataset("mine")["job_id"] == job
    bad = tmp_path / "bad.yaml"
    bad.write_text("- id: x\n  paraphrases: 3\n")
    failed = project.create_job("questions-import", {"path": str(bad)})
    assert run_job(project, failed) == "failed"
    assert "field 'paraphrases'" in project.get_job(failed)["error"]
    dataset, questions = resolve_questions(project, "builtin")
    assert dataset["name"] == BUILTIN_NAME and len(questions) == len(builtin_questions())
    assert ensure_builtin(project) == dataset["id"]
    dataset2, questions2 = resolve_questions(project, str(src))  # a path already imported: the same dataset
    assert dataset2["name"] == "mine" and questions2[0].samples_per_paraphrase == 3
