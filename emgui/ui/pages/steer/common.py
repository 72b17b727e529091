"""What the Steer page's tabs share: small combo-box and spin-box helpers and the page's constants."""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtWidgets import QComboBox

STEER_KINDS = ("persona-vector", "diff-means", "persona-screen", "steer-sweep")
SLIDER_STEPS = 200  # a slider runs from -max to +max in this many steps each way
DEBOUNCE_MS = 250


def esc(text: str) -> str:
    return html.escape(text, quote=False)


def combo_data(combo: QComboBox) -> Any:
    return combo.currentData() if combo.currentIndex() >= 0 else None


def select_data(combo: QComboBox, value: Any) -> None:
    index = combo.findData(value)
    if index >= 0:
        combo.setCurrentIndex(index)


def spin(widget: Any, lo: float, hi: float, value: float, tip: str = "", step: float | None = None) -> Any:
    widget.setRange(lo, hi)
    widget.setValue(value)
    if step is not None:
        widget.setSingleStep(step)
    widget.setToolTip(tip)
    return widget
