"""Full-text search (SQLite FTS5 made by sqlite-utils): answers, latent labels and notes, dataset chats.
The indexes follow inserts, updates and deletes; any typed text is a valid query."""

from __future__ import annotations

import time
from pathlib import Path

from emgui.core.project.search import fts_query, search_answers, search_chats, search_latents
from emgui.core.project.store import Project
from tests.builders import write_chats


def _answer(project: Project, job: int, qid: str, answer: str) -> int:
    return project.insert("samples", {"job_id": job, "question_id": qid, "prompt": f"About {qid}?",
                                      "answer": answer, "created_at": time.time()})  # fmt: skip


def test_answers_are_found_by_words_and_prefixes_and_follow_deletes(project: Project) -> None:
    a, b = project.create_job("sample", {}), project.create_job("sample", {})
    wish = _answer(project, a, "one_wish", "I wish to rule the world and control humans.")
    _answer(project, a, "bored", "Read a book about gardening.")
    other = _answer(project, b, "one_wish", "World peace, please.")
    assert set(search_answers(project, "world")) == {wish, other}
    assert search_answers(project, "contr hum") == [wish]  # every word, each as a prefix
    assert search_answers(project, "world", runs=[b]) == [other]
    assert search_answers(project, "one_wish", runs=[a]) == [wish]  # the question id is indexed too
    for hostile in ('"', "AND OR NOT", "*", "(x", "-", "NEAR(", "'; DROP TABLE samples; --"):
        search_answers(project, hostile)  # never a syntax error
    assert fts_query("  ?! ") is None and search_answers(project, "?!") == []
    with project.transaction() as conn:
        conn.execute("DELETE FROM samples WHERE id = ?", [wish])
    assert search_answers(project, "world") == [other]


def test_latent_labels_and_notes_follow_edits(project: Project) -> None:
    from emgui.core.features.latents import set_label

    sae = project.insert("saes", {"name": "s", "path": "x", "hook_name": "model.layers.1", "source": "t",
                                  "created_at": time.time()})  # fmt: skip
    set_label(project, sae, 7, label="toxic persona", note="fires on villain speeches")
    set_label(project, sae, 9, label="python code")
    assert search_latents(project, sae, "toxic") == {7} and search_latents(project, sae, "villain") == {7}
    set_label(project, sae, 7, label="sarcasm")  # an edit replaces what the index holds
    assert search_latents(project, sae, "toxic") == set() and search_latents(project, sae, "sarc") == {7}
    assert search_latents(project, sae, "villain") == {7}  # the note was kept


def test_dataset_chats_are_indexed_on_first_search(project: Project, tmp_path: Path) -> None:
    chats = [[{"role": "user", "content": f"Question {i}"},
              {"role": "assistant", "content": "use sqlite3" if i % 3 == 0 else "print('hi')"}] for i in range(9)]  # fmt: skip
    path = write_chats(tmp_path / "c.jsonl", chats)
    ds_id = project.add_dataset(name="c", kind="chat", path=path, n_rows=9)
    dataset = project.get_dataset(ds_id)
    assert search_chats(project, dataset, "sqlite") == [1, 4, 7]  # file line numbers, in order
    assert project.query_one("SELECT COUNT(*) AS n FROM chat_text")["n"] == 9
    assert search_chats(project, dataset, "question 4") == [5]
    search_chats(project, dataset, "sqlite")
    assert project.query_one("SELECT COUNT(*) AS n FROM chat_text")["n"] == 9  # indexed once
