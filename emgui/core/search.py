"""Full-text search over a project: answers, dataset chats, latent labels and notes (SQLite FTS5).

The indexes are made by the schema (sqlite-utils `enable_fts` with triggers, so they follow every
insert, update and delete). Dataset chats live in JSONL files; their text is indexed into `chat_text`
when a dataset is imported or first searched. Queries are the user's words, each matched as a prefix
("sqli" finds "sqlite"), all of them required; FTS syntax characters are quoted away, so any text is a
valid query.
"""

from __future__ import annotations

import re
from typing import Any

MAX_CHAT_CHARS = 20_000  # the indexed part of one chat: enough to find it, bounded for huge lines
_WORD = re.compile(r"\w+", re.UNICODE)


def fts_query(text: str) -> str | None:
    """The FTS5 query for what a user typed: every word, as a prefix; None when there is no word."""
    words = _WORD.findall(text or "")
    if not words:
        return None
    return " ".join(f'"{w}"*' for w in words)


def search_answers(project: Any, text: str, *, runs: list[int] | None = None, limit: int = 10_000) -> list[int]:
    """Ids of the answers (samples) whose question id, prompt or answer contains every word, in the order
    they were stored, optionally within some runs."""
    query = fts_query(text)
    if query is None:
        return []
    sql = "SELECT s.id FROM samples_fts f JOIN samples s ON s.rowid = f.rowid WHERE samples_fts MATCH ?"
    args: list[Any] = [query]
    if runs:
        sql += f" AND s.job_id IN ({','.join('?' for _ in runs)})"
        args += list(runs)
    sql += " ORDER BY s.id LIMIT ?"
    return [r["id"] for r in project.query(sql, [*args, limit])]


def search_latents(project: Any, sae_id: int, text: str) -> set[int]:
    """The latents of an SAE whose label or note contains every word."""
    query = fts_query(text)
    if query is None:
        return set()
    rows = project.query(
        "SELECT l.latent FROM latent_labels_fts f JOIN latent_labels l ON l.rowid = f.rowid "
        "WHERE latent_labels_fts MATCH ? AND l.sae_id = ?",
        [query, sae_id],
    )
    return {r["latent"] for r in rows}


def chat_text(messages: list[dict]) -> str:
    text = "\n".join(str(m.get("content", "")) for m in messages)
    return text[:MAX_CHAT_CHARS]


def index_dataset(project: Any, dataset: dict, *, batch: int = 2000) -> int:
    """Index a chat dataset's text (once; a no-op when it is indexed). Returns the number of chats."""
    if project.query_one("SELECT 1 FROM chat_text WHERE dataset_id = ? LIMIT 1", [dataset["id"]]):
        return 0
    from emgui.core.chatdata import iter_valid_chats

    rows: list[dict] = []
    n = 0
    path = project.abspath(dataset["path"])
    with project.transaction() as conn:
        for line, messages in iter_valid_chats(path):
            rows.append({"dataset_id": dataset["id"], "line": line, "text": chat_text(messages)})
            if len(rows) >= batch:
                _insert(conn, rows)
                n += len(rows)
                rows = []
        _insert(conn, rows)
        n += len(rows)
    return n


def _insert(conn: Any, rows: list[dict]) -> None:
    if rows:
        conn.executemany(
            "INSERT INTO chat_text (dataset_id, line, text) VALUES (?, ?, ?)",
            [(r["dataset_id"], r["line"], r["text"]) for r in rows],
        )


def search_chats(project: Any, dataset: dict, text: str, *, limit: int = 100_000) -> list[int]:
    """Line numbers (1-based, as in the file) of a dataset's chats that contain every word, in file order."""
    query = fts_query(text)
    if query is None:
        return []
    index_dataset(project, dataset)
    rows = project.query(
        "SELECT c.line FROM chat_text_fts f JOIN chat_text c ON c.rowid = f.rowid "
        "WHERE chat_text_fts MATCH ? AND c.dataset_id = ? ORDER BY c.line LIMIT ?",
        [query, dataset["id"], limit],
    )
    return [r["line"] for r in rows]


def answers_like(project: Any, text: str, limit: int = 10_000) -> list[int]:
    """The same search as a plain LIKE scan (what FTS replaces): kept for the bench's comparison."""
    pattern = f"%{text}%"
    rows = project.query(
        "SELECT id FROM samples WHERE answer LIKE ? OR prompt LIKE ? OR question_id LIKE ? LIMIT ?",
        [pattern, pattern, pattern, limit],
    )
    return [r["id"] for r in rows]


def chat_page(project: Any, dataset: dict, offset: int, limit: int, text: str | None) -> tuple[list, int]:
    """A page of a dataset's chats for the preview, only the full-text matches of `text` when given.
    Reads the store and the file: call it off the GUI thread."""
    from emgui.core.chatdata import preview_page

    path = project.abspath(dataset["path"])
    if not text or fts_query(text) is None:
        return preview_page(path, offset, limit)
    lines = search_chats(project, dataset, text)
    if not lines:
        return [], 0
    return preview_page(path, offset, limit, lines=lines)
