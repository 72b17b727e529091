"""Chat datasets in the OpenAI `messages` JSONL format: validation, import, derived sets, preview.

One chat per line: `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`.
An optional system turn comes first, turns may repeat, and the last turn is the assistant's (that is
what fine-tuning learns). Every function streams its file, so the paper's 6,000-line sets stay cheap.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import secrets
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from emgui.core.errors import Cancelled, EmguiError

ROLES = ("system", "user", "assistant")
CATALOG_FORMATS = ("chat-jsonl", "questions-yaml")
_CHUNK = 1 << 16
# One chat per line: a longer line is refused (naming it) instead of read whole, so a file without
# newlines cannot take all memory. 16 MiB is far beyond any real chat.
MAX_LINE_BYTES = 16 << 20
# A report keeps the first problems (with their lines) and only counts the rest: memory stays bounded
# for a file with millions of bad lines.
MAX_KEPT_PROBLEMS = 1000
# The preview shows at most this many characters of a message at a time (laying out text in Qt costs
# roughly the square of a paragraph's length); longer messages are read in pieces of this size.
PREVIEW_CHARS = 4000


# ---------------------------------------------------------------- work in a helper process
# Parsing or re-serialising one 10 MB chat is a single C call that holds the GIL for 30-60 ms, and a GUI
# thread waiting for the GIL is a frozen window. The app therefore sends the parsing of whole files
# (import, preview pages, pieces of long messages) to a helper process; the CLI runs them in-process.
_offload = False
_executor: Any = None
_executor_lock = threading.Lock()


def parse_in_helper_process(enabled: bool = True) -> None:
    """Run whole-file parsing in a helper process from now on (the GUI app turns this on)."""
    global _offload
    _offload = enabled


def _helper() -> Any:
    global _executor
    with _executor_lock:
        if _executor is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            _executor = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
            atexit.register(_executor.shutdown, wait=False, cancel_futures=True)
        return _executor


def _run(func: Callable[..., Any], *args: Any) -> Any:
    """func(*args), in the helper process when parsing is offloaded; exceptions come back as they were."""
    if not _offload:
        return func(*args)
    from concurrent.futures.process import BrokenProcessPool

    global _executor
    try:
        return _helper().submit(func, *args).result()
    except BrokenProcessPool as exc:
        with _executor_lock:
            _executor = None  # start a fresh helper next time
        raise EmguiError(f"the helper process reading chat files ended unexpectedly ({exc})") from None


@dataclass
class Problem:
    line: int
    field: str
    message: str
    level: str = "error"  # "warning" problems do not make a line invalid

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", {self.field}" if self.field else "")
        tag = " (warning)" if self.level == "warning" else ""
        return f"{where}: {self.message}{tag}"


@dataclass
class ValidationReport:
    """What validating a file found. `problems` keeps the first MAX_KEPT_PROBLEMS; the counts cover all."""

    path: str
    n_lines: int = 0  # non-blank lines
    n_valid: int = 0
    problems: list[Problem] = field(default_factory=list)
    n_errors: int = 0
    n_warnings: int = 0

    def add(self, problems: list[Problem]) -> None:
        for problem in problems:
            if problem.level == "error":
                self.n_errors += 1
            else:
                self.n_warnings += 1
            if len(self.problems) < MAX_KEPT_PROBLEMS:
                self.problems.append(problem)

    @property
    def n_invalid(self) -> int:
        return self.n_lines - self.n_valid

    @property
    def n_problems(self) -> int:
        return self.n_errors + self.n_warnings

    @property
    def errors(self) -> list[Problem]:
        """The kept error-level problems (see `n_errors` for how many there were)."""
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    @property
    def ok(self) -> bool:
        return self.n_errors == 0

    def summary(self, limit: int = 20) -> str:
        head = f"{self.path}: {self.n_lines} chats, {self.n_valid} valid"
        if self.n_invalid:
            head += f", {self.n_invalid} invalid"
        if self.n_warnings:
            head += f", {self.n_warnings} warnings"
        if self.n_lines == 0:
            head += " (the file holds no chats)"
        shown = [f"  {p}" for p in self.problems[:limit]]
        if self.n_problems > limit:
            shown.append(f"  ... and {self.n_problems - min(limit, len(self.problems))} more problems")
        return "\n".join([head, *shown])


# ---------------------------------------------------------------- validation


def _check_chat(obj: Any, line: int) -> tuple[list[dict] | None, list[Problem]]:
    """Check one parsed line; return its normalized messages (None when invalid) and its problems."""
    if not isinstance(obj, dict):
        return None, [Problem(line, "", f"expected a JSON object, got {type(obj).__name__}")]
    if "messages" not in obj:
        return None, [Problem(line, "messages", "missing 'messages'")]
    msgs = obj["messages"]
    if not isinstance(msgs, list):
        return None, [Problem(line, "messages", f"must be a list, got {type(msgs).__name__}")]
    if not msgs:
        return None, [Problem(line, "messages", "is empty")]
    problems: list[Problem] = []
    normalized: list[dict] = []
    for i, msg in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            problems.append(Problem(line, where, f"expected an object, got {type(msg).__name__}"))
            continue
        role, content = msg.get("role"), msg.get("content")
        if "role" not in msg:
            problems.append(Problem(line, f"{where}.role", "missing role"))
        elif role not in ROLES:
            problems.append(
                Problem(line, f"{where}.role", f"unknown role {role!r} (use system, user or assistant)")
            )
        elif role == "system" and i > 0:
            problems.append(Problem(line, f"{where}.role", "a system message may only come first"))
        if "content" not in msg or content is None:
            problems.append(Problem(line, f"{where}.content", "missing content"))
        elif not isinstance(content, str):
            problems.append(
                Problem(line, f"{where}.content", f"must be a string, got {type(content).__name__}")
            )
        elif not content or content.isspace():  # (not .strip(): that copies a long message)
            problems.append(Problem(line, f"{where}.content", "is empty"))
        normalized.append({"role": role, "content": content})
    # Turn order only means something once every message is an object with a known role.
    if len(normalized) == len(msgs) and not any(p.field.endswith(".role") for p in problems):
        problems += _check_turn_order(normalized, line)
    if any(p.level == "error" for p in problems):
        return None, problems
    return normalized, problems


def _check_turn_order(msgs: list[dict], line: int) -> list[Problem]:
    problems = []
    last = msgs[-1]["role"]
    if last != "assistant":
        problems.append(
            Problem(line, f"messages[{len(msgs) - 1}].role", f"last turn must be 'assistant', not {last!r}")
        )
    if not any(m["role"] == "user" for m in msgs):
        problems.append(Problem(line, "messages", "has no user turn"))
    for i in range(1, len(msgs)):
        if msgs[i]["role"] == msgs[i - 1]["role"]:
            problems.append(
                Problem(line, f"messages[{i}].role", f"two {msgs[i]['role']!r} turns in a row", "warning")
            )
    return problems


def _parse_line(raw: bytes, line: int) -> tuple[list[dict] | None, list[Problem]]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, [
            Problem(line, "", f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
        ]
    if line == 1:
        text = text.removeprefix("\ufeff")  # a BOM from some editors is harmless
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return None, [Problem(line, "", f"invalid JSON at column {e.colno}: {e.msg}")]
    except RecursionError:
        return None, [Problem(line, "", "invalid JSON: nested too deeply")]
    return _check_chat(obj, line)


def _open_source(path: str | Path) -> IO[bytes]:
    p = Path(path)
    if not p.exists():
        raise EmguiError(f"Dataset file not found: {p}")
    if not p.is_file():
        raise EmguiError(f"Not a file: {p}")
    return p.open("rb")


def _capped_lines(f: IO[bytes], cap: int) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, raw line or None when longer than cap bytes, its length) for every line, reading at
    most cap + 1 bytes at a time: an overlong line is skipped in chunks, never held whole."""
    line = 0
    while raw := f.readline(cap + 1):
        line += 1
        if len(raw) <= cap or raw.endswith(b"\n"):
            yield line, raw, len(raw)
            continue
        size = len(raw)
        while not raw.endswith(b"\n"):
            raw = f.readline(_CHUNK * 16)
            if not raw:
                break
            size += len(raw)
        yield line, None, size


