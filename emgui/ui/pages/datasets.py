"""The Datasets page: import chat data, look through it, see its token lengths, derive subsets."""

from __future__ import annotations

import html
import json

from PySide6.QtCore import Qt, QUrl
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTabWidget,
    QTextBrowser,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from emgui.core.data import chats as chatdata
from emgui.core.errors import EmguiError
from emgui.core.project import search as fulltext
from emgui.ui.bridge import run_async
from emgui.ui.widgets import Page, SortableItem, heading, hint, record_table, show_error

PAGE_SIZE = 50
ROLE_COLORS = {"system": "#64748b", "user": "#1d4ed8", "assistant": "#047857"}


def _message_html(role: str, body: str) -> str:
    color = ROLE_COLORS.get(role, "#000")
    return (
        f'<p style="margin:6px 0 2px 0"><b style="color:{color}">{html.escape(role)}</b></p>'
        f'<pre style="white-space:pre-wrap; margin:0 0 8px 0; font-family:monospace">{html.escape(body)}</pre>'
    )


def conversation_html(messages: list[dict], first: int = 0, budget: int = 4 * chatdata.PREVIEW_CHARS) -> str:
    """A chat as HTML (all text escaped), from message `first` on, up to about `budget` characters.

    A message cut short for the preview (its `length` is more than the text it carries) gets a link to
    read it in pieces, and messages past the budget a link to the next ones: the view never lays out more
    than a few thousand characters per paragraph, nor much more in all (Qt's layout time grows with the
    square of a paragraph's length)."""
    parts = []
    if first > 0:
        parts.append(f'<p><a href="msgs:{max(0, first - 8)}">◀ earlier messages</a> (from message {first + 1})</p>')
    shown = 0
    for i in range(first, len(messages)):
        m = messages[i]
        if shown and shown + len(m["content"]) > budget:
            parts.append(
                f'<p style="color:#64748b">{len(messages) - i:,} more messages · '
                f'<a href="msgs:{i}">show the next messages ▶</a></p>'
            )
            break
        shown += len(m["content"])
        parts.append(_message_html(m["role"], m["content"]))
        length = m.get("length", len(m["content"]))
        if length > len(m["content"]):
            parts.append(
                f'<p style="color:#64748b; margin:0 0 8px 0">showing the first {len(m["content"]):,} of '
                f'{length:,} characters · <a href="piece:{i}:{len(m["content"])}">read on</a></p>'
            )
    return "".join(parts)


def piece_html(index: int, piece: dict) -> str:
    """One piece of a long message, with links to the neighbouring pieces and back to the chat."""
    start, end, length = piece["start"], piece["start"] + len(piece["content"]), piece["length"]
    size = chatdata.PREVIEW_CHARS
    links = ['<a href="chat">back to the chat</a>']
    if start > 0:
        links.append(f'<a href="piece:{index}:{max(0, start - size)}">◀ previous piece</a>')
    if end < length:
        links.append(f'<a href="piece:{index}:{end}">next piece ▶</a>')
    nav = f'<p style="color:#64748b">message {index + 1}: characters {start + 1:,}–{end:,} of {length:,} · ' + (
        " · ".join(links) + "</p>"
    )
    return nav + _message_html(piece["role"], piece["content"]) + nav


