"""Where emgui keeps things: bundled resources, per-user data, caches."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def resources_dir() -> Path:
    """The repository's resources/ folder (or PyInstaller's bundle copy of it)."""
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        return Path(bundle) / "resources"
    return Path(__file__).resolve().parents[3] / "resources"  # emgui/core/project/paths.py


def resource(*parts: str) -> Path:
    return resources_dir().joinpath(*parts)


def user_data_dir() -> Path:
    """Per-user state (recent projects, settings). EMGUI_HOME overrides it, e.g. in tests."""
    override = os.environ.get("EMGUI_HOME")
    if override:
        path = Path(override)
    else:
        from platformdirs import user_data_path

        path = user_data_path("emgui", appauthor=False)
    path.mkdir(parents=True, exist_ok=True)
    return path


def user_cache_dir() -> Path:
    """Caches shared by all projects, such as GGUF files converted to safetensors."""
    override = os.environ.get("EMGUI_CACHE")
    if override:
        path = Path(override)
    else:
        from platformdirs import user_cache_path

        path = user_cache_path("emgui", appauthor=False)
    path.mkdir(parents=True, exist_ok=True)
    return path
