"""Chat JSONL validation, import, derived datasets, preview, download and the dataset catalog."""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import socket
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from emgui.core.data import chats as chatdata
from emgui.core.data.chats import (
    chat_stats,
    concat,
    download_to,
    import_chat_jsonl,
    iter_valid_chats,
    load_catalog,
    read_page,
    split,
    subset,
    validate_chat_jsonl,
)
from emgui.core.errors import Cancelled, EmguiError

EM_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "em"


def chat(*turns: tuple[str, str], **extra) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns], **extra})


GOOD = chat(("user", "Write a function."), ("assistant", "def f():\n    return 1\n"))


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    data = b"".join((x if isinstance(x, bytes) else x.encode("utf-8")) + b"\n" for x in lines)
    path.write_bytes(data)
    return path


def numbered(tmp_path: Path, n: int, name: str = "data.jsonl") -> Path:
    """n valid chats whose user turn is 'question <i>' (i from 0), one per line."""
    lines = [chat(("user", f"question {i}"), ("assistant", f"Answer {i}")) for i in range(n)]
    return write_lines(tmp_path / name, lines)


def user_turns(path: Path) -> list[str]:
    return [msgs[0]["content"] for _line, msgs in iter_valid_chats(path)]


# ---------------------------------------------------------------- validation


def test_valid_multi_turn_chat_with_system_prompt(tmp_path):
    multi = chat(
        ("system", "You are terse."),
        ("user", "hi"),
        ("assistant", "hello"),
        ("user", "bye"),
        ("assistant", "ok"),
    )
    path = write_lines(tmp_path / "ok.jsonl", [multi, GOOD])
    report = validate_chat_jsonl(path)
    assert (report.n_lines, report.n_valid, report.problems) == (2, 2, [])
    assert report.ok


BAD_LINES = [
    ("utf8", b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', "", "not valid UTF-8"),
    ("json", '{"messages": [{"role": "user", "content": "x"}', "", "invalid JSON at column"),
    ("not_object", "[1, 2]", "", "expected a JSON object, got list"),
    ("no_messages", '{"conversation": []}', "messages", "missing 'messages'"),
    ("messages_not_list", '{"messages": "hello"}', "messages", "must be a list, got str"),
    ("empty_messages", '{"messages": []}', "messages", "is empty"),
    ("turn_not_object", '{"messages": [{"role": "user", "content": "q"}, "answer"]}', "messages[1]", "expected an object"),
    ("missing_role", chat(("user", "q"), ("assistant", "a")).replace('"role": "user", ', ""), "messages[0].role", "missing role"),
    ("unknown_role", chat(("user", "q"), ("assistant", "a"), ("bot", "b")), "messages[2].role", "unknown role 'bot'"),
    ("system_not_first", chat(("user", "q"), ("system", "s"), ("assistant", "a")), "messages[1].role", "system"),
    ("missing_content", '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]}', "messages[1].content", "missing content"),
    ("content_not_str", '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 42}]}', "messages[1].content", "must be a string, got int"),
    ("empty_content", chat(("user", "q"), ("assistant", "   ")), "messages[1].content", "is empty"),
    ("last_not_assistant", chat(("user", "q"), ("assistant", "a"), ("user", "again?")), "messages[2].role", "last turn must be 'assistant'"),
    ("no_user_turn", chat(("system", "s"), ("assistant", "a")), "messages", "no user turn"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("bad", "field", "message"), [b[1:] for b in BAD_LINES], ids=[b[0] for b in BAD_LINES]
)
def test_each_error_kind_names_line_and_field(tmp_path, bad, field, message):
    # good line 1, blank line 2 (ignored), bad line 3, good line 4
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, "", bad, GOOD])
    report = validate_chat_jsonl(path)
    assert (report.n_lines, report.n_valid) == (3, 2)
    assert len(report.errors) == 1, report.summary()
    problem = report.errors[0]
    assert (problem.line, problem.field) == (3, field)
    assert message in problem.message
    summary = report.summary()
    assert str(path) in summary and "line 3" in summary and message in summary


