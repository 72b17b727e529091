"""Recently opened projects, kept in the per-user data folder (never in a project)."""

from __future__ import annotations

import json
from pathlib import Path

from emgui.core.project.paths import user_data_dir

MAX_RECENT = 12


def _file() -> Path:
    return user_data_dir() / "recent.json"


def load() -> list[Path]:
    """Recent projects that still exist, newest first."""
    try:
        entries = json.loads(_file().read_text())
    except (OSError, ValueError):
        return []
    return [Path(p) for p in entries if (Path(p) / "project.db").exists()]


def add(root: str | Path) -> None:
    root = Path(root).resolve()
    entries = [p for p in load() if p != root]
    entries.insert(0, root)
    tmp = _file().with_suffix(".tmp")
    tmp.write_text(json.dumps([str(p) for p in entries[:MAX_RECENT]], indent=1))
    tmp.replace(_file())
