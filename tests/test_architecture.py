"""Boundaries that keep the app fast and the core headless."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "sae_lens")


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at_top_level) for each import in a file."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, id(node) in top))
    return out


def test_core_never_imports_qt() -> None:
    offenders = [
        f"{path.relative_to(REPO)}: {module}"
        for path in (REPO / "emgui" / "core").rglob("*.py")
        for module, _ in _imports(path)
        if module.split(".")[0] in ("PySide6", "PyQt5", "PyQt6", "pyqtgraph", "superqt")
        or module.startswith("emgui.ui")
    ]
    assert not offenders, offenders


def test_heavy_libraries_are_imported_lazily() -> None:
    offenders = [
        f"{path.relative_to(REPO)}: {module}"
        for path in (REPO / "emgui").rglob("*.py")
        for module, top in _imports(path)
        if top and module.split(".")[0] in HEAVY
    ]
    assert not offenders, offenders


def test_window_start_imports_no_heavy_library() -> None:
    code = (
        "import os, sys; os.environ['QT_QPA_PLATFORM']='offscreen'\n"
        "from emgui.ui.app import make_app\n"
        "from emgui.ui.main_window import MainWindow\n"
        "app = make_app(); w = MainWindow(probe_device=False); w.show(); app.processEvents()\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