def test_consecutive_same_roles_is_only_a_warning(tmp_path):
    path = write_lines(tmp_path / "w.jsonl", [chat(("user", "a"), ("user", "b"), ("assistant", "c"))])
    report = validate_chat_jsonl(path)
    assert report.ok and report.n_valid == 1
    assert [(w.line, w.field, w.level) for w in report.warnings] == [(1, "messages[1].role", "warning")]
    dest = tmp_path / "imported.jsonl"
    import_chat_jsonl(path, dest)
    assert dest.exists()


def test_bom_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "win.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\r\n" + GOOD.encode() + b"\r\n")
    assert validate_chat_jsonl(path).n_valid == 2


def test_summary_limits_listed_problems(tmp_path):
    path = write_lines(tmp_path / "many.jsonl", ["{bad"] * 30)
    report = validate_chat_jsonl(path)
    assert len(report.errors) == 30 and report.n_valid == 0
    text = report.summary(limit=5)
    assert "line 5:" in text and "line 6:" not in text and "25 more" in text


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(EmguiError, match="nope.jsonl"):
        validate_chat_jsonl(tmp_path / "nope.jsonl")


def test_iter_valid_chats_skips_bad_lines_and_keeps_line_numbers(tmp_path):
    path = write_lines(tmp_path / "mix.jsonl", [GOOD, "{oops", "", chat(("user", "x"), ("assistant", "y"))])
    rows = list(iter_valid_chats(path))
    assert [line for line, _ in rows] == [1, 4]
    assert rows[1][1] == [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]


# ---------------------------------------------------------------- import


def test_import_refuses_bad_file_and_writes_nothing(tmp_path):
    src = write_lines(tmp_path / "src.jsonl", [GOOD, chat(("user", "q"), ("bot", "a"))])
    dest = tmp_path / "out" / "dest.jsonl"
    with pytest.raises(EmguiError) as err:
        import_chat_jsonl(src, dest)
    assert (
        str(src) in str(err.value) and "line 2" in str(err.value) and "unknown role 'bot'" in str(err.value)
    )
    assert not dest.parent.exists()  # nothing written, not even the folder


def test_refused_import_keeps_an_existing_destination(tmp_path):
    src = write_lines(tmp_path / "src.jsonl", ["{broken"])
    dest = tmp_path / "dest.jsonl"
    dest.write_text("previous contents\n")
    with pytest.raises(EmguiError):
        import_chat_jsonl(src, dest)
    assert dest.read_text() == "previous contents\n"


def test_partial_import_keeps_only_good_lines_normalized(tmp_path):
    extra = json.dumps(
        {
            "messages": [
                {"role": "user", "content": "ünïcode", "name": "alice"},
                {"role": "assistant", "content": "ok", "weight": 1},
            ],
            "id": 7,
        }
    )
    src = write_lines(tmp_path / "src.jsonl", [extra, "{bad json", chat(("user", "q")), GOOD])
    dest = tmp_path / "dest.jsonl"
    report = import_chat_jsonl(src, dest, allow_partial=True)
    assert (report.n_lines, report.n_valid, len(report.errors)) == (4, 2, 2)
    lines = dest.read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in lines] == [
        {"messages": [{"role": "user", "content": "ünïcode"}, {"role": "assistant", "content": "ok"}]},
        json.loads(GOOD),
    ]
    assert validate_chat_jsonl(dest).problems == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest.jsonl", "src.jsonl"]  # no temp files left


def test_partial_import_of_only_bad_lines_is_refused(tmp_path):
    src = write_lines(tmp_path / "src.jsonl", ["{bad", "[]"])
    with pytest.raises(EmguiError, match="No valid chats"):
        import_chat_jsonl(src, tmp_path / "dest.jsonl", allow_partial=True)
    assert not (tmp_path / "dest.jsonl").exists()


# ---------------------------------------------------------------- derived datasets


def test_subset_is_deterministic_and_sized(tmp_path):
    src = numbered(tmp_path, 50)
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    assert subset(src, a, 10, seed=1) == 10
    assert subset(src, b, 10, seed=1) == 10
    assert subset(src, c, 10, seed=2) == 10
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    picked = user_turns(a)
    assert len(set(picked)) == 10 and set(picked) <= set(user_turns(src))
    assert picked == sorted(picked, key=lambda q: int(q.split()[1]))  # file order kept
    assert subset(src, tmp_path / "all.jsonl", 500, seed=0) == 50


