"""The project store: one folder with `project.db` (SQLite, WAL) and `artifacts/`.

The store is the single source of truth. Every thread gets its own SQLite connection; writes from the
threads of one process are serialized by a lock, and writes from other processes (a CLI job beside the
app) wait on SQLite's busy timeout. Rows come back as plain dicts with JSON columns decoded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from emgui.core.errors import EmguiError
from emgui.core.schema import LATEST_VERSION, migrate

DB_NAME = "project.db"
ARTIFACTS = "artifacts"
_JSON_COLUMNS = {"params", "result", "info", "inputs", "checkpoint", "meta", "raw", "data", "spec"}
_FINISHED = ("succeeded", "failed", "cancelled", "interrupted")
# Tables whose rows point at files or folders (their `path` column): what a delete must not take from another row.
_PATH_TABLES = ("models", "datasets", "saes", "directions")
# Work in progress inside artifacts/ is written under a name that carries the writer's process id, so that
# opening a project can remove what a killed process left behind without touching another live process's work.
TEMP_PREFIX = ".tmp-"
_TEMP_NAME = re.compile(r"^\.tmp-(\d+)-")
_LEGACY_TEMP_AGE_S = 3600.0  # temporary names of older versions carry no process id: remove them once stale


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this id still runs (without signalling it, on every OS)."""
    if not pid:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        ctypes.windll.kernel32.CloseHandle(handle)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _can_write(root: Path, db_path: Path) -> bool:
    """Whether this process may write project.db and create files beside it (SQLite's -wal and -shm)."""
    return os.access(db_path, os.W_OK) and os.access(root, os.W_OK | os.X_OK)


def slug(name: str, fallback: str = "item") -> str:
    """A file-name-safe form of a display name. Names that differ only in punctuation slug alike, so a slug
    is never a row's identity on disk by itself: see `Project.reserve_path`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:80] or fallback


def remove_path(path: Path) -> None:
    """Remove a file or a folder tree (a symlink is removed, never followed)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace_reserved(src: Path, reserved: Path) -> None:
    """Move a finished temporary file or folder onto the path `reserve_path` claimed for it."""
    try:
        os.replace(src, reserved)  # POSIX replaces the empty placeholder (file or folder) atomically
    except OSError:
        if reserved.is_dir():  # Windows cannot replace a folder: drop the empty placeholder first
            reserved.rmdir()
        elif reserved.exists():
            reserved.unlink()
        os.replace(src, reserved)


def _decode(row: sqlite3.Row | None) -> dict | None:
    if row is None:
        return None
    out = dict(row)
    for key in _JSON_COLUMNS & out.keys():
        if isinstance(out[key], str):
            out[key] = json.loads(out[key])
    return out


