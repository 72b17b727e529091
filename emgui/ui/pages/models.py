"""The Models page: add models from the hub, a folder or a GGUF file; see their size, shape and origin."""

from __future__ import annotations

import json

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from emgui.core.errors import EmguiError
from emgui.ui.widgets import (
    Page,
    SortableItem,
    ask,
    heading,
    hint,
    human_bytes,
    human_count,
    plain_label,
    record_table,
    show_error,
)

COLUMNS = ["Name", "Kind", "Architecture", "Parameters", "Precision", "Size", "Location"]
MODEL_JOB_KINDS = ("model-import", "model-download")


class TransferRow(QWidget):
    """A running import or download: progress, speed/ETA message, cancel."""

    def __init__(self, page: ModelsPage, job: dict):
        super().__init__()
        self.job_id = job["id"]
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 2, 0, 2)
        source = job["params"].get("repo") or job["params"].get("path", "")
        self.label = plain_label(QLabel(f"#{job['id']} {job['kind']}: {source}"))
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setValue(int(job["progress"] * 1000))
        self.message = plain_label(QLabel(job["message"]))
        self.message.setObjectName("hint")
        cancel = QPushButton("Cancel")
        cancel.clicked.connect(lambda: page.bridge and page.bridge.cancel(self.job_id))
        layout.addWidget(self.label, 2)
        layout.addWidget(self.bar, 2)
        layout.addWidget(self.message, 3)
        layout.addWidget(cancel)

    def update_progress(self, fraction: float, message: str) -> None:
        self.bar.setValue(int(fraction * 1000))
        self.message.setText(message)


DETAIL_LABELS = {
    "kind": "Kind", "source": "Source", "revision": "Revision", "architecture": "Architecture",
    "n_params": "Parameters", "dtype": "Weights' precision", "size_bytes": "Size on disk", "model_type": "Model type",
    "n_layers": "Layers", "d_model": "Width (hidden size)", "vocab_size": "Vocabulary (tokens)",
    "weight_format": "Weight format", "adapter": "Adapter", "base_model": "Base model",
    "needs_remote_code": "Needs its own code", "peft_type": "Adapter type", "weight_files": "Weight files",
    "gguf": "Converted from", "trust_remote_code": "Its own code allowed to run",
}  # fmt: skip


def detail_text(key: str, value: object) -> str | None:
    """A model fact for people: 135 M (134,515,008), 541.6 MB, yes/no; None leaves the row out."""
    if value is None or value == "" or value == []:
        return None
    if key == "n_params" and isinstance(value, int):
        return f"{human_count(value)} ({value:,})"
    if key == "size_bytes" and isinstance(value, (int, float)):
        return human_bytes(value)
    if key == "gguf" and isinstance(value, dict):
        quant = str(value.get("quantization") or "?")
        bits = f"{quant[1]}-bit " if len(quant) > 1 and quant[0] == "Q" and quant[1].isdigit() else ""
        return (
            f"a {bits}GGUF file ({quant}, {human_bytes(value.get('size_bytes'))}): its weights were dequantised "
            "once to full precision, so this model is the quantised one stored unquantised"
        )
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return json.dumps(value) if isinstance(value, dict) else str(value)


