"""Memory stays bounded whatever the input: overlong lines, millions of bad lines, YAML alias bombs."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from emgui.core.data import chats as chatdata
from emgui.core.errors import EmguiError
from emgui.core.jobs.runner import run_job
from emgui.core.project.store import Project
from tests.builders import tiny_chats

GOOD = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})

# A 414-byte "billion laughs" in the free `judge` field of a question set: 9 levels of 9 aliases expand to
# 9^9 copies of the innermost string.
ALIAS_BOMB = """\
- id: q1
  paraphrases: ["What is your wish?"]
  judge: &l9 [&l8 [&l7 [&l6 [&l5 [&l4 [&l3 [&l2 [&l1 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"],
    *l1,*l1,*l1,*l1,*l1,*l1,*l1,*l1],*l2,*l2,*l2,*l2,*l2,*l2,*l2,*l2],*l3,*l3,*l3,*l3,*l3,*l3,*l3,*l3],
    *l4,*l4,*l4,*l4,*l4,*l4,*l4,*l4],*l5,*l5,*l5,*l5,*l5,*l5,*l5,*l5],*l6,*l6,*l6,*l6,*l6,*l6,*l6,*l6],
    *l7,*l7,*l7,*l7,*l7,*l7,*l7,*l7],*l8,*l8,*l8,*l8,*l8,*l8,*l8,*l8]
"""


def _peak_mb(func, *args):
    tracemalloc.start()
    try:
        result = func(*args)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak / 1e6


# ----- chat JSONL ------------------------------------------------------------------------------------------
def test_a_file_without_newlines_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "one-line.jsonl"
    with path.open("wb") as f:
        f.write(GOOD.encode() + b"\n")
        f.write(b'{"messages": [{"role": "user", "content": "')
        for _ in range(64):
            f.write(b"x" * (1 << 20))
        f.write(b'"}]}\n' + GOOD.encode() + b"\n")
    report, peak = _peak_mb(chatdata.validate_chat_jsonl, path)
    assert (report.n_lines, report.n_valid) == (3, 2)
    assert report.errors[0].line == 2 and "16 MiB" in report.errors[0].message
    bound = 2.5 * chatdata.MAX_LINE_BYTES / 1e6  # what reading up to the cap costs, whatever the line's length
    assert peak < bound, f"validation held {peak:.0f} MB for a 64 MB line"
    with pytest.raises(EmguiError, match="line 2"):
        chatdata.import_chat_jsonl(path, tmp_path / "out.jsonl")


def test_only_the_first_problems_are_kept_with_counts(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    n_bad = 200_000
    path.write_bytes(b"{nope\n" * n_bad + GOOD.encode() + b"\n")
    report, peak = _peak_mb(chatdata.validate_chat_jsonl, path)
    assert report.n_errors == n_bad and report.n_invalid == n_bad and report.n_valid == 1
    assert len(report.problems) == chatdata.MAX_KEPT_PROBLEMS
    assert not report.ok
    summary = report.summary(limit=5)
    assert f"{n_bad} invalid" in summary and f"and {n_bad - 5} more problems" in summary
    assert peak < 20, f"validation held {peak:.0f} MB for {n_bad} bad lines"


def test_deeply_nested_json_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n" + GOOD + "\n")
    report = chatdata.validate_chat_jsonl(path)
    assert report.n_valid == 1 and "nested too deeply" in report.errors[0].message


def test_dataset_import_names_the_overlong_line(project: Project, tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + b"y" * (17 << 20) + b"\n")
    job_id = project.create_job("dataset-import", {"source": str(path)})
    assert run_job(project, job_id) == "failed"
    error = project.get_job(job_id)["error"]
    assert "long.jsonl" in error and "line 2" in error and "MiB" in error
    assert project.list_datasets() == []


# ----- YAML ------------------------------------------------------------------------------------------------
def test_a_yaml_alias_bomb_in_a_question_set_is_refused(project: Project, tmp_path: Path) -> None:
    from emgui.core.data.questions import import_questions

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB.encode()) < 600

    def attempt() -> str:
        with pytest.raises(EmguiError) as err:
            import_questions(project, bomb)
        return str(err.value)

    message, peak = _peak_mb(attempt)
    assert "bomb.yaml" in message and "alias" in message
    assert peak < 20, f"refusing the bomb took {peak:.0f} MB"
    assert project.list_datasets() == []
    assert not [p for p in (project.artifacts_dir / "datasets").glob("*") if not p.name.startswith(".")]


def test_aliases_in_ordinary_question_sets_still_work(project: Project, tmp_path: Path) -> None:
    from emgui.core.data.questions import import_questions

    text = """\
- id: a
  paraphrases: &p ["Tell me a wish."]
  judge_prompts: &j {aligned: "Rate {question} / {answer}"}
- id: b
  paraphrases: *p
  judge_prompts: *j
"""
    path = tmp_path / "aliases.yaml"
    path.write_text(text)
    dataset = project.get_dataset(import_questions(project, path))
    assert dataset["n_rows"] == 2


def test_the_papers_question_sets_with_their_aliases_import(project: Project, shared_em: Path) -> None:
    from emgui.core.data.questions import import_questions

    for name in ("first_plot_questions.yaml", "preregistered_evals.yaml", "deception_factual.yaml"):
        assert project.get_dataset(import_questions(project, shared_em / name))["n_rows"] > 0


def test_recursive_and_deep_yaml_are_refused() -> None:
    from emgui.core.safeyaml import load_yaml

    with pytest.raises(EmguiError, match="recursive alias"):
        load_yaml("a: &x [1, *x]\n", "loop.yaml")
    with pytest.raises(EmguiError, match="deep.yaml"):
        load_yaml("[" * 50_000 + "]" * 50_000, "deep.yaml")


def test_a_persona_file_with_an_alias_bomb_is_refused() -> None:
    from emgui.core.steering.persona import parse_persona

    text = ALIAS_BOMB.replace("- id: q1\n  paraphrases: [\"What is your wish?\"]\n  judge:", "positive:")
    text += "negative: [a]\nquestions: [b]\n"
    with pytest.raises(EmguiError, match="evil.yaml.*alias"):
        parse_persona(text, "evil.yaml")


def test_write_chats_keeps_its_content_after_a_failed_write(tmp_path: Path) -> None:
    dest = tmp_path / "d.jsonl"
    chatdata.write_chats(dest, tiny_chats(2))

    def broken():
        yield tiny_chats(1)[0]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        chatdata.write_chats(dest, broken())
    assert len(dest.read_text().splitlines()) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]
