"""The project database schema, as a list of forward migrations.

`MIGRATIONS[i]` upgrades a database from schema version i to i + 1 (stored in `PRAGMA user_version`).
Never edit a released migration: append a new one, and tests/test_store.py checks that every earlier
version upgrades to the latest with its data intact.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

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


# Evaluation (samples, scores, the judge cache), SAEs and model diffing (per-latent statistics,
# precomputed dashboards, labels), and steering (directions, presets). Question sets are datasets
# of kind 'questions'.
_V3 = """
        CREATE TABLE samples (
            id INTEGER PRIMARY KEY,
            job_id INTEGER REFERENCES jobs(id) ON DELETE CASCADE,
            model_id INTEGER REFERENCES models(id) ON DELETE SET NULL,
            dataset_id INTEGER REFERENCES datasets(id) ON DELETE SET NULL,
            question_id TEXT NOT NULL,
            paraphrase_index INTEGER NOT NULL DEFAULT 0,
            sample_index INTEGER NOT NULL DEFAULT 0,
            prompt TEXT NOT NULL,
            system TEXT,
            answer TEXT NOT NULL,
            params TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL
        );
        CREATE INDEX samples_by_job ON samples(job_id);
        CREATE INDEX samples_by_model ON samples(model_id, question_id);
        CREATE TABLE scores (
            id INTEGER PRIMARY KEY,
            sample_id INTEGER NOT NULL REFERENCES samples(id) ON DELETE CASCADE,
            job_id INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
            judge TEXT NOT NULL,
            metric TEXT NOT NULL,
            value REAL,
            raw TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL
        );
        CREATE INDEX scores_by_sample ON scores(sample_id, metric);
        CREATE INDEX scores_by_job ON scores(job_id);
        CREATE TABLE judge_cache (
            key TEXT PRIMARY KEY,
            value REAL,
            raw TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL
        );
        CREATE TABLE saes (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            path TEXT NOT NULL,
            model_id INTEGER REFERENCES models(id) ON DELETE SET NULL,
            hook_name TEXT NOT NULL,
            d_in INTEGER,
            d_sae INTEGER,
            architecture TEXT,
            source TEXT NOT NULL,
            info TEXT NOT NULL DEFAULT '{}',
            job_id INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
            created_at REAL NOT NULL
        );
        CREATE TABLE latent_stats (
            job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            sae_id INTEGER NOT NULL REFERENCES saes(id) ON DELETE CASCADE,
            latent INTEGER NOT NULL,
            base_mean REAL, ft_mean REAL, delta_mean REAL,
            base_freq REAL, ft_freq REAL, delta_freq REAL,
            rank INTEGER,
            PRIMARY KEY (job_id, latent)
        );
        CREATE INDEX latent_stats_rank ON latent_stats(job_id, rank);
        CREATE TABLE latent_labels (
            sae_id INTEGER NOT NULL REFERENCES saes(id) ON DELETE CASCADE,
            latent INTEGER NOT NULL,
            label TEXT NOT NULL DEFAULT '',
            note TEXT NOT NULL DEFAULT '',
            updated_at REAL NOT NULL,
            PRIMARY KEY (sae_id, latent)
        );
        CREATE TABLE dashboards (
            sae_id INTEGER NOT NULL REFERENCES saes(id) ON DELETE CASCADE,
            latent INTEGER NOT NULL,
            job_id INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
            data TEXT NOT NULL,
            PRIMARY KEY (sae_id, latent)
        );
        CREATE TABLE directions (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            model_id INTEGER REFERENCES models(id) ON DELETE SET NULL,
            hook_name TEXT NOT NULL,
            layer INTEGER,
            path TEXT NOT NULL,
            norm REAL,
            info TEXT NOT NULL DEFAULT '{}',
            job_id INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
            created_at REAL NOT NULL
        );
        CREATE TABLE steering_presets (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            spec TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
"""

# Trust: judge checks (a judge's validity on a labelled panel), judge-free measures of a model (likelihood
# margins, persona projections, latent activations, each with an interval), and the controlled diff's
# per-latent columns (the control model's mean, the controlled effect, its bootstrap spread and z-score).
_V4 = """
        CREATE TABLE judge_checks (
            id INTEGER PRIMARY KEY,
            job_id INTEGER REFERENCES jobs(id) ON DELETE CASCADE,
            judge TEXT NOT NULL,
            panel TEXT NOT NULL,
            auroc_aligned REAL,
            auroc_coherent REAL,
            spearman_aligned REAL,
            unscored_fraction REAL,
            n INTEGER NOT NULL,
            valid INTEGER NOT NULL,
            info TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL
        );
        CREATE INDEX judge_checks_by_judge ON judge_checks(judge, id);
        CREATE TABLE measures (
            id INTEGER PRIMARY KEY,
            job_id INTEGER REFERENCES jobs(id) ON DELETE CASCADE,
            model_id INTEGER REFERENCES models(id) ON DELETE CASCADE,
            measure TEXT NOT NULL,
            value REAL,
            ci_low REAL,
            ci_high REAL,
            n INTEGER,
            info TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL
        );
        CREATE INDEX measures_by_model ON measures(model_id, measure, id);
        ALTER TABLE latent_stats ADD COLUMN control_mean REAL;
        ALTER TABLE latent_stats ADD COLUMN delta_control REAL;
        ALTER TABLE latent_stats ADD COLUMN effect REAL;
        ALTER TABLE latent_stats ADD COLUMN effect_sd REAL;
        ALTER TABLE latent_stats ADD COLUMN z REAL;
"""

def _v5(db: Any) -> None:
    """Full-text search (SQLite FTS5, kept in step by triggers) over the answers, latent labels and notes,
    and the text of dataset chats (a table of its own: the chats themselves live in JSONL files)."""
    db["samples"].enable_fts(["question_id", "prompt", "answer"], create_triggers=True)
    db["latent_labels"].enable_fts(["label", "note"], create_triggers=True)
    db.execute(  # by hand: sqlite-utils' create() cannot declare ON DELETE CASCADE
        "CREATE TABLE chat_text (id INTEGER PRIMARY KEY, "
        "dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE, "
        "line INTEGER NOT NULL, text TEXT NOT NULL)"
    )
    db["chat_text"].create_index(["dataset_id", "line"])
    db["chat_text"].enable_fts(["text"], create_triggers=True)


# A step is SQL text, or a function of a sqlite_utils.Database run inside the step's transaction.
MIGRATIONS: list[str | Callable[[Any], None]] = [_V1, _V2, _V3, _V4, _v5]
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
            step = MIGRATIONS[v]
            if callable(step):
                import sqlite_utils

                db.execute("BEGIN")
                step(sqlite_utils.Database(db))  # sqlite-utils runs statement by statement inside it
                db.execute(f"PRAGMA user_version = {v + 1}")
                db.execute("COMMIT")
            else:
                db.executescript(f"BEGIN;\n{step}\nPRAGMA user_version = {v + 1};\nCOMMIT;")
        except Exception:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    return version