class DatasetsPage(Page):
    key = "datasets"
    title = "Datasets"

    def __init__(self, window) -> None:
        super().__init__(window)
        self.offset = 0
        self.total = 0
        self._page_request = 0  # answers to older page or piece requests are dropped
        self._piece_request = 0
        self._chat: tuple[int, list[dict]] | None = None  # (line, clipped messages) on show
        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 20, 24, 12)
        layout.addWidget(heading("Datasets"))

        row = QHBoxLayout()
        self.source_edit = QLineEdit()
        self.source_edit.setPlaceholderText(
            "chat .jsonl file, https URL, catalog id, or generated:insecure | generated:secure"
        )
        self.source_edit.returnPressed.connect(self.import_source)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self.browse)
        self.catalog = QComboBox()
        self.catalog.addItem("From the catalog…", None)
        for entry in chatdata.load_catalog():
            if entry.get("format") == "chat-jsonl":
                self.catalog.addItem(entry["name"], entry["id"])
        self.catalog.activated.connect(self._catalog_chosen)
        self.partial_box = QCheckBox("Import valid lines of a file with errors")
        import_button = QPushButton("Import")
        import_button.setObjectName("primary")
        import_button.clicked.connect(self.import_source)
        row.addWidget(self.source_edit, 1)
        row.addWidget(browse)
        row.addWidget(self.catalog)
        row.addWidget(import_button)
        layout.addLayout(row)
        layout.addWidget(self.partial_box)

        split = QSplitter(Qt.Orientation.Horizontal)
        self.table = record_table(["Name", "Kind", "Rows", "Made by"])
        self.table.setSortingEnabled(True)
        self.table.itemSelectionChanged.connect(self._dataset_selected)
        split.addWidget(self.table)

        self.tabs = QTabWidget()
        self.tabs.addTab(self._build_preview(), "Preview")
        self.tabs.addTab(self._build_lengths(), "Token lengths")
        self.tabs.addTab(self._build_derive(), "Derive")
        self.provenance = QTreeWidget()
        self.provenance.setHeaderLabels(["Provenance", ""])
        self.provenance.setColumnWidth(0, 320)
        self.tabs.addTab(self.provenance, "Provenance")
        split.addWidget(self.tabs)
        split.setSizes([380, 760])
        layout.addWidget(split, 1)
        self.status = hint("")
        layout.addWidget(self.status)

    # ----- building -----------------------------------------------------------------------------------
    def _build_preview(self) -> QWidget:
        box = QWidget()
        layout = QVBoxLayout(box)
        top = QHBoxLayout()
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search the chats…")
        self.search.returnPressed.connect(lambda: self._load_page(0))
        self.prev_button = QPushButton("◀")
        self.prev_button.clicked.connect(lambda: self._load_page(max(0, self.offset - PAGE_SIZE)))
        self.next_button = QPushButton("▶")
        self.next_button.clicked.connect(lambda: self._load_page(self.offset + PAGE_SIZE))
        self.page_label = QLabel("")
        top.addWidget(self.search, 1)
        top.addWidget(self.prev_button)
        top.addWidget(self.page_label)
        top.addWidget(self.next_button)
        layout.addLayout(top)
        inner = QSplitter(Qt.Orientation.Vertical)
        self.chat_list = QListWidget()
        self.chat_list.currentItemChanged.connect(self._chat_selected)
        self.chat_view = QTextBrowser()
        self.chat_view.setOpenLinks(False)  # its links page through long messages
        self.chat_view.anchorClicked.connect(self._link_clicked)
        inner.addWidget(self.chat_list)
        inner.addWidget(self.chat_view)
        inner.setSizes([220, 360])
        layout.addWidget(inner, 1)
        return box

    def _build_lengths(self) -> QWidget:
        import pyqtgraph as pg

        box = QWidget()
        layout = QVBoxLayout(box)
        top = QHBoxLayout()
        self.tokenizer_combo = QComboBox()
        self.length_button = QPushButton("Count tokens")
        self.length_button.clicked.connect(self.compute_lengths)
        top.addWidget(QLabel("Tokenizer of model:"))
        top.addWidget(self.tokenizer_combo, 1)
        top.addWidget(self.length_button)
        layout.addLayout(top)
        self.length_plot = pg.PlotWidget()
        self.length_plot.setLabel("bottom", "tokens per chat (chat template included)")
        self.length_plot.setLabel("left", "chats")
        layout.addWidget(self.length_plot, 1)
        self.length_label = hint("Choose a model and count: lengths use that model's own chat template.")
        layout.addWidget(self.length_label)
        return box

    def _build_derive(self) -> QWidget:
        box = QWidget()
        form = QFormLayout(box)
        self.subset_n = QSpinBox(minimum=1, maximum=10_000_000, value=100)
        self.seed = QSpinBox(minimum=0, maximum=2**31 - 1, value=0)
        self.val_fraction = QDoubleSpinBox(minimum=0.01, maximum=0.9, singleStep=0.05, value=0.1)
        self.subset_button = QPushButton("Random subset")
        self.subset_button.clicked.connect(lambda: self._derive({"op": "subset", "n": self.subset_n.value()}))
        split_button = QPushButton("Train / validation split")
        split_button.clicked.connect(
            lambda: self._derive({"op": "split", "val_fraction": self.val_fraction.value()})
        )
        self.concat_list = QListWidget()
        self.concat_list.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        concat_button = QPushButton("Concatenate selected")
        concat_button.clicked.connect(self._concat)
        form.addRow("Subset size", self.subset_n)
        form.addRow("Seed", self.seed)
        form.addRow("", self.subset_button)
        form.addRow("Validation fraction", self.val_fraction)
        form.addRow("", split_button)
        form.addRow("Concatenate", self.concat_list)
        form.addRow("", concat_button)
        form.addRow(
            hint("Derived datasets are new datasets that remember where they came from (see Provenance).")
        )
        return box

    # ----- data ----------------------------------------------------------------------------------------
    def project_changed(self) -> None:
        if self.bridge is not None:
            self.bridge.jobStatus.connect(self._job_status)
        self.refresh()

    def _job_status(self, job_id: int, status: str) -> None:
        if self.project is None or status in ("queued", "running"):
            return
        job = self.project.get_job(job_id)
        if job["kind"] in ("dataset-import", "dataset-derive"):
            if status == "failed":
                show_error(self, "Dataset job failed", job["error"] or "")
            self.status.setText(f"job #{job_id} {job['kind']}: {status}")
            self.refresh()

    def _job_of(self, dataset: dict) -> dict | None:
        if not dataset["job_id"]:
            return None
        try:
            return self.project.get_job(dataset["job_id"])
        except EmguiError:  # the job row was deleted: the dataset stays
            return None

    def refresh(self) -> None:
        self.table.setSortingEnabled(False)
        self.table.setRowCount(0)
        self.concat_list.clear()
        self.tokenizer_combo.clear()
        if self.project is None:
            self.status.setText("Open a project to manage its datasets.")
            return
        datasets = self.project.list_datasets()
        self.table.setRowCount(len(datasets))
        for r, d in enumerate(datasets):
            job = self._job_of(d)
            made = f"{job['kind']} #{d['job_id']}" if job else "by hand"
            cells = [
                SortableItem(d["name"]),
                SortableItem(d["kind"]),
                SortableItem(str(d["n_rows"] or 0), d["n_rows"] or 0),
                SortableItem(made),
            ]
            cells[0].setData(Qt.ItemDataRole.UserRole, d["id"])
            for c, item in enumerate(cells):
                self.table.setItem(r, c, item)
            if d["kind"] == "chat":
                item = QListWidgetItem(d["name"])
                item.setData(Qt.ItemDataRole.UserRole, d["id"])
                self.concat_list.addItem(item)
        self.table.resizeColumnsToContents()
        self.table.setSortingEnabled(True)
        for m in self.project.list_models():
            self.tokenizer_combo.addItem(m["name"], m["id"])
        if not self.table.selectionModel().selectedRows() and datasets:
            self.table.selectRow(0)

    def selected_dataset(self) -> dict | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows or self.project is None:
            return None
        return self.project.get_dataset(self.table.item(rows[0].row(), 0).data(Qt.ItemDataRole.UserRole))

    def _dataset_selected(self) -> None:
        self.search.clear()
        self._load_page(0)
        self._show_provenance()
        self.length_plot.clear()

    def _load_page(self, offset: int) -> None:
        """Read one page of chats off the GUI thread (a file may be large, or hold a 10 MB chat); the
        list shows each chat's first user turn and the preview a bounded prefix of each message."""
        self.chat_list.clear()
        self.chat_view.clear()
        self._chat = None
        self._page_request += 1
        request = self._page_request
        dataset = self.selected_dataset()
        if dataset is None or dataset["kind"] != "chat":
            self.page_label.setText("")
            return
        self.page_label.setText("reading…")
        self.prev_button.setEnabled(False)
        self.next_button.setEnabled(False)
        run_async(
            fulltext.chat_page,  # full-text search (FTS5) when there is a query, then one page of the file
            self.project,
            dataset,
            offset,
            PAGE_SIZE,
            self.search.text().strip() or None,
            on_done=lambda result: self._show_page(request, offset, *result),
            on_error=lambda error: self._page_failed(request, error),
        )

    def _show_page(self, request: int, offset: int, rows: list, total: int) -> None:
        if request != self._page_request:
            return
        self.offset, self.total = offset, total
        for line, messages in rows:
            first_user = next((m["content"] for m in messages if m["role"] == "user"), "")
            item = QListWidgetItem(f"{line:>5}  {first_user[:140].replace(chr(10), ' ')}")
            item.setData(Qt.ItemDataRole.UserRole, messages)
            item.setData(Qt.ItemDataRole.UserRole + 1, line)
            self.chat_list.addItem(item)
        end = min(offset + PAGE_SIZE, self.total)
        self.page_label.setText(f"{offset + 1 if self.total else 0}–{end} of {self.total}")
        self.prev_button.setEnabled(offset > 0)
        self.next_button.setEnabled(end < self.total)
        if self.chat_list.count():
            self.chat_list.setCurrentRow(0)

    def _page_failed(self, request: int, error: str) -> None:
        if request == self._page_request:
            self.page_label.setText("")
            self.chat_view.setPlainText(error.splitlines()[0])

    def _chat_selected(self, item: QListWidgetItem | None) -> None:
        self._piece_request += 1
        if item is None:
            self._chat = None
            return
        self._chat = (item.data(Qt.ItemDataRole.UserRole + 1), item.data(Qt.ItemDataRole.UserRole))
        self.chat_view.setHtml(conversation_html(self._chat[1]))

    def _link_clicked(self, url: QUrl) -> None:
        target = url.toString()
        if target == "chat" and self._chat is not None:
            self.chat_view.setHtml(conversation_html(self._chat[1]))
        elif target.startswith("msgs:") and self._chat is not None:
            self.chat_view.setHtml(conversation_html(self._chat[1], int(target.split(":")[1])))
        elif target.startswith("piece:") and self._chat is not None:
            _, index, start = target.split(":")
            self.show_piece(int(index), int(start))

    def show_piece(self, index: int, start: int) -> None:
        """Show characters [start, start + PREVIEW_CHARS) of message `index` of the chat on show."""
        dataset = self.selected_dataset()
        if dataset is None or self._chat is None:
            return
        self._piece_request += 1
        request = self._piece_request
        run_async(
            chatdata.message_piece,
            self.project.abspath(dataset["path"]),
            self._chat[0],
            index,
            start,
            on_done=lambda piece: request == self._piece_request and self.chat_view.setHtml(piece_html(index, piece)),
            on_error=lambda error: request == self._piece_request and self.chat_view.setPlainText(error.splitlines()[0]),
        )

    def _show_provenance(self) -> None:
        self.provenance.clear()
        dataset = self.selected_dataset()
        if dataset is None:
            return
        self.provenance.addTopLevelItem(
            self._node(self.project.provenance("datasets", dataset["id"]), "dataset")
        )
        info = QTreeWidgetItem(["info", json.dumps(dataset["info"])])
        self.provenance.addTopLevelItem(info)
        self.provenance.expandAll()

    def _node(self, node: dict, label: str) -> QTreeWidgetItem:
        job = node.get("job")
        item = QTreeWidgetItem(
            [f"{label}: {node['name']}", f"job #{job['id']} {job['kind']}" if job else "by hand"]
        )
        if job:
            item.addChild(QTreeWidgetItem(["parameters", json.dumps(job["params"])]))
        for child in node.get("inputs", []):
            if child["type"] != "dataset" or child["id"] != node["id"]:
                item.addChild(self._node(child, child.get("role") or child["type"]))
        return item

    # ----- actions ---------------------------------------------------------------------------------------
    def _catalog_chosen(self, index: int) -> None:
        entry_id = self.catalog.itemData(index)
        if entry_id:
            self.source_edit.setText(entry_id)

    def browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Chat JSONL file", "", "JSON lines (*.jsonl *.json);;All files (*)"
        )
        if path:
            self.source_edit.setText(path)

    def import_source(self) -> None:
        source = self.source_edit.text().strip()
        if not source or self.bridge is None:
            return
        params = {"source": source}
        if self.partial_box.isChecked():
            params["allow_partial"] = True
        job_id = self.bridge.submit("dataset-import", params)
        self.status.setText(f"importing {source} (job #{job_id})…")
        self.source_edit.clear()

    def _derive(self, params: dict) -> None:
        dataset = self.selected_dataset()
        if dataset is None or self.bridge is None:
            show_error(self, "No dataset", "Select a dataset to derive from.")
            return
        self.bridge.submit("dataset-derive", {**params, "dataset": dataset["id"], "seed": self.seed.value()})

    def _concat(self) -> None:
        ids = [item.data(Qt.ItemDataRole.UserRole) for item in self.concat_list.selectedItems()]
        if len(ids) < 2 or self.bridge is None:
            show_error(self, "Concatenate", "Select at least two chat datasets in the list.")
            return
        self.bridge.submit("dataset-derive", {"op": "concat", "datasets": ids})

    def compute_lengths(self) -> None:
        dataset, model_id = self.selected_dataset(), self.tokenizer_combo.currentData()
        if dataset is None or model_id is None:
            show_error(self, "Token lengths", "Select a dataset and a model whose tokenizer to use.")
            return
        from emgui.core.data.datasets import token_lengths

        model = self.project.get_model(model_id)
        self.length_button.setEnabled(False)
        self.length_label.setText(f"Counting tokens with {model['name']}'s tokenizer…")
        run_async(
            token_lengths,
            self.project,
            dataset,
            model,
            on_done=self._show_lengths,
            on_error=lambda e: (
                self.length_button.setEnabled(True),
                self.length_label.setText(e.splitlines()[0]),
            ),
        )

    def _show_lengths(self, lengths: list[int]) -> None:
        import numpy as np
        import pyqtgraph as pg

        self.length_button.setEnabled(True)
        self.length_plot.clear()
        if not lengths:
            self.length_label.setText("no chats")
            return
        counts, edges = np.histogram(lengths, bins=min(40, max(5, len(set(lengths)))))
        width = (edges[1] - edges[0]) * 0.9
        self.length_plot.addItem(
            pg.BarGraphItem(x=(edges[:-1] + edges[1:]) / 2, height=counts, width=width, brush="#3b82f6")
        )
        arr = np.asarray(lengths)
        self.length_label.setText(
            f"{len(arr)} chats · median {np.median(arr):.0f} · 95th percentile {np.percentile(arr, 95):.0f} · "
            f"max {arr.max()} tokens"
        )
