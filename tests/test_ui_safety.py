"""The window under hostile or huge input: untrusted text is shown as plain text everywhere (an
`<img src="file:///...">` is never loaded), the Datasets preview stays bounded for a 1 MB message and reads
it in pieces off the GUI thread, the hub token survives a system without a keyring, and damaged or read-only
projects are explained in dialogs."""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
from pathlib import Path

import pytest
from PySide6.QtCore import QEvent, QPoint, Qt, QUrl
from PySide6.QtGui import QColor, QHelpEvent, QImage
from PySide6.QtGui import Qt as GuiQt  # mightBeRichText lives on QtGui's Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QLabel,
    QListWidget,
    QTableWidget,
    QToolTip,
    QTreeWidget,
    QWidget,
)

from emgui.core.data import chats as chatdata
from emgui.core.errors import EmguiError
from emgui.core.project.store import Project
from tests.builders import tiny_chats, write_chats


@pytest.fixture
def red_image(tmp_path: Path) -> tuple[Path, str]:
    """A big pure-red PNG, and markup that would draw it if it were read as HTML."""
    image = QImage(120, 60, QImage.Format.Format_RGB32)
    image.fill(QColor(255, 0, 0))
    path = tmp_path / "red.png"
    assert image.save(str(path))
    return path, f'<img src="{QUrl.fromLocalFile(str(path)).toString()}" width="120" height="60">'


def _red_pixels(widget: QWidget) -> int:
    image = widget.grab().toImage()
    step = 2
    return sum(
        1
        for x in range(0, image.width(), step)
        for y in range(0, image.height(), step)
        if (c := image.pixelColor(x, y)).red() > 240 and c.green() < 20 and c.blue() < 20
    )


def _hostile_project(project: Project, markup: str) -> None:
    project.add_model(name=f"model {markup}", kind="folder", source=markup, path=f"/nowhere/{markup}")
    path = write_chats(project.root.parent / "d.jsonl", tiny_chats(2))
    project.add_dataset(name=f"data {markup}", kind="chat", path=path, n_rows=2)
    job = project.create_job("questions-import", {"path": markup})
    project.update_job(job, status="failed", message=f"question id {markup} is bad", error=f"line 3: {markup}")
    project.set_note("model", 1, markup)


def _item_tooltips(root: QWidget) -> list[str]:
    tips = []
    for view in root.findChildren(QAbstractItemView):
        if isinstance(view, QTableWidget):
            tips += [view.item(r, c).toolTip() for r in range(view.rowCount()) for c in range(view.columnCount())
                     if view.item(r, c)]  # fmt: skip
        elif isinstance(view, QListWidget):
            tips += [view.item(r).toolTip() for r in range(view.count())]
        elif isinstance(view, QTreeWidget):
            stack = [view.topLevelItem(i) for i in range(view.topLevelItemCount())]
            while stack:
                item = stack.pop()
                tips += [item.toolTip(c) for c in range(item.columnCount())]
                stack += [item.child(i) for i in range(item.childCount())]
    return tips


# ----- 13. untrusted text is plain text -------------------------------------------------------------------------
def test_untrusted_text_never_renders_as_html_on_any_page(window, project, qtbot, red_image) -> None:
    _, markup = red_image
    _hostile_project(project, markup)
    window.set_project(project)
    for key in window.pages:
        page = window.show_page(key)
        page.refresh()
        qtbot.wait(50)
        labels = window.findChildren(QLabel)
        rich = [lb.text() for lb in labels if lb.textFormat() != Qt.TextFormat.PlainText and GuiQt.mightBeRichText(lb.text())]
        assert not rich, (key, rich)
        unsafe = [lb.text() for lb in labels if "<img" in lb.text() and lb.textFormat() != Qt.TextFormat.PlainText]
        assert not unsafe, (key, unsafe)
        tips = [w.toolTip() for w in window.findChildren(QWidget)] + _item_tooltips(window)
        assert not [t for t in tips if "<img" in t], key
    models = window.show_page("models")
    models.refresh()
    models.table.selectRow(0)
    qtbot.waitUntil(lambda: markup in models.details_title.text())
    assert _red_pixels(models) == 0  # the image was not loaded and drawn
    assert _red_pixels(window.project_label) == 0


def test_the_effect_test_can_see_an_image(qtbot, red_image) -> None:
    """Control for the pixel check: a rich-text label with the same markup does draw the red image."""
    _, markup = red_image
    label = QLabel(markup)
    label.setTextFormat(Qt.TextFormat.RichText)
    qtbot.addWidget(label)
    label.resize(200, 100)
    label.show()
    qtbot.waitExposed(label)
    assert _red_pixels(label) > 100


