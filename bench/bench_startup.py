"""Time from process start to the first painted main window, against a bare PySide6 window.

Prints absolute seconds (target: emgui < 2 s on a 2-core machine) and the ratio to the baseline,
each the median of several fresh processes run alternately, so machine noise hits both alike.
Run: python bench/bench_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

BARE = """
import time, sys
t0 = float(sys.argv[1])
from PySide6.QtWidgets import QApplication, QMainWindow
app = QApplication([])
w = QMainWindow(); w.resize(1280, 800); w.show(); app.processEvents()
print(time.time() - t0)
"""

EMGUI = """
import time, sys
t0 = float(sys.argv[1])
from emgui.ui.app import make_app
from emgui.ui.main_window import MainWindow
app = make_app()
w = MainWindow(); w.show(); app.processEvents()
print(time.time() - t0)
"""


def measure(code: str) -> float:
    env = {**os.environ, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen")}
    out = subprocess.run([sys.executable, "-c", code, repr(time.time())], capture_output=True, text=True, env=env,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    measure(BARE), measure(EMGUI)  # warm the OS file cache for both
    bare, app = [], []
    for _ in range(args.runs):
        bare.append(measure(BARE))
        app.append(measure(EMGUI))
    b, a = statistics.median(bare), statistics.median(app)
    print(f"bare PySide6 window: {b:.2f} s   emgui main window: {a:.2f} s   ratio emgui/bare: {a / b:.2f}")
    print(f"target: emgui window < 2 s -> {'met' if a < 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