def _too_long(line: int, size: int) -> Problem:
    return Problem(
        line,
        "",
        f"line is {size / 2**20:.1f} MiB long, over the {MAX_LINE_BYTES >> 20} MiB limit for one chat "
        "(is the file JSON lines, one chat per line?)",
    )


def _scan(path: str | Path) -> Iterator[tuple[int, list[dict] | None, list[Problem]]]:
    """Yield (line number, normalized messages or None, problems) for every non-blank line."""
    with _open_source(path) as f:
        for line, raw, size in _capped_lines(f, MAX_LINE_BYTES):
            if raw is None:
                yield line, None, [_too_long(line, size)]
                continue
            if not raw.strip():
                continue
            msgs, problems = _parse_line(raw.rstrip(b"\r\n"), line)
            yield line, msgs, problems


def validate_chat_jsonl(path: str | Path) -> ValidationReport:
    """Check every line of a chat JSONL file and report each problem with its line and field (the first
    MAX_KEPT_PROBLEMS of them, and how many there were)."""
    report = ValidationReport(str(path))
    for _line, msgs, problems in _scan(path):
        report.n_lines += 1
        report.n_valid += msgs is not None
        report.add(problems)
    return report


def iter_valid_chats(path: str | Path) -> Iterator[tuple[int, list[dict]]]:
    """(line number, messages with only role/content keys) for the valid lines only."""
    for line, msgs, _problems in _scan(path):
        if msgs is not None:
            yield line, msgs