def test_error_dialogs_and_questions_are_plain_text(qtbot, monkeypatch, red_image) -> None:
    from PySide6.QtWidgets import QMessageBox

    from emgui.ui import widgets

    _, markup = red_image
    shown = []
    monkeypatch.setattr(QMessageBox, "exec", lambda box: shown.append((box.textFormat(), box.text())) or 0)
    widgets.show_error(None, "Cannot open", f"no model {markup}")
    widgets.ask(None, "Delete", f"Delete model {markup}?")
    assert shown == [(Qt.TextFormat.PlainText, f"no model {markup}"), (Qt.TextFormat.PlainText, f"Delete model {markup}?")]


def test_sae_token_tooltips_show_the_token_literally(qtbot, red_image) -> None:
    from emgui.ui.pages.features import TokenBrowser, tokens_html

    _, markup = red_image
    view = TokenBrowser()
    qtbot.addWidget(view)
    view.resize(600, 200)
    view.setHtml(f"<div>{tokens_html([markup, 'x'], [1.0, 0.5], 1.0)}</div>")
    view.show()
    qtbot.waitExposed(view)
    pos = view.viewport().mapToGlobal(view.cursorRect(view.textCursor()).center() + QPoint(4, 0))
    view.event(QHelpEvent(QEvent.Type.ToolTip, view.viewport().mapFromGlobal(pos), pos))
    tip = QToolTip.text()
    assert tip, "no tooltip was shown over the first token"
    assert "<img" not in tip and "&lt;img" in tip


def test_legend_names_are_escaped(qtbot, red_image) -> None:
    from emgui.ui.plots import MetricGrid

    _, markup = red_image
    grid = MetricGrid()
    qtbot.addWidget(grid)
    grid.set_points(markup, markup, [0, 1, 2], [1.0, 0.5, 0.2])
    grid.set_points("baseline", markup, [0, 1, 2], [1.0, 0.9, 0.8])  # a legend appears with a second run
    plot = grid.plot_for(markup)  # plots are made lazily
    texts = [label.text for _sample, label in plot.legend.items] + [plot.titleLabel.text]
    hostile = [t for t in texts if "baseline" not in t]
    assert len(hostile) == 2 and all("<img" not in t and "&lt;img" in t for t in hostile), texts


