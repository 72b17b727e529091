"""Small widgets and formatting helpers shared by the pages."""

from __future__ import annotations

import time

from PySide6.QtCore import Qt
from PySide6.QtGui import Qt as QtGuiNamespace
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QMessageBox,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from emgui.core.store import Project
from emgui.core.units import human_bytes, human_count, human_duration  # noqa: F401  (the pages import them from here)


def job_duration(job: dict) -> float | None:
    if not job.get("started_at"):
        return None
    return (job.get("ended_at") or time.time()) - job["started_at"]


# ----- untrusted text --------------------------------------------------------------------------------
# QLabel, QMessageBox and QToolTip show any text that looks like HTML as rich text, and rich text loads
# images, even `<img src="file:///...">`. Names, paths, question ids, tokens and job messages come from
# files and users, so every label is plain text (see `make_labels_plain`) and every tooltip goes through
# `plain_tip`.


def plain_label(label: QLabel) -> QLabel:
    label.setTextFormat(Qt.TextFormat.PlainText)
    return label


def make_labels_plain(root: QWidget) -> None:
    """Make every QLabel under `root` plain text. The app's labels never use rich text on purpose; one that
    must would set the Qt property `emguiRichText`."""
    for label in root.findChildren(QLabel):
        if not label.property("emguiRichText"):
            label.setTextFormat(Qt.TextFormat.PlainText)


def plain_tip(text: str | None) -> str:
    """A tooltip that shows `text` literally (QToolTip has no plain-text mode: the text is escaped into
    rich text that displays as itself)."""
    if not text:
        return ""
    return QtGuiNamespace.convertFromPlainText(str(text), Qt.WhiteSpaceMode.WhiteSpaceNormal)


def heading(text: str, level: int = 1) -> QLabel:
    label = plain_label(QLabel(text))
    label.setObjectName("h1" if level == 1 else "h2")
    return label


def hint(text: str) -> QLabel:
    label = plain_label(QLabel(text))
    label.setObjectName("hint")
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def message_box(parent: QWidget | None, icon: QMessageBox.Icon, title: str, text: str) -> QMessageBox:
    """A message box whose text is shown as plain text (errors quote paths, names and file content)."""
    box = QMessageBox(icon, title, str(text), QMessageBox.StandardButton.NoButton, parent)
    box.setTextFormat(Qt.TextFormat.PlainText)
    return box


def set_enabled_why(widget: QWidget, enabled: bool, why: str, tip: str = "") -> None:
    """Enable a control, or disable it with a tooltip that says why (and what to do)."""
    widget.setEnabled(enabled)
    widget.setToolTip(tip if enabled else why)


def show_error(parent: QWidget | None, title: str, text: str) -> None:
    box = message_box(parent, QMessageBox.Icon.Critical, title, text)
    box.setStandardButtons(QMessageBox.StandardButton.Ok)
    box.exec()


def ask(parent: QWidget | None, title: str, text: str) -> bool:
    """A yes/no question (plain text); True for yes."""
    box = message_box(parent, QMessageBox.Icon.Question, title, text)
    box.setStandardButtons(QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No)
    box.setDefaultButton(QMessageBox.StandardButton.No)
    return box.exec() == QMessageBox.StandardButton.Yes


class Page(QWidget):
    """A page of the main window. It reads the store (and job signals) and nothing else."""

    title = ""

    def __init__(self, window) -> None:  # window: MainWindow (not imported: it imports the pages)
        super().__init__()
        self.window_ = window

    @property
    def project(self) -> Project | None:
        return self.window_.project

    @property
    def bridge(self):
        return self.window_.bridge

    def project_changed(self) -> None:
        """Called when a project is opened or closed."""
        self.refresh()

    def refresh(self) -> None:
        """Re-read what the page shows from the store."""

    def follow(self, job_id: int | None) -> None:
        """Show a job just started in its live view (the Jobs page, the job selected)."""
        if job_id is not None:
            self.window_.show_job(job_id)


class SortableItem(QTableWidgetItem):
    """A table cell that sorts by a number (or any key) instead of its display text."""

    def __init__(self, text: str, key: object = None):
        super().__init__(text)
        self.key = text if key is None else key

    def __lt__(self, other: QTableWidgetItem) -> bool:
        other_key = getattr(other, "key", other.text())
        try:
            return self.key < other_key
        except TypeError:
            return str(self.key) < str(other_key)


def record_table(columns: list[str], *, stretch: int = -1, single: bool = True) -> QTableWidget:
    """A read-only table of records: whole-row selection, no row numbers, one column taking the spare width."""
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(columns)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    if single:
        table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.verticalHeader().setVisible(False)
    table.horizontalHeader().setSectionResizeMode(stretch % len(columns), QHeaderView.ResizeMode.Stretch)
    return table


UNVALIDATED = "#94a3b8"  # the grey of a figure whose judge has no passing check


def notice_label() -> QLabel:
    """A boxed note for caveats (warnings, or plain information); plain text, since it quotes names."""
    label = QLabel("")
    label.setObjectName("warning")
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setWordWrap(True)
    label.hide()
    return label


def set_notice(label: QLabel, lines: list[str], *, level: str = "warning") -> None:
    """Show the lines (hide the label when there are none); level 'warning' (orange) or 'info' (blue)."""
    label.setText("\n".join(lines))
    label.setProperty("level", level)
    label.style().unpolish(label)
    label.style().polish(label)
    label.setVisible(bool(lines))


def mark_unvalidated(plot, text: str = "judge not validated", pos: tuple[float, float] | None = None) -> None:
    """Write a grey note across a pyqtgraph plot whose figures rest on an unvalidated judge (at `pos`, in
    data coordinates; by default the middle of the current view)."""
    import pyqtgraph as pg

    item = pg.TextItem(text, color=UNVALIDATED, anchor=(0.5, 0.5))
    font = item.textItem.font()
    font.setPointSize(16)
    font.setBold(True)
    item.textItem.setFont(font)
    plot.getPlotItem().vb.addItem(item, ignoreBounds=True)
    if pos is None:
        (x0, x1), (y0, y1) = plot.getPlotItem().vb.viewRange()
        pos = ((x0 + x1) / 2, (y0 + y1) / 2)
    item.setPos(*pos)
