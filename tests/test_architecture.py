"""Boundaries that keep the app fast and the core headless."""

from __future__ import annotations

import ast
import re
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


def _core_module_graph() -> dict[str, set[str]]:
    """Which emgui.core modules each core module imports (at the top or inside functions)."""
    core = REPO / "emgui" / "core"
    modules = {
        ".".join(path.relative_to(REPO).with_suffix("").parts): path
        for path in core.rglob("*.py")
        if path.name != "__init__.py"
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("emgui.core"):
                targets |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_core_has_no_import_circles() -> None:
    """Each domain stands on the ones below it: a circle (a imports b imports a, also through functions'
    own imports) is how one big room grows back."""
    graph = _core_module_graph()
    assert len(graph) > 30
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not circles, circles


def test_pages_use_core_functions_not_sql() -> None:
    """The window reads and writes the project only through core functions: SQL stays with the tables'
    owners."""
    sql = re.compile(r"\b(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM)\b|\.(query|query_one|execute)\(")
    offenders = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in (REPO / "emgui" / "ui").rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if sql.search(line)
    ]
    assert not offenders, offenders


def _test_module_imports(path: Path) -> list[str]:
    """The test modules (tests/test_*.py) a file imports, however written: `from tests.test_x import ...`,
    `import tests.test_x`, `from tests import test_x` or `from .test_x import ...` (at the top or inside
    functions)."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("tests.test_")]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0 and module.startswith("tests.test_"):
                found.append(module)
            elif (node.level == 0 and module == "tests") or (node.level > 0 and not module):
                found += [f"tests.{a.name}" for a in node.names if a.name.startswith("test_")]
            elif node.level > 0 and module.startswith("test_"):
                found.append(f"tests.{module}")
    return found


def test_no_file_imports_from_a_test_file() -> None:
    """Helpers shared by several test files live in tests/builders.py (or fixtures in tests/conftest.py):
    a test file imported by another runs its module-level code twice and ties the two files together."""
    files = [p for folder in ("tests", "bench", "packaging") for p in (REPO / folder).rglob("*.py")]
    assert len(files) > 50
    offenders = [f"{path.relative_to(REPO)}: {module}" for path in files for module in _test_module_imports(path)]
    assert not offenders, offenders
