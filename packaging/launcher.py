"""Entry point for frozen builds (PyInstaller runs this file).

In a bundle `sys.executable` is the emgui program itself, not a Python interpreter, so code that runs
`sys.executable -m MODULE ...` (the vuln-check job runs Bandit that way) arrives here: such a call runs the
bundled module as `python -m` would.
"""

import multiprocessing
import runpy
import sys


def main() -> int:
    multiprocessing.freeze_support()  # a worker process that a library starts runs its task, not the app
    if len(sys.argv) >= 3 and sys.argv[1] == "-m":
        module = sys.argv[2]
        sys.argv = [module, *sys.argv[3:]]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0

    from emgui.cli import main as emgui_main

    return emgui_main()


if __name__ == "__main__":
    sys.exit(main())