def _encode(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (dict, list)) else value


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tree_size(path: Path) -> int:
    """Bytes under a file or folder, following links (HF cache snapshots link to blobs) once each."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    seen: set[tuple[int, int]] = set()
    total = 0
    for item in path.rglob("*"):
        try:
            st = item.stat()
        except OSError:
            continue
        if item.is_file() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


class Project:
    """An open project. Safe to share between threads; call `close()` when done.

    A project whose folder or project.db cannot be written (a read-only copy, someone else's files) opens
    read-only: everything can be read and shown, and anything that would write raises a clear EmguiError."""

    def __init__(self, root: str | Path, *, _initialise: bool = False):
        self.root = Path(root).resolve()
        self.db_path = self.root / DB_NAME
        if not self.db_path.exists():
            raise EmguiError(
                f"{self.root} is not an emgui project: {DB_NAME} is missing (create one with `emgui new`)"
            )
        if not self.db_path.is_file():
            raise EmguiError(f"{self.db_path} is not a file")
        self.read_only = not _initialise and not _can_write(self.root, self.db_path)
        self._local = threading.local()
        self._write_lock = threading.RLock()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        try:
            self._prepare_database(_initialise)
        except BaseException:
            self.close()
            raise
        if not self.read_only:
            self.artifacts_dir.mkdir(exist_ok=True)
            self.remove_abandoned_temp_files()

    def _prepare_database(self, initialise: bool) -> None:
        """Check that project.db is an emgui database this version understands, then bring it up to date.
        A damaged or foreign file is refused naming it, and a database with no schema is only initialised
        where that cannot hide lost work: never beside existing artifacts."""
        version = n_tables = 0
        if self.db_path.stat().st_size:  # an empty file is checked as it is: opening it in WAL mode writes to it
            try:
                conn = self._conn()
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                n_tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
            except sqlite3.DatabaseError as exc:
                raise self.damaged(exc) from None
        if version < 0:
            raise EmguiError(
                f"{self.db_path} has an invalid schema version ({version}): it was not written by emgui or "
                "has been damaged; restore it from a backup"
            )
        if version == 0 and not initialise:
            size = self.db_path.stat().st_size
            what = "is empty (0 bytes)" if size == 0 else "holds no emgui schema"
            if n_tables:
                raise EmguiError(f"{self.db_path} is an SQLite database but not an emgui project (no schema version)")
            if self._has_artifacts():
                raise EmguiError(
                    f"{self.db_path} {what}, but {self.artifacts_dir} holds files: refusing to start a new, empty "
                    f"project over them. Restore {DB_NAME} from a backup (or move artifacts/ away to start afresh)"
                )
        if version < LATEST_VERSION and self.read_only:
            raise EmguiError(
                f"{self.db_path} is read-only and uses schema version {version}; this emgui needs version "
                f"{LATEST_VERSION}. Open it once from a writable copy to upgrade it"
            )
        if not self.read_only:
            try:
                migrate(self._conn())
            except sqlite3.DatabaseError as exc:
                raise self.damaged(exc) from None

    def damaged(self, exc: BaseException) -> EmguiError:
        """The error for a project.db that SQLite cannot read (truncated, overwritten, not a database)."""
        return EmguiError(
            f"{self.db_path} is damaged or is not an emgui project database ({exc}). "
            "Restore it from a backup; the files under artifacts/ are untouched"
        )

    def _has_artifacts(self) -> bool:
        return self.artifacts_dir.is_dir() and any(self.artifacts_dir.iterdir())

    # ----- lifecycle -------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path) -> Project:
        """A new project in `root`, which must not exist yet or be an empty folder (never a model folder or
        a home directory: deleting a project's rows later must not reach files that were there before)."""
        root = Path(root)
        if (root / DB_NAME).exists():
            raise EmguiError(f"{root} already holds an emgui project ({DB_NAME} exists)")
        if root.exists() and not root.is_dir():
            raise EmguiError(f"{root} exists and is not a folder")
        if root.is_dir() and any(root.iterdir()):
            raise EmguiError(
                f"{root} is not empty and is not an emgui project: choose a new or empty folder for the project"
            )
        root.mkdir(parents=True, exist_ok=True)
        sqlite3.connect(root / DB_NAME).close()
        project = cls(root, _initialise=True)
        project.set_setting("created_at", time.time())
        return project

    @classmethod
    def open(cls, root: str | Path, *, recover: bool = True) -> Project:
        """Open a project; jobs left running by a dead process are marked interrupted."""
        project = cls(root)
        if recover and not project.read_only:
            project.mark_interrupted_jobs()
        return project

    def check_writable(self, what: str = "run jobs") -> None:
        """Raise a clear error when this project was opened read-only."""
        if self.read_only:
            raise EmguiError(
                f"project {self.root} is read-only (its folder or {DB_NAME} cannot be written): "
                f"it can be browsed but not changed, so it cannot {what}. Copy it somewhere writable first"
            )

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.ProgrammingError:
                    pass  # created in another thread that already finished with it
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def artifacts_dir(self) -> Path:
        return self.root / ARTIFACTS

    @property
    def name(self) -> str:
        return self.root.name

    # ----- connections and transactions ------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._read_only_conn() if self.read_only else self._writable_conn()
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def _writable_conn(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
        except BaseException:
            conn.close()
            raise
        return conn

    def _read_only_conn(self) -> sqlite3.Connection:
        """A connection that never writes. SQLite reads a WAL database read-only when it may create the
        -shm file beside it; in a folder it cannot write, the file is opened as immutable instead."""
        uri = "file:" + quote(self.db_path.as_posix(), safe="/:")
        for query in ("?mode=ro", "?mode=ro&immutable=1"):
            conn = sqlite3.connect(uri + query, uri=True, timeout=30, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            try:
                conn.execute("PRAGMA busy_timeout=30000")
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return conn
            except sqlite3.OperationalError:
                conn.close()
                if "immutable" in query:
                    raise
        raise AssertionError("unreachable")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction. BEGIN IMMEDIATE takes the write lock up front, so two writers never
        deadlock upgrading read locks; the thread lock keeps this process's threads in line."""
        self.check_writable("be changed")
        conn = self._conn()
        with self._write_lock:
            if conn.in_transaction:  # nested: join the outer transaction
                yield conn
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[dict]:
        return [_decode(r) for r in self._conn().execute(sql, tuple(params)).fetchall()]

    def query_one(self, sql: str, params: Iterable[Any] = ()) -> dict | None:
        return _decode(self._conn().execute(sql, tuple(params)).fetchone())

    def insert(self, table: str, fields: dict[str, Any]) -> int:
        """Insert one row (dict/list values stored as JSON); returns its id."""
        cols = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        with self.transaction() as conn:
            cur = conn.execute(
                f"INSERT INTO {table} ({cols}) VALUES ({marks})", [_encode(v) for v in fields.values()]
            )
            return int(cur.lastrowid)

    def update(self, table: str, row_id: int, fields: dict[str, Any]) -> None:
        if not fields:
            return
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.transaction() as conn:
            conn.execute(
                f"UPDATE {table} SET {sets} WHERE id = ?", [*(_encode(v) for v in fields.values()), row_id]
            )

    def insert_many(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Insert many rows with the same keys in one transaction."""
        if not rows:
            return
        cols = list(rows[0])
        sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
        with self.transaction() as conn:
            conn.executemany(sql, [[_encode(r[c]) for c in cols] for r in rows])

    def integrity_check(self) -> str:
        return self._conn().execute("PRAGMA integrity_check").fetchone()[0]

    def schema_version(self) -> int:
        return self._conn().execute("PRAGMA user_version").fetchone()[0]

    # ----- paths -----------------------------------------------------------------------------------
    def relpath(self, path: str | Path) -> str:
        """Store paths inside the project relative to it, so a project folder can be moved."""
        path = Path(path).resolve()
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def abspath(self, stored: str) -> Path:
        path = Path(stored)
        return path if path.is_absolute() else self.root / path

    def job_dir(self, job_id: int) -> Path:
        return self.artifacts_dir / "jobs" / str(job_id)

    def referenced_paths(self, *, exclude: tuple[str, int] | None = None) -> set[Path]:
        """The resolved paths that rows of the models, datasets, SAEs and directions tables point at
        (`exclude`: one (table, id) row to leave out, e.g. the row being deleted)."""
        paths: set[Path] = set()
        for table in _PATH_TABLES:
            for row in self.query(f"SELECT id, path FROM {table}"):
                if exclude != (table, row["id"]) and row["path"]:
                    paths.add(self.abspath(row["path"]).resolve())
        return paths

    def reserve_path(self, folder: str, name: str, suffix: str = "", *, directory: bool = False) -> Path:
        """Claim a fresh path `artifacts/<folder>/<slug of name>[-N]<suffix>` for one row's files.

        The path is created at once (an empty file, or an empty folder with `directory`), so no other row,
        thread or process can get it, and it is never one that a row already points at: two names that slug
        alike ("my data", "my-data") get two paths, and nothing another row owns is ever overwritten. Write
        the content to a temporary path and move it here with `replace_reserved`; remove the placeholder if
        the work fails."""
        self.check_writable("add files")
        parent = self.artifacts_dir / folder
        parent.mkdir(parents=True, exist_ok=True)
        base = slug(name, folder.rstrip("s") or "item")
        taken = self.referenced_paths()
        for n in range(1, 100_000):
            candidate = parent / (f"{base}{suffix}" if n == 1 else f"{base}-{n}{suffix}")
            if candidate.resolve() in taken:
                continue
            try:
                if directory:
                    candidate.mkdir()
                else:
                    os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            except FileExistsError:
                continue
            return candidate
        raise EmguiError(f"no free file name for '{name}' in {parent}")

    def temp_path(self, folder: str, suffix: str = "", *, directory: bool = False) -> Path:
        """A new temporary file or folder under artifacts/<folder>/, named with this process's id so that
        `remove_abandoned_temp_files` can tell a killed writer's leftovers from a live one's work."""
        parent = self.artifacts_dir / folder
        parent.mkdir(parents=True, exist_ok=True)
        while True:
            path = parent / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}{suffix}"
            try:
                if directory:
                    path.mkdir()
                else:
                    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            except FileExistsError:
                continue
            return path

    def remove_abandoned_temp_files(self) -> list[Path]:
        """Remove what interrupted imports and saves left under artifacts/: temporary files and folders
        whose writing process has ended (and, from older versions, unnamed ones an hour old)."""
        removed = []
        for folder in ("datasets", "saes", "directions"):
            parent = self.artifacts_dir / folder
            if not parent.is_dir():
                continue
            for entry in parent.iterdir():
                if self._is_abandoned_temp(entry):
                    try:
                        remove_path(entry)
                        removed.append(entry)
                    except OSError:
                        pass  # in use or not ours: try again next time
        return removed

    @staticmethod
    def _is_abandoned_temp(entry: Path) -> bool:
        match = _TEMP_NAME.match(entry.name)
        if match:
            pid = int(match.group(1))
            return pid != os.getpid() and not pid_alive(pid)
        legacy = (entry.name.startswith(".") and entry.name.endswith(".tmp")) or (
            entry.is_dir() and (entry.name.startswith("tmp") or entry.name.endswith(".partial"))
        )
        if not legacy:
            return False
        try:
            return time.time() - entry.stat().st_mtime > _LEGACY_TEMP_AGE_S
        except OSError:
            return False

    def owns_path(self, path: str | Path, *, row: tuple[str, int]) -> bool:
        """Whether a row alone owns `path`, so deleting the row may delete it: the path lies inside
        artifacts/ (never the project root or artifacts/ itself, never a user's own folder) and no other
        row points at it, inside it, or at a folder holding it."""
        try:
            target = Path(path).resolve()
        except OSError:
            return False
        artifacts = self.artifacts_dir.resolve()
        if target == artifacts or not target.is_relative_to(artifacts):
            return False
        for other in self.referenced_paths(exclude=row):
            if other == target or other.is_relative_to(target) or target.is_relative_to(other):
                return False
        return True

    # ----- settings --------------------------------------------------------------------------------
    def get_setting(self, key: str, default: Any = None) -> Any:
        row = self.query_one("SELECT value FROM settings WHERE key = ?", [key])
        return default if row is None else json.loads(row["value"])

    def set_setting(self, key: str, value: Any) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", [key, json.dumps(value)]
            )

    # ----- jobs ------------------------------------------------------------------------------------
    def create_job(self, kind: str, params: dict[str, Any]) -> int:
        return self.insert(
            "jobs",
            {
                "kind": kind,
                "params": params,
                "status": "queued",
                "created_at": time.time(),
                "pid": os.getpid(),
            },
        )

    def get_job(self, job_id: int) -> dict:
        job = self.query_one("SELECT * FROM jobs WHERE id = ?", [job_id])
        if job is None:
            raise EmguiError(f"no job {job_id} in project {self.root}")
        return job

    def list_jobs(self, kind: str | None = None) -> list[dict]:
        if kind:
            return self.query("SELECT * FROM jobs WHERE kind = ? ORDER BY id", [kind])
        return self.query("SELECT * FROM jobs ORDER BY id")

    def update_job(self, job_id: int, **fields: Any) -> None:
        self.update("jobs", job_id, fields)

    def mark_interrupted_jobs(self) -> list[int]:
        """Jobs still marked queued/running whose process is gone were cut short by a crash or kill."""
        stale = [
            j["id"]
            for j in self.query("SELECT id, pid FROM jobs WHERE status IN ('queued', 'running')")
            if not pid_alive(j["pid"]) and j["pid"] != os.getpid()
        ]
        for job_id in stale:
            self.update_job(
                job_id,
                status="interrupted",
                ended_at=time.time(),
                message="interrupted: the process running it ended",
            )
        return stale

    def add_metrics(self, rows: list[tuple[int, int, str, float, float]]) -> None:
        """Batch insert (job_id, step, name, value, t) rows in one transaction."""
        if rows:
            with self.transaction() as conn:
                conn.executemany(
                    "INSERT INTO metrics (job_id, step, name, value, t) VALUES (?, ?, ?, ?, ?)", rows
                )

    def metrics(self, job_id: int, after_rowid: int = 0, name: str | None = None) -> list[dict]:
        sql = "SELECT rowid, step, name, value, t FROM metrics WHERE job_id = ? AND rowid > ?"
        args: list[Any] = [job_id, after_rowid]
        if name:
            sql += " AND name = ?"
            args.append(name)
        return self.query(sql + " ORDER BY rowid", args)

    def metric_names(self, job_id: int) -> list[str]:
        return [
            r["name"]
            for r in self.query("SELECT DISTINCT name FROM metrics WHERE job_id = ? ORDER BY name", [job_id])
        ]

    def add_logs(self, job_id: int, lines: list[tuple[float, str]]) -> None:
        if lines:
            with self.transaction() as conn:
                conn.executemany(
                    "INSERT INTO job_logs (job_id, t, text) VALUES (?, ?, ?)",
                    [(job_id, t, s) for t, s in lines],
                )

    def logs(self, job_id: int, after_id: int = 0) -> list[dict]:
        return self.query(
            "SELECT id, t, text FROM job_logs WHERE job_id = ? AND id > ? ORDER BY id", [job_id, after_id]
        )

    # ----- models ----------------------------------------------------------------------------------
    def add_model(self, *, name: str, kind: str, source: str, path: str | Path, **fields: Any) -> int:
        if self.query_one("SELECT id FROM models WHERE name = ?", [name]):
            raise EmguiError(f"a model named '{name}' already exists in this project; choose another --name")
        stored = self.relpath(path)
        return self.insert(
            "models",
            {
                "name": name,
                "kind": kind,
                "source": source,
                "path": stored,
                "created_at": time.time(),
                **fields,
            },
        )

    def get_model(self, ref: int | str) -> dict:
        """A model by id or name; the error lists what exists."""
        row = self._by_ref("models", ref)
        if row is None:
            names = ", ".join(m["name"] for m in self.list_models()) or "none yet"
            raise EmguiError(f"no model '{ref}' in this project (models: {names})")
        return row

    def list_models(self) -> list[dict]:
        return self.query("SELECT * FROM models ORDER BY id")

    def update_model(self, model_id: int, **fields: Any) -> None:
        self.update("models", model_id, fields)

    def model_path(self, model: dict) -> Path:
        return self.abspath(model["path"])

    def model_owns_files(self, model: dict) -> bool:
        """Whether deleting this model row also deletes its files (see `owns_path`)."""
        path = self.model_path(model)
        return path.exists() and self.owns_path(path, row=("models", model["id"]))

    def delete_model(self, ref: int | str, *, delete_files: bool = True) -> int:
        """Remove a model, and its files when this row alone owns them inside artifacts/ (a folder the user
        registered in place, the hub cache, or files another row shares stay). Returns bytes freed."""
        self.check_writable("delete models")
        model = self.get_model(ref)
        children = self.query("SELECT name FROM models WHERE base_model_id = ?", [model["id"]])
        if children:
            names = ", ".join(c["name"] for c in children)
            raise EmguiError(f"model '{model['name']}' is the base of {names}; delete those first")
        path = self.model_path(model)
        owned = delete_files and self.model_owns_files(model)
        with self.transaction() as conn:
            conn.execute("DELETE FROM models WHERE id = ?", [model["id"]])
        freed = 0
        if owned:  # after the row is gone: a failure here leaves stray files, never a row without its files
            freed = tree_size(path)
            remove_path(path)
        return freed

    # ----- datasets --------------------------------------------------------------------------------
    def add_dataset(self, *, name: str, kind: str, path: str | Path, **fields: Any) -> int:
        if self.query_one("SELECT id FROM datasets WHERE name = ?", [name]):
            raise EmguiError(f"a dataset named '{name}' already exists in this project; choose another name")
        return self.insert(
            "datasets",
            {"name": name, "kind": kind, "path": self.relpath(path), "created_at": time.time(), **fields},
        )

    def get_dataset(self, ref: int | str) -> dict:
        row = self._by_ref("datasets", ref)
        if row is None:
            names = ", ".join(d["name"] for d in self.list_datasets()) or "none yet"
            raise EmguiError(f"no dataset '{ref}' in this project (datasets: {names})")
        return row

    def list_datasets(self, kind: str | None = None) -> list[dict]:
        if kind:
            return self.query("SELECT * FROM datasets WHERE kind = ? ORDER BY id", [kind])
        return self.query("SELECT * FROM datasets ORDER BY id")

    def _by_ref(self, table: str, ref: int | str) -> dict | None:
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            row = self.query_one(f"SELECT * FROM {table} WHERE id = ?", [int(ref)])
            if row is not None:
                return row
        return self.query_one(f"SELECT * FROM {table} WHERE name = ?", [str(ref)])

    # ----- artifacts and provenance ----------------------------------------------------------------
    def add_artifact(
        self,
        path: str | Path,
        kind: str,
        *,
        job_id: int | None = None,
        inputs: list[dict] | None = None,
        meta: dict | None = None,
        checksum: bool = True,
    ) -> int:
        """Record a file or folder a job made, with the inputs (models, datasets, artifacts) behind it."""
        path = Path(path)
        if not path.exists():
            raise EmguiError(f"artifact {path} does not exist")
        digest = file_sha256(path) if checksum and path.is_file() else None
        return self.insert(
            "artifacts",
            {
                "job_id": job_id,
                "kind": kind,
                "path": self.relpath(path),
                "size_bytes": tree_size(path),
                "sha256": digest,
                "inputs": inputs or [],
                "meta": meta or {},
                "created_at": time.time(),
            },
        )

    def artifacts(self, job_id: int | None = None) -> list[dict]:
        if job_id is None:
            return self.query("SELECT * FROM artifacts ORDER BY id")
        return self.query("SELECT * FROM artifacts WHERE job_id = ? ORDER BY id", [job_id])

    def provenance(self, table: str, row_id: int, _depth: int = 0) -> dict:
        """The chain behind a model, dataset or artifact: the job that made it, its parameters, and
        recursively the inputs that job used (inputs are {"type": "model"|"dataset"|"artifact", "id": n})."""
        if table not in ("models", "datasets", "artifacts"):
            raise EmguiError(f"provenance: unknown table '{table}'")
        row = self.query_one(f"SELECT * FROM {table} WHERE id = ?", [row_id])
        if row is None:
            raise EmguiError(f"provenance: no row {row_id} in {table}")
        node: dict[str, Any] = {"type": table[:-1], "id": row_id, "name": row.get("name") or row.get("path")}
        job = (
            self.query_one("SELECT id, kind, params, status FROM jobs WHERE id = ?", [row["job_id"]])
            if row.get("job_id")
            else None
        )
        node["job"] = job
        inputs = list(row.get("inputs") or [])
        if table == "models" and row.get("base_model_id"):
            inputs.append({"type": "model", "id": row["base_model_id"], "role": "base"})
        if _depth < 20:  # provenance is a DAG; the bound only guards against hand-edited cycles
            node["inputs"] = [
                {**self.provenance(i["type"] + "s", i["id"], _depth + 1), "role": i.get("role")}
                for i in inputs
                if i.get("type") in ("model", "dataset", "artifact")
            ]
        return node

    # ----- notes -----------------------------------------------------------------------------------
    def set_note(self, target_type: str, target_id: str | int, text: str) -> None:
        now = time.time()
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE notes SET text = ?, updated_at = ? WHERE target_type = ? AND target_id = ?",
                [text, now, target_type, str(target_id)],
            )
            if cur.rowcount == 0:
                conn.execute(
                    "INSERT INTO notes (target_type, target_id, text, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                    [target_type, str(target_id), text, now, now],
                )

    def get_note(self, target_type: str, target_id: str | int) -> str:
        row = self.query_one(
            "SELECT text FROM notes WHERE target_type = ? AND target_id = ?", [target_type, str(target_id)]
        )
        return row["text"] if row else ""

    def is_finished(self, job_id: int) -> bool:
        return self.get_job(job_id)["status"] in _FINISHED


def open_project(root: str | Path) -> Project:
    return Project.open(root)


def create_project(root: str | Path) -> Project:
    return Project.create(root)


__all__ = [
    "Project",
    "create_project",
    "open_project",
    "pid_alive",
    "tree_size",
    "file_sha256",
    "LATEST_VERSION",
]
