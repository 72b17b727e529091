"""Library progress bars off: emgui shows one progress line (or bar) per job of its own.

transformers ("Loading weights"), huggingface_hub, datasets and sae-lens draw tqdm bars on stderr. On a
terminal they interleave with emgui's own progress line as carriage-return noise, and in the window nobody
sees them. The variables must be set before those libraries are imported; a user's own setting wins.
"""

from __future__ import annotations

import os
import sys

QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
}


def quiet_library_progress() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if "transformers" in sys.modules:  # imported already: its switch, read at import, is set here
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