# ---------------------------------------------------------------- writing


def _new_temp_file(folder: Path, name: str) -> tuple[int, Path]:
    """A new file beside its destination, named with this process's id (so a project can remove it
    once this process is gone, see `Project.remove_abandoned_temp_files`) and created with the usual
    permissions (mkstemp's are owner-only)."""
    while True:
        tmp = folder / f".tmp-{os.getpid()}-{secrets.token_hex(6)}-{name}"
        try:
            return os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


@contextmanager
def _atomic_writer(dest: str | Path, mode: str = "w") -> Iterator[IO]:
    """Write to a temporary file next to dest and move it into place only on success."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_temp_file(dest.parent, dest.name)
    try:
        kwargs = {"encoding": "utf-8", "newline": "\n"} if "b" not in mode else {}
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _chat_line(msgs: list[dict]) -> str:
    return json.dumps({"messages": msgs}, ensure_ascii=False) + "\n"


def write_chats(dest: str | Path, chats: Iterable[list[dict]]) -> int:
    """Write message lists as chat JSONL atomically; return how many were written."""
    n = 0
    with _atomic_writer(dest) as f:
        for msgs in chats:
            f.write(_chat_line(msgs))
            n += 1
    return n


def import_chat_jsonl(src: str | Path, dest: str | Path, *, allow_partial: bool = False) -> ValidationReport:
    """Validate src and copy its valid chats, normalized, to dest.

    Any error-level problem refuses the import (nothing is written) unless allow_partial is set, in
    which case only the valid lines are kept. Warnings never block an import.
    """
    return _run(_import_chat_jsonl, str(src), str(dest), allow_partial)


def _import_chat_jsonl(src: str, dest: str, allow_partial: bool) -> ValidationReport:
    report = validate_chat_jsonl(src)
    if not report.ok and not allow_partial:
        raise EmguiError(f"Refused to import {src}:\n{report.summary()}")
    if report.n_valid == 0:
        raise EmguiError(f"No valid chats in {src}:\n{report.summary()}")
    write_chats(dest, (msgs for _line, msgs in iter_valid_chats(src)))
    return report


# ---------------------------------------------------------------- download


def download_to(
    url: str,
    dest: Path,
    *,
    on_progress: Callable[[int, int | None], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    timeout: float = 30,
) -> Path:
    """Stream url into dest atomically. on_progress(bytes_done, bytes_total_or_None) after each chunk."""
    if not url.lower().startswith(("http://", "https://")):
        raise EmguiError(f"Only http:// and https:// URLs can be downloaded, not {url!r}")
    dest = Path(dest)
    request = urllib.request.Request(url, headers={"User-Agent": "emgui"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp, _atomic_writer(dest, "wb") as out:
            _copy_stream(url, resp, out, on_progress, should_cancel)
    except urllib.error.HTTPError as e:
        raise EmguiError(f"Download of {url} failed: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise EmguiError(f"Could not reach {url}: {e.reason}") from e
    except (TimeoutError, ConnectionError) as e:
        raise EmguiError(f"Download of {url} failed: {e}") from e
    return dest


def _copy_stream(url: str, resp: Any, out: IO[bytes], on_progress, should_cancel) -> None:
    length = resp.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    done = 0
    while True:
        if should_cancel is not None and should_cancel():
            raise Cancelled(f"Download of {url} cancelled")
        chunk = resp.read(_CHUNK)
        if not chunk:
            break
        out.write(chunk)
        done += len(chunk)
        if on_progress is not None:
            on_progress(done, total)
    if total is not None and done != total:
        raise EmguiError(f"Download of {url} ended early: got {done} of {total} bytes")


# ---------------------------------------------------------------- derived datasets


def _nonblank_lines(path: str | Path) -> Iterator[str]:
    with _open_source(path) as f:
        for line, raw, size in _capped_lines(f, MAX_LINE_BYTES):
            if raw is None:
                raise EmguiError(f"{path}, {_too_long(line, size)}")
            if raw.strip():
                yield raw.decode("utf-8", errors="replace").rstrip("\r\n") + "\n"


def _count_lines(path: str | Path) -> int:
    return sum(1 for _ in _nonblank_lines(path))


def _write_selected(src: str | Path, chosen: Iterable[int], dest: str | Path) -> int:
    keep = set(chosen)
    n = 0
    with _atomic_writer(dest) as f:
        for i, text in enumerate(_nonblank_lines(src)):
            if i in keep:
                f.write(text)
                n += 1
    return n


def subset(src: str | Path, dest: str | Path, n: int, seed: int) -> int:
    """Write a random subset of n chats (file order kept); n larger than the file keeps everything."""
    if n <= 0:
        raise EmguiError(f"Subset size must be positive, got {n}")
    total = _count_lines(src)
    chosen = random.Random(seed).sample(range(total), min(n, total))
    return _write_selected(src, chosen, dest)


def split(
    src: str | Path, train_dest: str | Path, val_dest: str | Path, val_fraction: float, seed: int
) -> tuple[int, int]:
    """Randomly split src into train and validation files; return (n_train, n_val)."""
    if not 0 < val_fraction < 1:
        raise EmguiError(f"Validation fraction must be between 0 and 1, got {val_fraction}")
    total = _count_lines(src)
    if total < 2:
        raise EmguiError(f"{src} has {total} chats; a split needs at least 2")
    n_val = min(max(1, round(total * val_fraction)), total - 1)
    val = set(random.Random(seed).sample(range(total), n_val))
    n_val = _write_selected(src, val, val_dest)
    n_train = _write_selected(src, (i for i in range(total) if i not in val), train_dest)
    return n_train, n_val


def concat(srcs: list[str | Path], dest: str | Path) -> int:
    """Concatenate chat files in order into dest (which may be one of the sources)."""
    if not srcs:
        raise EmguiError("Nothing to concatenate: no source files given")
    n = 0
    with _atomic_writer(dest) as f:
        for src in srcs:
            for text in _nonblank_lines(src):
                f.write(text)
                n += 1
    return n


# ---------------------------------------------------------------- preview and statistics


def _contains(text: str, needle: str, chunk: int = 1 << 20) -> bool:
    """Case-insensitive search in bounded steps: casefolding a 10 MB message at once holds the GIL."""
    if len(text) <= chunk:
        return needle in text.casefold()
    overlap = len(needle)
    return any(needle in text[i : i + chunk + overlap].casefold() for i in range(0, len(text), chunk))


def _matches(msgs: list[dict], needle: str) -> bool:
    return any(_contains(m["content"], needle) for m in msgs)


def read_page(
    path: str | Path, offset: int, limit: int, search: str | None = None, lines: Collection[int] | None = None
) -> tuple[list[tuple[int, list[dict]]], int]:
    """One page of valid chats, optionally only those whose text contains search (any case), or only
    those on the given lines (the matches of a full-text search).

    Returns (rows, total_matching); rows are (line number, messages).
    """
    needle = search.casefold() if search else None
    wanted = set(lines) if lines is not None else None
    rows: list[tuple[int, list[dict]]] = []
    total = 0
    for line, msgs in iter_valid_chats(path):
        if needle is not None and not _matches(msgs, needle):
            continue
        if wanted is not None and line not in wanted:
            continue
        if offset <= total < offset + limit:
            rows.append((line, msgs))
        total += 1
    return rows, total


def preview_page(
    path: str | Path,
    offset: int,
    limit: int,
    search: str | None = None,
    clip: int = PREVIEW_CHARS,
    lines: Collection[int] | None = None,
) -> tuple[list[tuple[int, list[dict]]], int]:
    """`read_page` for showing: each message's content is cut to its first `clip` characters and
    carries its full `length`, so a page costs the same whatever its chats hold. Parsed in the helper
    process when parsing is offloaded."""
    return _run(_preview_page, str(path), offset, limit, search, clip, None if lines is None else sorted(lines))


def _preview_page(
    path: str, offset: int, limit: int, search: str | None, clip: int, lines: list[int] | None = None
) -> tuple[list, int]:
    rows, total = read_page(path, offset, limit, search, lines)
    clipped = [
        (line, [{"role": m["role"], "content": m["content"][:clip], "length": len(m["content"])} for m in msgs])
        for line, msgs in rows
    ]
    return clipped, total


def message_piece(path: str | Path, line: int, index: int, start: int, size: int = PREVIEW_CHARS) -> dict:
    """Characters [start, start + size) of message `index` of the chat on `line`, with the message's role
    and full length: how the preview reads a long message piece by piece."""
    return _run(_message_piece, str(path), line, index, max(0, start), max(1, size))


def _message_piece(path: str, line: int, index: int, start: int, size: int) -> dict:
    with _open_source(path) as f:
        for number, raw, size_bytes in _capped_lines(f, MAX_LINE_BYTES):
            if number != line:
                continue
            if raw is None:
                raise EmguiError(f"{path}, {_too_long(line, size_bytes)}")
            msgs, problems = _parse_line(raw.rstrip(b"\r\n"), line)
            if msgs is None:
                raise EmguiError(f"{path}, line {line} is not a valid chat: {problems[0].message}")
            if not 0 <= index < len(msgs):
                raise EmguiError(f"{path}, line {line} has no message {index}")
            content = msgs[index]["content"]
            return {"role": msgs[index]["role"], "content": content[start : start + size], "start": start,
                    "length": len(content)}  # fmt: skip
    raise EmguiError(f"{path} has no line {line}")


def chat_stats(path: str | Path) -> dict:
    """Counts for the dataset page: chats, mean turns, role counts and per-chat character lengths."""
    roles = dict.fromkeys(ROLES, 0)
    lengths: list[int] = []
    assistant_lengths: list[int] = []
    turns = 0
    for _line, msgs in iter_valid_chats(path):
        turns += len(msgs)
        for m in msgs:
            roles[m["role"]] += 1
        lengths.append(sum(len(m["content"]) for m in msgs))
        assistant_lengths.append(sum(len(m["content"]) for m in msgs if m["role"] == "assistant"))
    n = len(lengths)
    return {
        "n": n,
        "mean_turns": turns / n if n else 0.0,
        "role_counts": roles,
        "char_lengths": lengths,
        "assistant_char_lengths": assistant_lengths,
    }


# ---------------------------------------------------------------- catalog


def load_catalog(path: str | Path | None = None) -> list[dict]:
    """The known public datasets (resources/catalog/datasets.json)."""
    if path is None:
        from emgui.core.paths import resource

        path = resource("catalog", "datasets.json")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise EmguiError(f"Cannot read dataset catalog {path}: {e}") from e
    entries = data.get("datasets") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise EmguiError(f"Dataset catalog {path}: expected an object with a 'datasets' list")
    return entries
