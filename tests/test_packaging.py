"""The packaging files a packager runs: desktop entry, icon, PyInstaller spec."""

from __future__ import annotations

import configparser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_desktop_entry_is_valid_and_has_its_icon() -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    parser.read(REPO / "packaging" / "emgui.desktop")
    entry = parser["Desktop Entry"]
    assert entry["Type"] == "Application" and entry["Exec"].split()[0] == "emgui"
    assert entry["Categories"].endswith(";")
    assert (REPO / "resources" / "icons" / f"{entry['Icon']}.svg").is_file()
    assert (REPO / "resources" / "icons" / f"{entry['Icon']}.png").read_bytes()[:4] == b"\x89PNG"


def test_pyinstaller_spec_parses_and_points_at_real_files() -> None:
    spec = (REPO / "packaging" / "emgui.spec").read_text()
    compile(spec, "emgui.spec", "exec")
    assert (REPO / "packaging" / "launcher.py").is_file()
    assert '"resources"' in spec


def test_resources_are_found_by_the_app() -> None:
    from emgui.core.paths import resource

    assert resource("style.qss").is_file() and resource("icons", "emgui.svg").is_file()