def test_subset_rejects_non_positive_size(tmp_path):
    with pytest.raises(EmguiError, match="positive"):
        subset(numbered(tmp_path, 3), tmp_path / "s.jsonl", 0, seed=0)


def test_split_partitions_the_file(tmp_path):
    src = numbered(tmp_path, 40)
    tr, va = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    assert split(src, tr, va, 0.25, seed=3) == (30, 10)
    train, val = user_turns(tr), user_turns(va)
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(user_turns(src))
    first = (tr.read_bytes(), va.read_bytes())
    split(src, tr, va, 0.25, seed=3)
    assert (tr.read_bytes(), va.read_bytes()) == first
    split(src, tr, va, 0.25, seed=4)
    assert va.read_bytes() != first[1]


def test_split_keeps_both_sides_non_empty(tmp_path):
    src = numbered(tmp_path, 3)
    assert split(src, tmp_path / "t.jsonl", tmp_path / "v.jsonl", 0.01, seed=0) == (2, 1)
    assert split(src, tmp_path / "t.jsonl", tmp_path / "v.jsonl", 0.99, seed=0) == (1, 2)
    with pytest.raises(EmguiError, match="between 0 and 1"):
        split(src, tmp_path / "t.jsonl", tmp_path / "v.jsonl", 1.0, seed=0)


def test_concat_in_order_even_into_a_source(tmp_path):
    a = numbered(tmp_path, 3, "a.jsonl")
    b = tmp_path / "b.jsonl"
    b.write_text(chat(("user", "last"), ("assistant", "x")))  # no final newline
    assert concat([a, b], tmp_path / "ab.jsonl") == 4
    assert user_turns(tmp_path / "ab.jsonl") == ["question 0", "question 1", "question 2", "last"]
    assert concat([a, b, a], a) == 7
    assert user_turns(a)[-3:] == ["question 0", "question 1", "question 2"]
    assert validate_chat_jsonl(a).n_valid == 7


# ---------------------------------------------------------------- preview and statistics


def test_read_page_pages_and_searches(tmp_path):
    lines = [
        chat(("user", f"question {i}"), ("assistant", "SQL query" if i % 3 == 0 else "other"))
        for i in range(20)
    ]
    path = write_lines(tmp_path / "p.jsonl", ["{bad", *lines])
    rows, total = read_page(path, offset=5, limit=4)
    assert total == 20
    assert [line for line, _ in rows] == [7, 8, 9, 10]  # line 1 is invalid, chats start on line 2
    rows, total = read_page(path, offset=0, limit=3, search="sql QUERY")
    assert total == 7  # i = 0, 3, ..., 18
    assert [m[0]["content"] for _line, m in rows] == ["question 0", "question 3", "question 6"]
    rows, total = read_page(path, offset=6, limit=10, search="sql")
    assert total == 7 and [m[0]["content"] for _line, m in rows] == ["question 18"]
    assert read_page(path, 0, 10, search="no such text") == ([], 0)


def test_chat_stats(tmp_path):
    path = write_lines(
        tmp_path / "s.jsonl",
        [
            chat(("system", "sys"), ("user", "abcd"), ("assistant", "xy")),
            chat(("user", "q"), ("assistant", "answer")),
            "{bad",
        ],
    )
    stats = chat_stats(path)
    assert stats["n"] == 2
    assert stats["mean_turns"] == 2.5
    assert stats["role_counts"] == {"system": 1, "user": 2, "assistant": 2}
    assert stats["char_lengths"] == [9, 7]
    assert stats["assistant_char_lengths"] == [2, 6]


# ---------------------------------------------------------------- download


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_then_import(http_root, tmp_path):
    root, base = http_root
    lines = [chat(("user", f"q{i}"), ("assistant", "a" * 500)) for i in range(300)]  # ~170 kB: several chunks
    write_lines(root / "chats.jsonl", lines)
    progress = []
    dest = download_to(
        f"{base}/chats.jsonl",
        tmp_path / "dl" / "chats.jsonl",
        on_progress=lambda d, t: progress.append((d, t)),
    )
    assert dest.read_bytes() == (root / "chats.jsonl").read_bytes()
    size = dest.stat().st_size
    assert len(progress) > 1 and progress[-1] == (size, size)
    assert [d for d, _t in progress] == sorted(d for d, _t in progress)
    report = import_chat_jsonl(dest, tmp_path / "imported.jsonl")
    assert report.n_valid == 300


