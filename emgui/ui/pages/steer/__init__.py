"""The Steer page: live steering side by side, steering sweeps, directions and persona vectors, and the
live persona monitor of fine-tunes.

- Live: interventions (stored directions, SAE latents) each with a method and a strength slider, the
  positions and layer steered; a chat prompt answered twice, unsteered and steered, streamed token by token
  from two worker threads (the steering hooks act only in the steered one). Moving a slider restarts the
  steered answer after a short pause. Tokens can be coloured by log-probability; hovering one shows its
  value and the alternatives. Presets are stored in the project.
- Sweeps: launch `steer-sweep` jobs (and the three persona up/down sweeps) and read their dose-response curves.
- Directions: the project's directions; import a .safetensors vector, build persona vectors, screen a
  dataset by its projection and write the filtered dataset.
- Monitor: a fine-tune's loss beside its `persona/*` curves, with the warnings the monitor logged.

The UI thread never touches torch: models load through `run_async`, answers stream from daemon threads
whose Qt signals arrive queued in the UI thread.
"""

from emgui.ui.pages.steer.common import STEER_KINDS
from emgui.ui.pages.steer.directions import DirectionsTab, PersonaDialog
from emgui.ui.pages.steer.live import InterventionRow, LatentDialog, LiveTab
from emgui.ui.pages.steer.monitor import MonitorTab
from emgui.ui.pages.steer.page import SteerPage
from emgui.ui.pages.steer.sweeps import SweepsTab
from emgui.ui.pages.steer.tokens import TokenView, logprob_colour

__all__ = [
    "STEER_KINDS",
    "DirectionsTab",
    "InterventionRow",
    "LatentDialog",
    "LiveTab",
    "MonitorTab",
    "PersonaDialog",
    "SteerPage",
    "SweepsTab",
    "TokenView",
    "logprob_colour",
]
