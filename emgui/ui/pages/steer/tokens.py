"""Token views: an answer streamed token by token, coloured by log-probability, with hover details."""

from __future__ import annotations

import math
from typing import Any

from PySide6.QtCore import QEvent, QTimer
from PySide6.QtWidgets import QTextBrowser, QToolTip

from emgui.ui.pages.steer.common import esc


def logprob_colour(logprob: float) -> str:
    """White for a sure token, deepening red as its probability falls."""
    p = math.exp(max(-30.0, min(0.0, logprob)))
    level = int(255 * (0.45 + 0.55 * p))
    return f"#ff{level:02x}{level:02x}"


class TokenView(QTextBrowser):
    """An answer streamed token by token. With `colour`, each token's background shows its probability;
    hovering a token shows its log-probability and the most likely alternatives."""

    def __init__(self) -> None:
        super().__init__()
        self.setOpenLinks(False)
        self.setOpenExternalLinks(False)
        self.steps: list[Any] = []
        self.colour = True
        self.status = ""
        self._dirty = False
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.render)

    def clear_tokens(self, status: str = "") -> None:
        self.steps = []
        self.status = status
        self.render()

    def add(self, step: Any) -> None:
        self.steps.append(step)
        if not self._timer.isActive():  # redraw at most every 30 ms however fast tokens come
            self._timer.start(30)

    def text(self) -> str:
        return "".join(s.text for s in self.steps)

    def render(self) -> None:
        parts = []
        for i, s in enumerate(self.steps):
            end = not s.text and i == len(self.steps) - 1  # the end-of-turn token: shown so it can be hovered
            text = esc(s.text).replace("\n", "<br>") or (
                '<span style="color:#94a3b8"> [end]</span>' if end else ""
            )
            if not text:
                continue
            bg = f"background-color:{logprob_colour(s.logprob)};" if self.colour else ""
            parts.append(f'<a href="t:{i}" style="color:#0f172a;text-decoration:none;{bg}">{text}</a>')
        status = f'<p style="color:#64748b">{esc(self.status)}</p>' if self.status else ""
        self.setHtml(f'<div style="white-space:pre-wrap">{"".join(parts)}</div>{status}')
        bar = self.verticalScrollBar()
        bar.setValue(bar.maximum())

    def token_tip(self, index: int) -> str:
        s = self.steps[index]
        alts = "".join(
            f"<tr><td><code>{esc(repr(text))}</code></td><td align=right>{lp:.2f}</td>"
            f"<td align=right>{100 * math.exp(lp):.1f}%</td></tr>"
            for text, lp in s.alternatives
        )
        return (
            f"<b>{esc(repr(s.text))}</b> (token {s.token_id})<br>log-prob {s.logprob:.3f} · "
            f"p = {100 * math.exp(s.logprob):.1f}%<table>{alts}</table>"
        )

    def viewportEvent(self, event: QEvent) -> bool:  # noqa: N802 - Qt's naming
        if event.type() == QEvent.Type.ToolTip:
            anchor = self.anchorAt(event.pos())
            if anchor.startswith("t:"):
                QToolTip.showText(event.globalPos(), self.token_tip(int(anchor[2:])), self)
            else:
                QToolTip.hideText()
            return True
        return super().viewportEvent(event)
