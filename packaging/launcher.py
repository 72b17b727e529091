"""Entry point for frozen builds (PyInstaller runs this file)."""

import sys

from emgui.cli import main

sys.exit(main())