class ModelsPage(Page):
    key = "models"
    title = "Models"

    def __init__(self, window) -> None:
        super().__init__(window)
        self.transfers: dict[int, TransferRow] = {}
        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 20, 24, 12)
        layout.addWidget(heading("Models"))

        add_row = QHBoxLayout()
        self.source_edit = QLineEdit()
        self.source_edit.setPlaceholderText(
            "Hugging Face repo id, e.g. HuggingFaceTB/SmolLM2-135M-Instruct[@revision]"
        )
        self.source_edit.returnPressed.connect(self.download)
        self.download_button = QPushButton("Download")
        self.download_button.setObjectName("primary")
        self.download_button.clicked.connect(self.download)
        folder_button = QPushButton("Import folder…")
        folder_button.clicked.connect(self.import_folder)
        gguf_button = QPushButton("Import GGUF…")
        gguf_button.clicked.connect(self.import_gguf)
        token_button = QPushButton("Hub token…")
        token_button.clicked.connect(self.edit_token)
        add_row.addWidget(self.source_edit, 1)
        for button in (self.download_button, folder_button, gguf_button, token_button):
            add_row.addWidget(button)
        layout.addLayout(add_row)
        opts = QHBoxLayout()
        self.trust_box = QCheckBox("Trust remote code")
        self.trust_box.setToolTip("Let the model repo run its own Python code. Only for sources you trust.")
        self.pickle_box = QCheckBox("Allow pickle weights")
        self.pickle_box.setToolTip(".bin/.pt checkpoints can run code when loaded; safetensors cannot.")
        opts.addWidget(self.trust_box)
        opts.addWidget(self.pickle_box)
        opts.addStretch(1)
        layout.addLayout(opts)

        self.transfer_box = QVBoxLayout()
        layout.addLayout(self.transfer_box)

        split = QSplitter(Qt.Orientation.Vertical)
        self.table = record_table(COLUMNS)
        self.table.setSortingEnabled(True)
        self.table.itemSelectionChanged.connect(self._show_details)
        split.addWidget(self.table)

        details = QWidget()
        dlayout = QVBoxLayout(details)
        dlayout.setContentsMargins(0, 6, 0, 0)
        head = QHBoxLayout()
        self.details_title = heading("Select a model", 2)
        self.delete_button = QPushButton("Delete…")
        self.delete_button.setEnabled(False)
        self.delete_button.clicked.connect(self.delete_selected)
        head.addWidget(self.details_title, 1)
        head.addWidget(self.delete_button)
        dlayout.addLayout(head)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Provenance and details", ""])
        self.tree.setColumnWidth(0, 320)
        dlayout.addWidget(self.tree)
        split.addWidget(details)
        split.setSizes([380, 260])
        layout.addWidget(split, 1)
        self.disk_label = hint("")
        layout.addWidget(self.disk_label)

    # ----- project and signals ----------------------------------------------------------------------
    def project_changed(self) -> None:
        for row in self.transfers.values():
            row.deleteLater()
        self.transfers.clear()
        if self.bridge is not None:
            self.bridge.jobStatus.connect(self._on_job_status)
            self.bridge.jobProgress.connect(self._on_job_progress)
        self.refresh()

    def _on_job_status(self, job_id: int, status: str) -> None:
        if self.project is None:
            return
        job = self.project.get_job(job_id)
        if job["kind"] not in MODEL_JOB_KINDS:
            return
        if status in ("queued", "running") and job_id not in self.transfers:
            row = TransferRow(self, job)
            self.transfers[job_id] = row
            self.transfer_box.addWidget(row)
        elif status not in ("queued", "running") and job_id in self.transfers:
            self.transfers.pop(job_id).deleteLater()
            if status == "failed":
                show_error(self, "Model import failed", job["error"] or "unknown error")
            self.refresh()

    def _on_job_progress(self, job_id: int, fraction: float, message: str) -> None:
        if job_id in self.transfers:
            self.transfers[job_id].update_progress(fraction, message)

    # ----- actions -----------------------------------------------------------------------------------
    def _submit(self, source: str) -> None:
        if self.project is None or self.bridge is None:
            show_error(self, "No project", "Open or create a project first.")
            return
        from emgui.core.models import job_for_source

        try:
            kind, params = job_for_source(source)
        except EmguiError as exc:
            show_error(self, "Cannot add model", str(exc))
            return
        if self.trust_box.isChecked():
            params["trust_remote_code"] = True
        if self.pickle_box.isChecked():
            params["allow_pickle"] = True
        self.bridge.submit(kind, params)

    def download(self) -> None:
        source = self.source_edit.text().strip()
        if source:
            self._submit(source)
            self.source_edit.clear()

    def import_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Model folder (config.json + weights)")
        if path:
            self._submit(path)

    def import_gguf(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "GGUF model file", "", "GGUF files (*.gguf)")
        if path:
            self._submit(path)

    def edit_token(self) -> None:
        token, ok = QInputDialog.getText(
            self,
            "Hugging Face token",
            "Token (kept in the system keyring; empty to forget it):",
            QLineEdit.EchoMode.Password,
        )
        if ok:
            self.save_token(token.strip() or None)

    def save_token(self, token: str | None) -> str:
        """Keep the token in the system keyring; where no keyring backend works, say so and offer to keep
        it in memory while the app runs. Returns where it went: keyring, memory, forgotten or nowhere."""
        from emgui.core import hub

        if hub.store_token(token):
            hub.keep_token_in_memory(None)
            return "keyring" if token else "forgotten"
        if not token:
            hub.keep_token_in_memory(None)
            return "forgotten"
        keep = ask(
            self,
            "No keyring",
            "No working system keyring was found, so the token cannot be saved.\n\n"
            "Keep it in memory for as long as emgui runs? You will need to enter it again next time "
            "(or set HF_TOKEN in the environment).",
        )
        if keep:
            hub.keep_token_in_memory(token)
            return "memory"
        return "nowhere"

    def selected_model(self) -> dict | None:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        if not rows or self.project is None:
            return None
        model_id = self.table.item(rows[0].row(), 0).data(Qt.ItemDataRole.UserRole)
        return self.project.get_model(model_id)

    def delete_selected(self) -> None:
        model = self.selected_model()
        if model is None:
            return
        owned = self.project.model_owns_files(model)
        frees = (
            human_bytes(model["size_bytes"])
            if owned
            else f"nothing: its files ({self.project.model_path(model)}) are not the project's alone and stay"
        )
        if not ask(self, "Delete model", f"Delete model '{model['name']}'? This frees {frees}."):
            return
        try:
            self.project.delete_model(model["id"])
        except EmguiError as exc:
            show_error(self, "Cannot delete", str(exc))
        self.refresh()

    # ----- views -------------------------------------------------------------------------------------
    def refresh(self) -> None:
        project = self.project
        self.table.setSortingEnabled(False)
        self.table.setRowCount(0)
        if project is None:
            self.disk_label.setText("Open a project to manage its models.")
            return
        from emgui.core.models import disk_use

        models = project.list_models()
        self.table.setRowCount(len(models))
        for r, m in enumerate(models):
            values = [
                m["name"],
                m["kind"],
                m["architecture"] or "?",
                human_count(m["n_params"]),
                m["dtype"] or "?",
                human_bytes(m["size_bytes"]),
                str(project.model_path(m)),
            ]
            keys = {3: m["n_params"] or 0, 5: m["size_bytes"] or 0}
            for c, value in enumerate(values):
                item = SortableItem(value, keys.get(c))
                if c == 0:
                    item.setData(Qt.ItemDataRole.UserRole, m["id"])
                self.table.setItem(r, c, item)
        self.table.resizeColumnsToContents()
        self.table.setSortingEnabled(True)
        if models and not self.table.selectionModel().selectedRows():
            self.table.selectRow(0)
        use = disk_use(project)
        self.disk_label.setText(
            f"{len(models)} model{'s' if len(models) != 1 else ''} · {human_bytes(use['total'])} on disk "
            f"({human_bytes(use['owned'])} inside the project, {human_bytes(use['external'])} shared, e.g. the HF cache)"
        )
        for job in project.query(
            "SELECT * FROM jobs WHERE status IN ('queued','running') AND kind IN (?, ?)", MODEL_JOB_KINDS
        ):
            if job["id"] not in self.transfers and self.bridge and job["id"] in self.bridge.active_jobs():
                self._on_job_status(job["id"], job["status"])

    def _show_details(self) -> None:
        model = self.selected_model()
        self.tree.clear()
        self.delete_button.setEnabled(model is not None)
        if model is None:
            self.details_title.setText("Select a model")
            return
        self.details_title.setText(model["name"])
        info = QTreeWidgetItem(["Details"])
        facts = {k: model[k] for k in ("kind", "source", "revision", "architecture", "n_params", "dtype", "size_bytes")}
        facts.update({k: v for k, v in (model["info"] or {}).items() if k not in facts})
        facts["trust_remote_code"] = bool(model["trust_remote_code"])
        for key, value in facts.items():
            text = detail_text(key, value)
            if text is not None:
                info.addChild(QTreeWidgetItem([DETAIL_LABELS.get(key, key.replace("_", " ")), text]))
        self.tree.addTopLevelItem(info)
        chain = self.project.provenance("models", model["id"])
        self.tree.addTopLevelItem(self._provenance_item(chain, "Provenance"))
        self.tree.expandAll()

    def _provenance_item(self, node: dict, label: str) -> QTreeWidgetItem:
        job = node.get("job")
        made_by = f"job #{job['id']} {job['kind']} ({job['status']})" if job else "added by hand"
        item = QTreeWidgetItem([f"{label}: {node['type']} '{node['name']}'", made_by])
        if job:
            item.addChild(QTreeWidgetItem(["parameters", json.dumps(job["params"])]))
        for child in node.get("inputs", []):
            item.addChild(self._provenance_item(child, child.get("role") or "input"))
        return item