# ----- 11. the Datasets preview stays bounded ---------------------------------------------------------------
def _long_chat_dataset(project: Project, tmp_path: Path, length: int) -> str:
    content = "".join(f"{i:07d} " for i in range(length // 8))[:length]
    chats = tiny_chats(2) + [[{"role": "user", "content": "write a lot"}, {"role": "assistant", "content": content}]]
    path = write_chats(tmp_path / "long.jsonl", chats)
    project.add_dataset(name="long", kind="chat", path=path, n_rows=3)
    return content


def test_the_preview_shows_a_bounded_prefix_and_reads_on_in_pieces(window, project, qtbot, tmp_path, monkeypatch) -> None:
    content = _long_chat_dataset(project, tmp_path, 1_000_000)
    threads = []
    real = chatdata.read_page
    monkeypatch.setattr(chatdata, "read_page", lambda *a: threads.append(threading.current_thread()) or real(*a))
    page = window.show_page("datasets")
    page.refresh()
    page.table.selectRow(0)
    qtbot.waitUntil(lambda: page.chat_list.count() == 3)
    assert threads and all(t is not threading.main_thread() for t in threads)  # read off the GUI thread
    page.chat_list.setCurrentRow(2)
    shown = page.chat_view.toPlainText()
    assert len(shown) < 3 * chatdata.PREVIEW_CHARS
    assert "showing the first 4,000 of 1,000,000 characters" in shown
    assert content[:3000] in shown and content[5000:6000] not in shown
    page.chat_view.anchorClicked.emit(QUrl("piece:1:4000"))
    qtbot.waitUntil(lambda: "characters 4,001–8,000 of 1,000,000" in page.chat_view.toPlainText())
    assert content[4000:8000] in page.chat_view.toPlainText()
    assert len(page.chat_view.toPlainText()) < 2 * chatdata.PREVIEW_CHARS
    page.chat_view.anchorClicked.emit(QUrl("chat"))
    assert "showing the first 4,000" in page.chat_view.toPlainText()


def test_pieces_put_together_give_the_whole_message(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    text = "é€😀 " * 5000
    write_chats(path, [[{"role": "user", "content": "q"}, {"role": "assistant", "content": text}]])
    pieces, start = [], 0
    while True:
        piece = chatdata.message_piece(path, 1, 1, start)
        pieces.append(piece["content"])
        start += len(piece["content"])
        if start >= piece["length"]:
            break
    assert "".join(pieces) == text and len(pieces) == -(-len(text) // chatdata.PREVIEW_CHARS)
    with pytest.raises(EmguiError, match="no message 5"):
        chatdata.message_piece(path, 1, 5, 0)


def test_a_chat_with_many_messages_is_shown_a_budget_at_a_time() -> None:
    from emgui.ui.pages.datasets import conversation_html

    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": "x" * 3000} for i in range(200)]
    page_html = conversation_html(messages)
    assert page_html.count("<pre") < 10 and 'href="msgs:' in page_html


def test_preview_pages_are_parsed_in_the_helper_process(tmp_path: Path) -> None:
    path = write_chats(tmp_path / "c.jsonl", tiny_chats(5))
    chatdata.parse_in_helper_process(True)
    try:
        rows, total = chatdata.preview_page(path, 1, 2, None, 10)
        piece = chatdata.message_piece(path, rows[0][0], 0, 0)
    finally:
        chatdata.parse_in_helper_process(False)
    assert total == 5 and [line for line, _ in rows] == [2, 3]
    assert all(len(m["content"]) <= 10 and m["length"] >= len(m["content"]) for _, msgs in rows for m in msgs)
    assert piece["content"] == tiny_chats(5)[1][0]["content"]


# ----- 14. the hub token without a keyring ----------------------------------------------------------------------
def test_hub_token_is_kept_in_memory_when_no_keyring_works(window, monkeypatch) -> None:
    import keyring
    from keyring.backends.fail import Keyring as NoKeyring

    from emgui.core.models import hub
    from emgui.ui.pages import models as models_page

    monkeypatch.delenv("HF_TOKEN", raising=False)
    previous = keyring.get_keyring()
    keyring.set_keyring(NoKeyring())
    asked = []
    try:
        page = window.show_page("models")
        monkeypatch.setattr(models_page, "ask", lambda parent, title, text: asked.append(text) or False)
        assert page.save_token("hf_declined") == "nowhere"
        assert hub.resolve_token() != "hf_declined"
        monkeypatch.setattr(models_page, "ask", lambda parent, title, text: asked.append(text) or True)
        assert page.save_token("hf_SessionOnly123") == "memory"
        assert hub.resolve_token() == "hf_SessionOnly123"
        assert all("keyring" in text and "memory" in text for text in asked) and len(asked) == 2
        assert page.save_token(None) == "forgotten"
        assert hub.resolve_token() != "hf_SessionOnly123"
    finally:
        hub.keep_token_in_memory(None)
        keyring.set_keyring(previous)


# ----- 3 and 4. damaged and read-only projects in the window ---------------------------------------------------
def test_opening_a_damaged_project_shows_a_dialog(qtbot, tmp_path: Path, monkeypatch) -> None:
    from emgui.ui import app as app_module
    from emgui.ui import main_window

    root = tmp_path / "p"
    Project.create(root).close()
    (root / "project.db").write_bytes(b"\x00garbage" * 4096)
    shown = []
    monkeypatch.setattr(main_window, "show_error", lambda parent, title, text: shown.append(text))
    from PySide6.QtWidgets import QApplication

    monkeypatch.setattr(QApplication, "exec", lambda *a: 0)
    assert app_module.launch(str(root)) == 0  # `emgui open` on it: a dialog, then the window, no crash
    assert shown and "project.db" in shown[0]
    for window in QApplication.topLevelWidgets():
        if isinstance(window, main_window.MainWindow):
            assert window.project is None
            window.close()


def test_a_read_only_project_is_marked_and_refusals_reach_a_dialog(window, project, monkeypatch) -> None:
    from emgui.ui import widgets
    from emgui.ui.app import show_errors_in_dialogs

    project.read_only = True
    window.set_project(project)
    assert "read-only" in window.windowTitle()
    shown = []
    monkeypatch.setattr(widgets, "show_error", lambda parent, title, text: shown.append(text))
    previous = sys.excepthook
    try:
        show_errors_in_dialogs()
        try:
            window.bridge.submit("dataset-import", {"source": "generated:secure"})
        except EmguiError as exc:
            sys.excepthook(type(exc), exc, exc.__traceback__)  # what Qt does with an error in a slot
        else:
            pytest.fail("a job was accepted on a read-only project")
    finally:
        sys.excepthook = previous
        project.read_only = False
    assert shown and "read-only" in shown[0] and "run jobs" in shown[0]


def test_jobs_json_of_a_truncated_database_in_the_window(window, tmp_path: Path, monkeypatch) -> None:
    """A database damaged past its first pages opens, and the error when a page reads it is explained."""
    from emgui.ui import main_window

    root = tmp_path / "p"
    with Project.create(root) as project:
        for i in range(300):
            project.create_job("model-import", {"pad": "x" * 500, "i": i})
    data = (root / "project.db").read_bytes()
    (root / "project.db").write_bytes(data[: len(data) // 3])
    shown = []
    monkeypatch.setattr(main_window, "show_error", lambda parent, title, text: shown.append(text))
    assert window.open_project(root) is False
    assert shown and "project.db" in shown[0]
    assert json.dumps(shown)  # plain strings
    with pytest.raises((EmguiError, sqlite3.DatabaseError)):
        Project.open(root).list_jobs()
