"""The project database schema, as a list of forward migrations.

`MIGRATIONS[i]` upgrades a database from schema version i to i + 1 (stored in `PRAGMA user_version`).
Never edit a released migration: append a new one, and tests/test_store.py checks that every earlier
version upgrades to the latest with its data intact.
"""

from __future__ import annotations

import sqlite3

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")


_V1 = """
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            params TEXT NOT NULL DEFAULT '{}',
            status TEXT NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued','running','succeeded','failed','cancelled','interrupted')),
            progress REAL NOT NULL DEFAULT 0,
            message TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            started_at REAL,
            ended_at REAL,
            error TEXT,
            traceback TEXT,
            result TEXT,
            pid INTEGER
        );
        CREATE TABLE models (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,             -- hub | folder | gguf | adapter | merged | full
            source TEXT NOT NULL,           -- repo id, folder or file the user gave
            revision TEXT,
            path TEXT NOT NULL,             -- where the weights are (absolute, or relative to the project)
            base_model_id INTEGER REFERENCES models(id) ON DELETE RESTRICT,
            architecture TEXT,
            n_params INTEGER,
            dtype TEXT,
            size_bytes INTEGER,
            info TEXT NOT NULL DEFAULT '{}',
            trust_remote_code INTEGER NOT NULL DEFAULT 0,
            allow_pickle INTEGER NOT NULL DEFAULT 0,
            job_id INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
            created_at REAL NOT NULL
        );
        CREATE TABLE datasets (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,             -- chat | questions | text
            path TEXT NOT NULL,
            n_rows INTEGER,
            info TEXT NOT NULL DEFAULT '{}',
            job_id INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
            created_at REAL NOT NULL
        );
        CREATE TABLE metrics (
            job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            step INTEGER NOT NULL,
            name TEXT NOT NULL,
            value REAL NOT NULL,
            t REAL NOT NULL
        );
        CREATE INDEX metrics_by_job ON metrics(job_id, name, step);
        CREATE TABLE job_logs (
            id INTEGER PRIMARY KEY,
            job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            t REAL NOT NULL,
            text TEXT NOT NULL
        );
        CREATE INDEX job_logs_by_job ON job_logs(job_id, id);
        CREATE TABLE artifacts (
            id INTEGER PRIMARY KEY,
            job_id INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
            kind TEXT NOT NULL,
            path TEXT NOT NULL,             -- relative to the project folder when inside it
            size_bytes INTEGER,
            sha256 TEXT,
            inputs TEXT NOT NULL DEFAULT '[]',
            created_at REAL NOT NULL
        );
        CREATE TABLE notes (
            id INTEGER PRIMARY KEY,
            target_type TEXT NOT NULL,
            target_id TEXT NOT NULL,
            text TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
"""

# Resumable jobs keep their last checkpoint; the dataset and artifact rows record their inputs
# so the UI can draw the provenance chain from any artifact back to the models and data behind it.
_V2 = """
        ALTER TABLE jobs ADD COLUMN checkpoint TEXT;
        ALTER TABLE jobs ADD COLUMN heartbeat REAL;
        ALTER TABLE datasets ADD COLUMN inputs TEXT NOT NULL DEFAULT '[]';
        ALTER TABLE artifacts ADD COLUMN meta TEXT NOT NULL DEFAULT '{}';
        CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE INDEX artifacts_by_job ON artifacts(job_id);
"""


MIGRATIONS: list[str] = [_V1, _V2]
LATEST_VERSION = len(MIGRATIONS)


def migrate(db: sqlite3.Connection, target: int = LATEST_VERSION) -> int:
    """Apply the missing migrations up to `target`, each in its own transaction. Returns the old version."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > LATEST_VERSION:
        from emgui.core.errors import EmguiError

        raise EmguiError(
            f"project.db has schema version {version}, newer than this emgui understands ({LATEST_VERSION}); "
            "upgrade emgui to open it"
        )
    for v in range(version, target):
        # One transaction per step (the connection is in autocommit mode): a failed step rolls back
        # and leaves the previous version intact.
        try:
            db.executescript(f"BEGIN;\n{MIGRATIONS[v]}\nPRAGMA user_version = {v + 1};\nCOMMIT;")
        except Exception:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    return version
