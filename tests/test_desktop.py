"""A real desktop start: the window maps on an X server through Qt's xcb platform (not offscreen), and
without the system libraries that platform needs, `emgui` says which packages to install in one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emgui.ui import desktop

REPO = Path(__file__).resolve().parents[1]
LDD_MISSING = """\tlinux-vdso.so.1 (0x00007ffc)
\tlibxcb-cursor.so.0 => not found
\tlibxcb-icccm.so.4 => not found
\tlibxkbcommon-x11.so.0 => not found
\tlibX11-xcb.so.1 => /lib/x86_64-linux-gnu/libX11-xcb.so.1 (0x00007fec)
"""

# Runs the real entry point (`emgui` with no arguments) and exits once the main window is mapped and exposed.
MAPS = """
import sys
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication
from emgui.ui.app import make_app

app = make_app()
def check():
    for w in QApplication.topLevelWidgets():
        handle = w.windowHandle()
        if type(w).__name__ == "MainWindow" and w.isVisible() and handle is not None and handle.isExposed():
            print(f"mapped on {app.platformName()}: {w.width()}x{w.height()} {w.windowTitle()}", flush=True)
            w.close()
            app.exit(0)
timer = QTimer()
timer.timeout.connect(check)
timer.start(100)
QTimer.singleShot(60000, lambda: app.exit(3))
from emgui.cli import main
sys.exit(main([]))
"""


def test_missing_xcb_libraries_become_one_line_naming_the_packages() -> None:
    assert desktop.missing_libraries(LDD_MISSING) == ["libxcb-cursor.so.0", "libxcb-icccm.so.4", "libxkbcommon-x11.so.0"]
    assert [desktop.package_for(s) for s in ("libxcb-cursor.so.0", "libxkbcommon-x11.so.0", "libX11-xcb.so.1",
                                             "libxcb-render-util.so.0")] == [
        "libxcb-cursor0", "libxkbcommon-x11-0", "libx11-xcb1", "libxcb-render-util0"]  # fmt: skip
    line = desktop.desktop_problem({"DISPLAY": ":0"}, ldd_output=LDD_MISSING)
    assert "\n" not in line and "sudo apt install libxcb-cursor0 libxcb-icccm4 libxkbcommon-x11-0" in line
    assert desktop.desktop_problem({"DISPLAY": ":0"}, ldd_output="\tlibxcb.so.1 => /lib/libxcb.so.1\n") is None
    assert "DISPLAY is not set" in desktop.desktop_problem({}, ldd_output="")
    # Not X11: offscreen rendering, or a Wayland session, needs none of it.
    assert desktop.desktop_problem({"QT_QPA_PLATFORM": "offscreen"}, ldd_output=LDD_MISSING) is None
    wayland = {"WAYLAND_DISPLAY": "wayland-0", "XDG_SESSION_TYPE": "wayland", "DISPLAY": ":0"}
    assert desktop.desktop_problem(wayland, ldd_output=LDD_MISSING) is None
    assert desktop.uses_xcb({"QT_QPA_PLATFORM": "xcb"}) and not desktop.uses_xcb({"QT_QPA_PLATFORM": "wayland"})
    # Every package the README names is what the rule makes of the plugin's libraries.
    assert set(desktop.XCB_PACKAGES) >= {desktop.package_for(s) for s in desktop.missing_libraries(LDD_MISSING)}


def test_emgui_says_what_is_missing_instead_of_aborting(monkeypatch, capsys) -> None:
    from emgui import cli
    from emgui.ui import app

    if not sys.platform.startswith("linux"):
        pytest.skip("the xcb platform is Linux's")
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(desktop, "xcb_plugin", lambda: Path("/libqxcb.so"))
    monkeypatch.setattr(desktop.shutil, "which", lambda name: "/usr/bin/ldd")
    monkeypatch.setattr(desktop, "ldd", lambda path: LDD_MISSING)
    monkeypatch.setattr(app, "launch", lambda *a: pytest.fail("Qt was started although libraries are missing"))
    assert cli.main([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "libxcb-cursor0 libxcb-icccm4 libxkbcommon-x11-0" in err


@pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="xvfb-run is not installed (apt install xvfb xauth)")
def test_the_window_maps_on_a_real_x_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "WAYLAND"))}
    env.update(QT_QPA_PLATFORM="xcb", EMGUI_HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO))
    env.pop("DISPLAY", None)
    proc = subprocess.run(
        ["xvfb-run", "-a", "-s", "-screen 0 1280x800x24", sys.executable, "-c", MAPS],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "mapped on xcb: 1280x800 emgui" in proc.stdout
