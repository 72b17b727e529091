"""Before the window opens on Linux: can Qt's X11 (xcb) platform start here? Imports no Qt.

Qt 6.5+ aborts (exit 134) when a system library of its xcb plugin is missing, with a message that names one
library at a time. `desktop_problem()` asks the dynamic linker (`ldd`) what the plugin lacks and turns it
into one line naming every Debian/Ubuntu package to install, so `emgui` can say it and exit cleanly.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

# What a Debian/Ubuntu desktop needs for Qt's xcb platform (README, "A real desktop start").
XCB_PACKAGES = (
    "libxcb-cursor0", "libxcb-icccm4", "libxcb-keysyms1", "libxcb-image0", "libxcb-render-util0",
    "libxkbcommon-x11-0", "libxcb-xinerama0", "libxcb-shape0", "libxcb-randr0", "libxcb-xkb1",
)


def package_for(soname: str) -> str:
    """libxcb-cursor.so.0 -> libxcb-cursor0, libxkbcommon-x11.so.0 -> libxkbcommon-x11-0 (Debian's naming)."""
    match = re.match(r"(lib[^.]+)\.so\.(\d+)", soname)
    if match is None:
        return soname
    stem, version = match.group(1).lower(), match.group(2)
    return f"{stem}-{version}" if stem[-1].isdigit() else f"{stem}{version}"


def xcb_plugin() -> Path | None:
    spec = find_spec("PySide6")
    if spec is None or spec.origin is None:
        return None
    plugin = Path(spec.origin).parent / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    return plugin if plugin.is_file() else None


def missing_libraries(ldd_output: str) -> list[str]:
    """The sonames `ldd` reports as 'not found'."""
    return sorted({m.group(1) for m in re.finditer(r"^\s*(\S+)\s+=>\s+not found", ldd_output, re.MULTILINE)})


def ldd(path: Path) -> str:
    try:
        return subprocess.run(["ldd", str(path)], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def uses_xcb(env: dict | None = None) -> bool:
    """Whether Qt will pick its X11 platform: asked for, or the default outside a Wayland session."""
    env = os.environ if env is None else env
    platform = env.get("QT_QPA_PLATFORM", "")
    if platform:
        return platform.split(":")[0] == "xcb" or platform.startswith("xcb;")
    return not (env.get("WAYLAND_DISPLAY") and env.get("XDG_SESSION_TYPE") == "wayland")


def desktop_problem(env: dict | None = None, *, ldd_output: str | None = None) -> str | None:
    """One line saying why the window cannot open here, or None when it can (or it is not Linux/X11)."""
    env = os.environ if env is None else env
    if not sys.platform.startswith("linux") or not uses_xcb(env):
        return None
    if not env.get("DISPLAY"):
        return (
            "emgui: no display to open the window on (DISPLAY is not set); over SSH use the command line "
            "(emgui --help) or `emgui screenshot`, or start it under xvfb-run"
        )
    if ldd_output is None:
        plugin = xcb_plugin()
        if plugin is None or shutil.which("ldd") is None:
            return None  # nothing to ask: let Qt try
        ldd_output = ldd(plugin)  # lists the libraries the plugin needs through its Qt libraries too
    missing = missing_libraries(ldd_output)
    if not missing:
        return None
    packages = " ".join(dict.fromkeys(package_for(lib) for lib in missing))
    return (
        f"emgui: the window needs system libraries that are missing ({', '.join(missing)}): "
        f"sudo apt install {packages}   (the command line works without them: emgui --help)"
    )