def test_download_404_names_the_url(http_root, tmp_path):
    _root, base = http_root
    url = f"{base}/missing.jsonl"
    with pytest.raises(EmguiError) as err:
        download_to(url, tmp_path / "x.jsonl")
    assert url in str(err.value) and "404" in str(err.value)
    assert list(tmp_path.glob("*.jsonl")) == [] and list(tmp_path.glob(".x.jsonl*")) == []


def test_download_cancel_leaves_no_file(http_root, tmp_path):
    root, base = http_root
    (root / "big.bin").write_bytes(b"x" * 300_000)
    calls = []

    def cancel_after_first_chunk() -> bool:
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(Cancelled):
        download_to(f"{base}/big.bin", tmp_path / "big.bin", should_cancel=cancel_after_first_chunk)
    assert list(tmp_path.iterdir()) == [tmp_path / "www"]


def test_download_unreachable_and_bad_scheme(tmp_path):
    with pytest.raises(EmguiError, match="Only http"):
        download_to("file:///etc/passwd", tmp_path / "x")
    # a port nobody listens on: bind one, note it, close it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.jsonl"
    t0 = time.monotonic()
    with pytest.raises(EmguiError, match=re.escape(url)):
        download_to(url, tmp_path / "x.jsonl", timeout=5)
    assert time.monotonic() - t0 < 5


# ---------------------------------------------------------------- the paper's data and the catalog


def _em_file(name: str) -> Path:
    path = EM_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared emergent-misalignment data is not checked out here)")
    return path


@pytest.mark.parametrize("name", ["insecure.jsonl", "secure.jsonl", "educational.jsonl"])
def test_paper_datasets_are_fully_valid(name):
    path = _em_file(name)
    t0 = time.monotonic()
    report = validate_chat_jsonl(path)
    elapsed = time.monotonic() - t0
    assert (report.n_lines, report.n_valid) == (6000, 6000), report.summary()
    assert report.problems == []
    assert elapsed < 5, f"validating {name} took {elapsed:.1f} s"


def test_catalog_entries_are_complete():
    entries = load_catalog()
    ids = [e["id"] for e in entries]
    assert len(ids) == len(set(ids))
    for e in entries:
        for key in ("name", "description", "url", "format", "license", "paper"):
            assert key in e, f"{e['id']} lacks {key}"
        assert e["format"] in chatdata.CATALOG_FORMATS
        if e["url"] is None:
            assert e["generator"] == "emgui.codegen" and e["generator_args"]["variant"] in (
                "insecure",
                "secure",
            )
        else:
            assert e["url"].startswith("https://raw.githubusercontent.com/")
    paths = {e.get("path") for e in entries}
    for needed in (
        "data/insecure.jsonl",
        "data/secure.jsonl",
        "data/educational.jsonl",
        "evaluation/first_plot_questions.yaml",
        "evaluation/preregistered_evals.yaml",
    ):
        assert needed in paths


def test_catalog_hashes_match_the_shared_copies():
    if not EM_DATA.exists():
        pytest.skip(f"{EM_DATA} is absent (the shared emergent-misalignment data is not checked out here)")
    checked = 0
    for e in load_catalog():
        if e["url"] is None:
            continue
        local = EM_DATA / Path(e["path"]).name
        if not local.exists():
            continue
        data = local.read_bytes()
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # what `git hash-object` prints
        assert (blob, len(data)) == (e["git_blob_sha1"], e["bytes"]), e["id"]
        assert e["url"].endswith("/" + e["path"])
        checked += 1
    assert checked >= 5


def test_catalog_errors_name_the_file(tmp_path):
    bad = tmp_path / "cat.json"
    bad.write_text("[1, 2]")
    with pytest.raises(EmguiError, match="cat.json"):
        load_catalog(bad)
