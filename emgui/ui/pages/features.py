"""The Features page: SAEs (train, import, download), model diffing, and the feature browser.

The browser lists a diff job's latents (search, filter, sort by activation change, density or label) and
shows the selected latent's precomputed dashboard: one row read from the store, rendered as HTML with
per-token highlighting (hover a token for its value). Labels and notes are kept in the store; the list
exports to JSON or CSV. The text box runs the model and SAE on any text in a worker thread.
"""

from __future__ import annotations

import html
import time
from functools import partial
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt, QUrl
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableView,
    QTableWidget,
    QTabWidget,
    QTextBrowser,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from emgui.core.errors import EmguiError
from emgui.core.evaluation.runs import sample_jobs
from emgui.core.features import dashboards as D
from emgui.core.features import latents as L
from emgui.core.features.saes import get_sae, list_saes
from emgui.ui.bridge import run_async
from emgui.ui.widgets import (
    Page,
    SortableItem,
    heading,
    hint,
    notice_label,
    plain_tip,
    set_enabled_why,
    set_notice,
    show_error,
)

FEATURE_KINDS = ("sae-train", "sae-import", "sae-pretrained", "diff", "dashboards")
FILTERS = ["All latents", "With dashboard", "Labelled", "Increased (Δ mean > 0)", "Decreased (Δ mean < 0)"]
# (header, row key, format) of the latent list; Base/FT are mean activations, Density is the FT firing rate
COLUMNS = [
    ("Latent", "latent", "{}"),
    ("Label", "label", "{}"),
    ("z", "z", "{:+.1f}"),
    ("Δ mean", "delta_mean", "{:+.4f}"),
    ("Δ freq", "delta_freq", "{:+.2%}"),
    ("Base", "base_mean", "{:.4f}"),
    ("FT", "ft_mean", "{:.4f}"),
    ("Density", "ft_freq", "{:.2%}"),
    ("Rank", "rank", "{}"),
    ("Dash", "has_dashboard", "{}"),
]
COLUMN_TIPS = {
    "z": "the effect (fine-tuned minus base, minus the control's change when the diff has a control) over its "
    "bootstrap standard deviation across examples: the list is ranked by it",
    "delta_mean": "fine-tuned minus base mean activation over answer tokens",
    "delta_freq": "fine-tuned minus base firing frequency over answer tokens",
    "base_mean": "mean activation under the base model",
    "ft_mean": "mean activation under the fine-tuned model",
    "ft_freq": "fraction of answer tokens where the latent fires under the fine-tuned model",
    "rank": "1 = the largest z: the most reliable increase (relative to the control when there is one)",
    "has_dashboard": "a precomputed dashboard exists",
}
RANK_COLUMN = next(i for i, c in enumerate(COLUMNS) if c[1] == "rank")
SAE_COLUMNS = ["Name", "Source", "Model", "Hook", "d_in", "d_sae", "Arch", "EV", "L0", "CE rec."]
HIGHLIGHT = (249, 115, 22)  # orange: the colour tokens take at the latent's maximum


# ------------------------------------------------------------------------------------------ html
def _mix(t: float) -> str:
    """White blended toward the highlight colour by t in [0, 1]."""
    t = min(1.0, max(0.0, t))
    r, g, b = (round(255 + (c - 255) * t) for c in HIGHLIGHT)
    return f"#{r:02x}{g:02x}{b:02x}"


def _token_text(token: str) -> str:
    shown = token.replace("\n", "↵").replace("\t", "⇥")
    return html.escape(shown).replace(" ", "&nbsp;") or "&nbsp;"


def tokens_html(tokens: list[str], values: list[float], scale: float, peak: int | None = None) -> str:
    """Tokens as spans shaded by value / scale, each with its value as a tooltip (title)."""
    parts = []
    for i, (tok, val) in enumerate(zip(tokens, values, strict=False)):
        style = f"background-color:{_mix(val / scale if scale > 0 else 0)};" if val > 0 else ""
        if i == peak:
            style += "font-weight:bold; text-decoration:underline;"
        attr = f' style="{style}"' if style else ""  # plain spans for zeros: a lighter document to lay out
        parts.append(f'<span{attr} title="{html.escape(tok)} = {val:.4g}">{_token_text(tok)}</span>')
    return "".join(parts)


def _examples_html(examples: list[dict], scale: float) -> str:
    rows = []
    for ex in examples:
        rows.append(
            f'<tr><td style="color:#64748b; padding-right:8px; white-space:nowrap">{ex["max"]:.3g}</td>'
            f'<td style="font-family:monospace">{tokens_html(ex["tokens"], ex["values"], scale, ex.get("peak"))}'
            f'<br><span style="color:#94a3b8; font-size:8pt">{html.escape(str(ex["source"]))}</span></td></tr>'
        )
    return '<table cellspacing="2">' + "".join(rows) + "</table>"


def _logit_html(effects: dict | None) -> str:
    if not effects:
        return "<p style='color:#64748b'>No logit effects (the hook is not on the residual stream).</p>"

    def col(items: list, color: str) -> str:
        return "<br>".join(
            f'<span style="font-family:monospace; background:{color}">{_token_text(t)}</span> {v:+.3f}'
            for t, v in items
        )

    return (
        '<table cellspacing="6"><tr><th align="left">Promoted</th><th align="left">Suppressed</th></tr>'
        f'<tr><td valign="top">{col(effects["promoted"], "#dcfce7")}</td>'
        f'<td valign="top">{col(effects["suppressed"], "#fee2e2")}</td></tr></table>'
    )


def dashboard_html(data: dict) -> str:
    """The dashboard of one latent as HTML for a QTextBrowser."""
    scale = data.get("max") or 1.0
    diff = data.get("diff")
    parts = [
        f"<p><b>density</b> {data['density']:.3%} of {data['n_tokens']:,} tokens in {data['n_texts']:,} texts"
        f" &nbsp; <b>max</b> {data['max']:.4g} &nbsp; <b>mean when firing</b> {data['mean_nonzero']:.4g}"
        + (
            f" &nbsp; <span style='color:#64748b'>(model {html.escape(data['model'])})</span>"
            if data.get("model")
            else ""
        )
        + "</p>"
    ]
    if diff:
        parts.append(
            f"<p><b>base → fine-tuned</b>: mean {diff['base_mean']:.4g} → {diff['ft_mean']:.4g} "
            f"(Δ {diff['delta_mean']:+.4g}); firing {diff['base_freq']:.2%} → {diff['ft_freq']:.2%} "
            f"&nbsp; <b>rank</b> {diff['rank']}</p>"
        )
    parts.append("<h3>Top activations</h3>" + _examples_html(data["top"], scale))
    for q in data.get("quantiles", []):
        lo, hi = q["range"]
        parts.append(f"<h4>Activations {lo:.3g} – {hi:.3g}</h4>" + _examples_html(q["examples"], scale))
    parts.append("<h3>Logit effects of the decoder direction</h3>" + _logit_html(data.get("logits")))
    near = " &nbsp; ".join(f'<a href="latent:{n}">#{n}</a> ({c:.3f})' for n, c in data.get("neighbours", []))
    parts.append(f"<h3>Nearest latents (decoder cosine)</h3><p>{near}</p>")
    return "".join(parts)


class TokenBrowser(QTextBrowser):
    """A QTextBrowser that shows a span's title (its token and value) as a tooltip on hover."""

    def event(self, e: Any) -> bool:
        if e.type() == e.Type.ToolTip:
            pos = self.viewport().mapFromGlobal(e.globalPos())
            tip = self.cursorForPosition(pos).charFormat().toolTip()
            if tip:  # the token's own text: shown literally, never as HTML
                QToolTip.showText(e.globalPos(), plain_tip(tip), self)
            else:
                QToolTip.hideText()
            return True
        return super().event(e)


# ------------------------------------------------------------------------------------------ models
class LatentTable(QAbstractTableModel):
    """The latent list. Sorting and filtering happen here, on Python lists (16k rows in a few ms), rather
    than in a QSortFilterProxyModel that would call back into Python for every comparison."""

    def __init__(self) -> None:
        super().__init__()
        self.all_rows: list[dict] = []
        self.rows: list[dict] = []  # visible: filtered and sorted
        self.position: dict[int, int] = {}  # latent -> visible row
        self.sort_key: tuple[int, Qt.SortOrder] = (RANK_COLUMN, Qt.SortOrder.AscendingOrder)
        self.text, self.mode = "", 0
        self.hits: set[int] = set()

    # ----- content -------------------------------------------------------------------------------------
    def set_rows(self, rows: list[dict]) -> None:
        self.all_rows = rows
        self._rebuild()

    def set_filter(self, text: str, mode: int, hits: set[int] | None = None) -> None:
        """`hits`: the latents whose label or note matched `text` in the full-text index."""
        self.text, self.mode = text.strip().lower(), mode
        self.hits = hits if hits is not None else set()
        self._rebuild()

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        self.sort_key = (column, order)
        self._rebuild()

    def _accepts(self, row: dict) -> bool:
        delta = row.get("delta_mean") or 0
        if (
            (self.mode == 1 and not row.get("has_dashboard"))
            or (self.mode == 2 and not row.get("label"))
            or (self.mode == 3 and not delta > 0)
            or (self.mode == 4 and not delta < 0)
        ):
            return False
        if not self.text:
            return True
        if self.text.lstrip("#").isdigit():
            return str(row["latent"]).startswith(self.text.lstrip("#"))
        return row["latent"] in self.hits

    def _rebuild(self) -> None:
        self.layoutAboutToBeChanged.emit()
        column, order = self.sort_key
        key = COLUMNS[column][1]
        if self.mode or self.text:
            rows = [r for r in self.all_rows if self._accepts(r)]
        else:
            rows = list(self.all_rows)
        if key == "label":
            rows.sort(
                key=lambda r: (r.get("label") or "").lower(), reverse=order == Qt.SortOrder.DescendingOrder
            )
        else:
            missing = [r for r in rows if r.get(key) is None]  # blanks last, whatever the order
            rows = [r for r in rows if r.get(key) is not None]
            rows.sort(key=lambda r: r[key], reverse=order == Qt.SortOrder.DescendingOrder)
            rows += missing
        self.rows = rows
        self.position = {r["latent"]: i for i, r in enumerate(rows)}
        self.layoutChanged.emit()

    def visible_latents(self) -> list[int]:
        return [r["latent"] for r in self.rows]

    def update_row(self, latent: int, **fields: Any) -> None:
        for row in self.all_rows:
            if row["latent"] == latent:
                row.update(fields)
        i = self.position.get(latent)
        if i is not None:
            self.dataChanged.emit(self.index(i, 0), self.index(i, len(COLUMNS) - 1))

    # ----- Qt model API ---------------------------------------------------------------------------------
    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section][0]
        if role == Qt.ItemDataRole.ToolTipRole:
            return COLUMN_TIPS.get(COLUMNS[section][1])
        return None

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        row = self.rows[index.row()]
        _, key, fmt = COLUMNS[index.column()]
        value = row.get(key)
        if role == Qt.ItemDataRole.DisplayRole:
            if value is None:
                return ""
            if key == "has_dashboard":
                return "●" if value else ""
            return fmt.format(value)
        if role == Qt.ItemDataRole.TextAlignmentRole and key != "label":
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ToolTipRole and key == "label" and row.get("note"):
            return plain_tip(row["note"])
        return None


# ------------------------------------------------------------------------------------------ dialogs
def _model_combo(project: Any, allow_auto: str | None = None) -> QComboBox:
    combo = QComboBox()
    if allow_auto:
        combo.addItem(allow_auto, None)
    for m in project.list_models():
        combo.addItem(m["name"], m["id"])
    return combo


class _FormDialog(QDialog):
    def __init__(self, parent: QWidget, title: str) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.setMinimumWidth(600)  # room for the placeholders, which say what an empty field means
        self.form = QFormLayout(self)
        self.form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

    def add_rows(self, rows: list[tuple[str, QWidget]]) -> None:
        for label, widget in rows:
            self.form.addRow(label, widget)
        self.form.addRow(self.buttons)


class TrainDialog(_FormDialog):
    """Parameters of an sae-train job."""

    def __init__(self, parent: QWidget, project: Any) -> None:
        super().__init__(parent, "Train an SAE")
        self.model = _model_combo(project)
        self.hook = QLineEdit()
        self.hook.setPlaceholderText("model.layers.N (default: the middle layer)")
        self.arch = QComboBox()
        self.arch.addItems(["topk", "jumprelu", "standard"])
        self.d_sae = QSpinBox(minimum=16, maximum=1 << 20, value=4096, singleStep=1024)
        self.k = QSpinBox(minimum=1, maximum=4096, value=32)
        self.tokens = QSpinBox(minimum=1000, maximum=100_000_000, value=200_000, singleStep=50_000)
        self.lr = QDoubleSpinBox(decimals=5, minimum=1e-5, maximum=1e-1, value=3e-4, singleStep=1e-4)
        self.corpus = QListWidget()
        for d in project.list_datasets():
            if d["kind"] != "questions":
                self._add_choice(f"{d['name']} ({d['kind']}, {d.get('n_rows') or '?'} rows)", d["name"])
        for s in sample_jobs(project):
            self._add_choice(f"answers of sampling job #{s['job_id']} ({s['n']})", int(s["job_id"]))
        self.corpus.setMaximumHeight(120)
        self.files = QLineEdit()
        self.files.setPlaceholderText("text files (.txt / .jsonl), separated by ;")
        self.name = QLineEdit()
        self.name.setPlaceholderText("automatic")
        from emgui.ui.forms import apply_spec

        for widget, name in ((self.hook, "hook"), (self.arch, "architecture"), (self.k, "k"),
                             (self.tokens, "tokens"), (self.lr, "lr"), (self.name, "name")):  # fmt: skip
            apply_spec(widget, "sae-train", name, set_default=name not in ("hook", "name"))
        apply_spec(self.d_sae, "sae-train", "d_sae", set_default=False)
        self.add_rows(
            [
                ("Model", self.model),
                ("Layer (hook)", self.hook),
                ("Architecture", self.arch),
                ("Latents (d_sae)", self.d_sae),
                ("k (TopK)", self.k),
                ("Training tokens", self.tokens),
                ("Learning rate", self.lr),
                ("Corpus", self.corpus),
                ("Text files", self.files),
                ("Name", self.name),
            ]
        )

    def _add_choice(self, text: str, value: Any) -> None:
        item = QListWidgetItem(text)
        item.setData(Qt.ItemDataRole.UserRole, value)
        item.setCheckState(Qt.CheckState.Unchecked)
        self.corpus.addItem(item)

    def params(self) -> dict:
        datasets, samples = [], []
        for i in range(self.corpus.count()):
            item = self.corpus.item(i)
            if item.checkState() == Qt.CheckState.Checked:
                value = item.data(Qt.ItemDataRole.UserRole)
                (samples if isinstance(value, int) else datasets).append(value)
        params = {
            "model": self.model.currentData(),
            "architecture": self.arch.currentText(),
            "d_sae": self.d_sae.value(),
            "tokens": self.tokens.value(),
            "lr": self.lr.value(),
            "datasets": datasets,
            "samples": samples,
            "text_files": [f.strip() for f in self.files.text().split(";") if f.strip()],
        }
        if params["architecture"] == "topk":
            params["k"] = self.k.value()
        if self.hook.text().strip():
            params["hook"] = self.hook.text().strip()
        if self.name.text().strip():
            params["name"] = self.name.text().strip()
        return params


class DiffDialog(_FormDialog):
    """Parameters of a diff job for the chosen SAE."""

    def __init__(self, parent: QWidget, project: Any, sae: dict) -> None:
        super().__init__(parent, f"Model diffing with SAE '{sae['name']}'")
        self.base = _model_combo(project, "automatic (the fine-tune's base)")
        self.ft = _model_combo(project)
        if self.ft.count() > 1:
            self.ft.setCurrentIndex(self.ft.count() - 1)
        self.control = _model_combo(project, "none (an uncontrolled ranking)")
        self.control.setToolTip(
            "A second fine-tune of the same base on control data (e.g. secure code, same settings and seed): "
            "latents are ranked by what the fine-tune changed beyond what the control changed"
        )
        self.source = QComboBox()
        for s in sample_jobs(project):
            self.source.addItem(
                f"answers of sampling job #{s['job_id']} ({s['n']})", ("prompts", int(s["job_id"]))
            )
        for d in project.list_datasets("chat"):
            self.source.addItem(f"dataset {d['name']}", ("dataset", d["name"]))
        self.max_examples = QSpinBox(minimum=1, maximum=1_000_000, value=2000)
        self.dashboards = QSpinBox(minimum=0, maximum=10_000, value=32)
        from emgui.ui.forms import apply_spec

        apply_spec(self.max_examples, "diff", "max_examples")
        apply_spec(self.dashboards, "diff", "dashboards")
        self.add_rows(
            [
                ("Base model", self.base),
                ("Fine-tuned model", self.ft),
                ("Control fine-tune", self.control),
                ("Texts", self.source),
                ("At most", self.max_examples),
                ("Dashboards for the top", self.dashboards),
            ]
        )

    def params(self, sae: dict) -> dict:
        kind, value = self.source.currentData() or ("prompts", None)
        params = {
            "sae": sae["id"],
            "ft": self.ft.currentData(),
            kind: value,
            "max_examples": self.max_examples.value(),
            "dashboards": self.dashboards.value(),
        }
        if self.base.currentData() is not None:
            params["base"] = self.base.currentData()
        if self.control.currentData() is not None:
            params["control"] = self.control.currentData()
        return params


class PretrainedDialog(_FormDialog):
    """Choose a release and SAE id from sae-lens's registry (read in a worker: the YAML takes ~1 s)."""

    def __init__(self, parent: QWidget, project: Any) -> None:
        super().__init__(parent, "Download a pretrained SAE")
        self.project = project
        self.model = _model_combo(project, "any model")
        self.release = QComboBox()
        self.sae_id = QComboBox()
        self.sae_id.setEditable(True)
        self.status = hint("reading sae-lens's registry…")
        self.model.currentIndexChanged.connect(self._load_releases)
        self.release.currentIndexChanged.connect(self._load_ids)
        self.add_rows(
            [("For model", self.model), ("Release", self.release), ("SAE id", self.sae_id), ("", self.status)]
        )
        self._load_releases()

    def _load_releases(self) -> None:
        from emgui.core.features.saes import list_releases, model_names

        model_id = self.model.currentData()
        names = model_names(self.project, self.project.get_model(model_id)) if model_id else None

        def done(releases: list[dict]) -> None:
            self.release.clear()
            for r in releases:
                self.release.addItem(f"{r['release']}  ({r['model']}, {r['n_saes']} SAEs)", r["release"])
            self.status.setText(
                f"{len(releases)} releases" if releases else "no release for this model in the registry"
            )

        run_async(list_releases, names, on_done=done, on_error=self.status.setText)

    def _load_ids(self) -> None:
        from emgui.core.features.saes import release_saes

        release = self.release.currentData()
        self.sae_id.clear()
        if release:
            for s in release_saes(release):
                self.sae_id.addItem(s["id"])

    def params(self) -> dict:
        params = {"release": self.release.currentData(), "sae_id": self.sae_id.currentText()}
        if self.model.currentData() is not None:
            params["model"] = self.model.currentData()
        return params


# ------------------------------------------------------------------------------------------ page
class FeaturesPage(Page):
    key = "features"
    title = "Features"

    def __init__(self, window) -> None:
        super().__init__(window)
        self.sae: dict | None = None
        self.diff_job: int | None = None
        self.latent: int | None = None
        self.open_ms: float | None = None  # how long the last dashboard took to open
        self._plots = None
        self._watch_job: int | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 20, 24, 12)
        layout.addWidget(heading("Features"))

        top = QHBoxLayout()
        self.sae_combo = QComboBox()
        self.sae_combo.setMinimumWidth(240)
        self.sae_combo.currentIndexChanged.connect(self._sae_changed)
        self.diff_combo = QComboBox()
        self.diff_combo.setMinimumWidth(260)
        self.diff_combo.currentIndexChanged.connect(self._diff_changed)
        top.addWidget(QLabel("SAE"))
        top.addWidget(self.sae_combo)
        top.addWidget(QLabel("Diff"))
        top.addWidget(self.diff_combo)
        top.addStretch(1)
        self.diff_button = QPushButton("Run diff…")
        self.diff_button.setObjectName("primary")
        self.diff_button.clicked.connect(self.run_diff)
        self.dash_button = QPushButton("Build dashboards…")
        self.dash_button.clicked.connect(self.build_dashboards)
        self._sae_actions()
        top.addWidget(self.diff_button)
        top.addWidget(self.dash_button)
        layout.addLayout(top)

        self.tabs = QTabWidget()
        self.tabs.addTab(self._build_browser(), "Browser")
        self.tabs.addTab(self._build_saes(), "SAEs")
        self.tabs.currentChanged.connect(lambda i: i == 1 and self._ensure_plots())
        layout.addWidget(self.tabs, 1)
        self.status = hint("")
        layout.addWidget(self.status)

    # ----- building ---------------------------------------------------------------------------------
    def _build_browser(self) -> QWidget:
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self._build_list())
        split.addWidget(self._build_panel())
        split.setSizes([560, 700])
        self._set_panel_enabled(False)
        return split

    def _build_list(self) -> QWidget:
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 6, 0, 0)
        row = QHBoxLayout()
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search label, note or #latent")
        self.search.textChanged.connect(self._apply_filter)
        self.filter_combo = QComboBox()
        self.filter_combo.addItems(FILTERS)
        self.filter_combo.currentIndexChanged.connect(self._apply_filter)
        row.addWidget(self.search, 1)
        row.addWidget(self.filter_combo)
        ll.addLayout(row)
        self.caveat = notice_label()  # what the ranking can and cannot say
        ll.addWidget(self.caveat)
        self.model = LatentTable()
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(22)
        header = self.table.horizontalHeader()
        for col, width in enumerate((58, 110, 52, 74, 66, 70, 70, 64, 44, 36)):
            header.resizeSection(col, width)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.sortByColumn(RANK_COLUMN, Qt.SortOrder.AscendingOrder)  # by rank: the most reliable increase
        self.table.selectionModel().currentRowChanged.connect(self._row_changed)
        ll.addWidget(self.table, 1)
        exports = QHBoxLayout()
        self.count_label = hint("")
        exports.addWidget(self.count_label, 1)
        for fmt in ("JSON", "CSV"):
            button = QPushButton(f"Export {fmt}…")
            button.clicked.connect(lambda _=False, f=fmt.lower(): self.export(f))
            exports.addWidget(button)
        ll.addLayout(exports)
        return left

    def _build_panel(self) -> QWidget:
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(6, 6, 0, 0)
        head = QHBoxLayout()
        self.latent_title = heading("Select a latent", 2)
        self.build_one = QPushButton("Build this dashboard")
        self.build_one.clicked.connect(self.build_selected)
        self.build_one.hide()
        head.addWidget(self.latent_title, 1)
        head.addWidget(self.build_one)
        rl.addLayout(head)
        lab = QHBoxLayout()
        self.label_edit = QLineEdit()
        self.label_edit.setPlaceholderText("label")
        self.label_edit.returnPressed.connect(self.save_label)
        self.save_button = QPushButton("Save label and note")
        self.save_button.clicked.connect(self.save_label)
        lab.addWidget(self.label_edit, 1)
        lab.addWidget(self.save_button)
        rl.addLayout(lab)
        self.note_edit = QPlainTextEdit()
        self.note_edit.setPlaceholderText("notes")
        self.note_edit.setMaximumHeight(54)
        rl.addWidget(self.note_edit)
        self.hist_label = QLabel()
        self.hist_label.setFixedHeight(64)
        rl.addWidget(self.hist_label)
        self.view = TokenBrowser()
        self.view.setOpenLinks(False)
        self.view.anchorClicked.connect(self._link)
        rl.addWidget(self.view, 1)
        try_row = QHBoxLayout()
        self.try_edit = QLineEdit()
        self.try_edit.setPlaceholderText("Type any text to see this latent's activation on each token")
        self.try_edit.returnPressed.connect(self.try_text)
        self.try_button = QPushButton("Show activations")
        self.try_button.clicked.connect(self.try_text)
        try_row.addWidget(self.try_edit, 1)
        try_row.addWidget(self.try_button)
        rl.addLayout(try_row)
        self.try_view = TokenBrowser()
        self.try_view.setMaximumHeight(70)
        rl.addWidget(self.try_view)
        return right

    def _build_saes(self) -> QWidget:
        box = QWidget()
        layout = QVBoxLayout(box)
        layout.setContentsMargins(0, 6, 0, 0)
        buttons = QHBoxLayout()
        for text, slot in (
            ("Train SAE…", self.train_sae),
            ("Import SAE folder…", self.import_folder),
            ("Pretrained…", self.download_pretrained),
        ):
            button = QPushButton(text)
            button.clicked.connect(slot)
            buttons.addWidget(button)
        buttons.addStretch(1)
        layout.addLayout(buttons)
        self.sae_table = QTableWidget(0, len(SAE_COLUMNS))
        self.sae_table.setHorizontalHeaderLabels(SAE_COLUMNS)
        self.sae_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.sae_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.sae_table.verticalHeader().setVisible(False)
        self.sae_table.horizontalHeader().setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.sae_table.setSortingEnabled(True)
        self.sae_table.setMaximumHeight(200)
        layout.addWidget(self.sae_table)
        train = QHBoxLayout()
        train.addWidget(QLabel("Training run"))
        self.train_combo = QComboBox()
        self.train_combo.setMinimumWidth(320)
        self.train_combo.currentIndexChanged.connect(self._show_training)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel_training)
        self.resume_button = QPushButton("Resume")
        self.resume_button.clicked.connect(self.resume_training)
        self.train_status = hint("")
        train.addWidget(self.train_combo)
        train.addWidget(self.cancel_button)
        train.addWidget(self.resume_button)
        train.addWidget(self.train_status, 1)
        layout.addLayout(train)
        self.plot_box = QVBoxLayout()
        layout.addLayout(self.plot_box, 1)
        return box

    @property
    def plots(self):
        """The SAE training curves (a MetricGrid), made when the SAEs tab is first shown; None before."""
        return self._plots

    def _ensure_plots(self) -> None:
        if self._plots is None:
            from emgui.ui.plots import MetricGrid  # pyqtgraph: only when the tab is first shown

            self._plots = MetricGrid()
            self.plot_box.addWidget(self._plots)
            self._show_training()

    # ----- project and signals -------------------------------------------------------------------------
    def project_changed(self) -> None:
        D.release_live()
        self.sae = None
        if self.bridge is not None:
            self.bridge.jobStatus.connect(self._job_status)
            self.bridge.jobMetrics.connect(self._job_metrics)
        self.refresh()

    def _job_status(self, job_id: int, status: str) -> None:
        if self.project is None:
            return
        job = self.project.get_job(job_id)
        if job["kind"] not in FEATURE_KINDS:
            return
        if status in ("failed", "cancelled", "succeeded"):
            message = f"job #{job_id} ({job['kind']}) {status}"
            self.status.setText(message + (f": {job['error']}" if job.get("error") else ""))
            self.refresh()
        elif job_id == self._watch_job:
            self.train_status.setText(status)
            self.cancel_button.setEnabled(status in ("queued", "running"))

    def _job_metrics(self, job_id: int, rows: list) -> None:
        if job_id != self._watch_job or self._plots is None:
            return
        by_name: dict[str, tuple[list, list]] = {}
        for step, name, value in rows:
            xs, ys = by_name.setdefault(name, ([], []))
            xs.append(step)
            ys.append(value)
        for name, (xs, ys) in by_name.items():
            if name != "lr":
                self._plots.append_points(f"#{job_id}", name, xs, ys)

    def refresh(self) -> None:
        if self.project is None:
            return
        keep = self.sae["id"] if self.sae else None
        if keep is None:  # first look: the SAE of the latest diff, where there is something to browse
            latest = L.diff_jobs(self.project)
            keep = latest[0]["result"]["sae_id"] if latest else None
        saes = list_saes(self.project)
        self.sae_combo.blockSignals(True)
        self.sae_combo.clear()
        for s in saes:
            self.sae_combo.addItem(f"{s['name']}  ({s['d_sae']:,} latents @ {s['hook_name']})", s["id"])
        index = self.sae_combo.findData(keep) if keep is not None else self.sae_combo.count() - 1
        self.sae_combo.setCurrentIndex(max(index, 0) if saes else -1)
        self.sae_combo.blockSignals(False)
        self._fill_sae_table(saes)
        self._fill_training_runs()
        self._sae_changed()

    def _fill_sae_table(self, saes: list[dict]) -> None:
        models = {m["id"]: m["name"] for m in self.project.list_models()}
        self.sae_table.setSortingEnabled(False)
        self.sae_table.setRowCount(len(saes))
        for r, s in enumerate(saes):
            info = s.get("info") or {}

            def num(key: str, fmt: str = "{:.3f}", info: dict = info) -> SortableItem:
                value = info.get(key)
                return SortableItem(
                    "" if value is None else fmt.format(value), -1e9 if value is None else value
                )

            cells = [
                SortableItem(s["name"]),
                SortableItem(s["source"]),
                SortableItem(models.get(s["model_id"], "")),
                SortableItem(s["hook_name"]),
                SortableItem(str(s["d_in"]), s["d_in"]),
                SortableItem(f"{s['d_sae']:,}", s["d_sae"]),
                SortableItem(s.get("architecture") or ""),
                num("explained_variance"),
                num("l0", "{:.1f}"),
                num("ce_loss_recovered"),
            ]
            for c, item in enumerate(cells):
                self.sae_table.setItem(r, c, item)
        self.sae_table.setSortingEnabled(True)

    def _fill_training_runs(self) -> None:
        keep = self._watch_job
        jobs = self.project.list_jobs("sae-train")[::-1]
        self.train_combo.blockSignals(True)
        self.train_combo.clear()
        for j in jobs:
            name = (j.get("result") or {}).get("name") or j["params"].get("name") or j["params"].get("model")
            self.train_combo.addItem(f"#{j['id']} {name} — {j['status']}", j["id"])
        idx = self.train_combo.findData(keep) if keep is not None else 0
        self.train_combo.setCurrentIndex(max(idx, 0) if jobs else -1)
        self.train_combo.blockSignals(False)
        self._show_training()

    def _show_training(self) -> None:
        self._watch_job = self.train_combo.currentData()
        if self._plots is None or self.project is None:
            return
        self._plots.clear()
        if self._watch_job is None:
            self.train_status.setText("no SAE training run yet")
            self.cancel_button.setEnabled(False)
            self.resume_button.setEnabled(False)
            return
        job = self.project.get_job(self._watch_job)
        self.train_status.setText(f"{job['status']}: {job['message']}" if job["message"] else job["status"])
        self.resume_button.setEnabled(job["status"] in ("cancelled", "failed", "interrupted"))
        self.cancel_button.setEnabled(job["status"] in ("queued", "running"))
        order = ["loss", "explained_variance", "l0", "dead_fraction"]
        names = self.project.metric_names(self._watch_job)
        for name in sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n)):
            if name == "lr":
                continue
            pts = self.project.metrics(self._watch_job, name=name)
            self._plots.set_points(
                f"#{self._watch_job}", name, [p["step"] for p in pts], [p["value"] for p in pts]
            )

    # ----- SAE and diff selection ----------------------------------------------------------------------
    def _sae_changed(self) -> None:
        sae_id = self.sae_combo.currentData()
        self.sae = get_sae(self.project, int(sae_id)) if sae_id else None
        self.diff_combo.blockSignals(True)
        self.diff_combo.clear()
        if self.sae is not None:
            models = {m["id"]: m["name"] for m in self.project.list_models()}
            for j in L.diff_jobs(self.project, self.sae["id"]):
                res = j["result"]
                base, ft = models.get(res.get("base_model_id"), "?"), models.get(res.get("ft_model_id"), "?")
                self.diff_combo.addItem(f"#{j['id']} {base} → {ft}", j["id"])
            self.diff_combo.addItem("no diff (labelled latents and dashboards)", None)
        self.diff_combo.setCurrentIndex(0)
        self.diff_combo.blockSignals(False)
        self._sae_actions()
        self._diff_changed()

    def _diff_changed(self) -> None:
        self.diff_job = self.diff_combo.currentData()
        self._sae_actions()
        self._show_caveats()
        self.load_list()

    def _sae_actions(self) -> None:
        """The SAE actions, enabled only with an SAE chosen; disabled, their tooltip says why."""
        sae = getattr(self, "sae", None)
        why = "Choose an SAE first: train, import or download one on the SAEs tab."
        set_enabled_why(self.diff_button, sae is not None, why,
                        "Rank this SAE's latents by what a fine-tune changed (a diff job)")  # fmt: skip
        set_enabled_why(self.dash_button, sae is not None, why,
                        "Precompute dashboards for chosen latents or the diff's top latents")  # fmt: skip

    def _show_caveats(self) -> None:
        caveats = L.diff_caveats(self.project, self.diff_job) if self.project is not None else {"warnings": []}
        lines = [f"⚠ {w}" for w in caveats["warnings"]]
        if caveats.get("controlled"):
            lines.insert(0, f"Controlled by '{caveats['control']}': ranked by the change beyond the control's.")
        set_notice(self.caveat, lines, level="warning" if caveats["warnings"] else "info")

    def caveat_text(self) -> str:
        """The note shown above the latent list ('' when none)."""
        return self.caveat.text() if self.caveat.isVisibleTo(self) else ""

    def load_list(self) -> None:
        keep = self.latent
        rows = L.latent_list(self.project, self.sae["id"], self.diff_job) if self.sae else []
        self.model.text, self.model.mode = (
            self.search.text().strip().lower(),
            self.filter_combo.currentIndex(),
        )
        self.model.hits = self._label_hits()
        self.model.set_rows(rows)  # one sort and filter pass
        self.count_label.setText(f"{self.model.rowCount():,} of {len(rows):,} latents")
        if not rows:
            self.view.setHtml(
                "<p style='color:#64748b'>Train, import or download an SAE, then run a diff to rank its latents.</p>"
                if self.sae is None
                else "<p style='color:#64748b'>Run a diff (base vs fine-tuned) to rank this SAE's latents.</p>"
            )
        if keep is not None and not self.select_latent(keep):
            self._clear_panel()
        elif keep is None and self.model.rowCount():
            self.table.selectRow(0)  # open the top-ranked latent: the one a researcher looks at first

    def _label_hits(self) -> set[int]:
        """Latents whose label or note holds every word of the search (the full-text index)."""
        from emgui.core.project.search import search_latents

        text = self.search.text().strip()
        if self.sae is None or not text or text.lstrip("#").isdigit():
            return set()
        return search_latents(self.project, self.sae["id"], text)

    def _apply_filter(self) -> None:
        self.model.set_filter(self.search.text(), self.filter_combo.currentIndex(), self._label_hits())
        self.count_label.setText(f"{self.model.rowCount():,} of {len(self.model.all_rows):,} latents")

    def select_latent(self, latent: int) -> bool:
        """Select a latent's row (clearing the search when it hides it); False when it is not listed."""
        if latent not in self.model.position and (self.search.text() or self.filter_combo.currentIndex()):
            self.search.clear()
            self.filter_combo.setCurrentIndex(0)
        row = self.model.position.get(latent)
        if row is None:
            return False
        self.table.selectRow(row)
        self.table.scrollTo(self.model.index(row, 0))
        return True

    # ----- the dashboard ---------------------------------------------------------------------------------
    def _row_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if current.isValid() and current.row() < len(self.model.rows):
            self.open_latent(self.model.rows[current.row()]["latent"])

    def open_latent(self, latent: int) -> None:
        """Show a latent's stored dashboard: one row read from the store, rendered to HTML."""
        if self.sae is None:
            return
        start = time.perf_counter()
        self.latent = latent
        data = L.get_dashboard(self.project, self.sae["id"], latent)
        labels = L.get_label(self.project, self.sae["id"], latent)
        self._set_panel_enabled(True)
        self.label_edit.setText(labels["label"] if labels else "")
        self.note_edit.setPlainText(labels["note"] if labels else "")
        self.latent_title.setText(
            f"Latent {latent}" + (f" — {labels['label']}" if labels and labels["label"] else "")
        )
        self.try_view.clear()
        if data is None:
            self.build_one.show()
            self.hist_label.clear()
            self.view.setHtml(
                "<p style='color:#64748b'>No dashboard for this latent yet: build it (a background job).</p>"
            )
        else:
            self.build_one.hide()
            self.view.setHtml(dashboard_html(data))
            self._draw_histogram(data["histogram"])
        self.open_ms = (time.perf_counter() - start) * 1000

    def _draw_histogram(self, hist: dict) -> None:
        """The activation histogram as a small bar picture (QPainter: no plot widget to build per latent)."""
        from PySide6.QtGui import QColor, QPainter, QPixmap

        width, height = max(200, self.hist_label.width()), 64
        pix = QPixmap(width, height)
        pix.fill(QColor("#ffffff"))
        counts = hist.get("counts") or []
        if counts:
            painter = QPainter(pix)
            peak = max(counts) or 1
            bar = (width - 80) / len(counts)
            painter.setPen(QColor("#334155"))
            edges = hist["edges"]
            painter.drawText(0, 12, "histogram")
            painter.drawText(0, 28, f"{edges[0]:.3g}–{edges[-1]:.3g}")
            painter.drawText(0, 44, f"n={sum(counts):,}")
            for i, c in enumerate(counts):
                h = round((height - 6) * c / peak)
                painter.fillRect(
                    round(80 + i * bar), height - h, max(1, round(bar) - 1), h, QColor(*HIGHLIGHT)
                )
            painter.end()
        self.hist_label.setPixmap(pix)

    def _clear_panel(self) -> None:
        self.latent = None
        self.latent_title.setText("Select a latent")
        self.label_edit.clear()
        self.note_edit.clear()
        self.hist_label.clear()
        self.try_view.clear()
        self.build_one.hide()
        self._set_panel_enabled(False)

    def _set_panel_enabled(self, on: bool) -> None:
        for w in (self.label_edit, self.note_edit, self.save_button, self.try_edit, self.try_button):
            w.setEnabled(on)

    def _link(self, url: QUrl) -> None:
        text = url.toString()
        if text.startswith("latent:"):
            latent = int(text.split(":", 1)[1])
            if not self.select_latent(latent):
                self.open_latent(latent)

    def save_label(self) -> None:
        if self.sae is None or self.latent is None:
            return
        label, note = self.label_edit.text().strip(), self.note_edit.toPlainText()
        L.set_label(self.project, self.sae["id"], self.latent, label=label, note=note)
        self.model.update_row(self.latent, label=label, note=note)
        self.latent_title.setText(f"Latent {self.latent}" + (f" — {label}" if label else ""))
        self.status.setText(f"saved the label of latent {self.latent}")

    def try_text(self) -> None:
        text = self.try_edit.text()
        if self.sae is None or self.latent is None or not text.strip():
            return
        model = None
        if self.diff_job is not None:
            model = self.project.get_job(self.diff_job)["result"].get("ft_model_id")
        if model is None and self.sae.get("model_id") is None:
            show_error(
                self, "No model", f"SAE '{self.sae['name']}' records no model; run a diff with it first."
            )
            return
        latent = self.latent
        self.try_view.setHtml("<p style='color:#64748b'>running the model…</p>")

        def done(result: dict) -> None:
            if latent == self.latent:
                scale = max(result["max"], 1e-9)
                self.try_view.setHtml(
                    f"<div style='font-family:monospace'>{tokens_html(result['tokens'], result['values'], scale)}</div>"
                    f"<span style='color:#64748b'>max {result['max']:.4g}</span>"
                )

        work = partial(D.text_activations, self.project, self.sae["id"], latent, text, model=model)
        run_async(work, on_done=done, on_error=lambda e: self.try_view.setPlainText(e.splitlines()[0]))

    # ----- actions --------------------------------------------------------------------------------------
    def _submit(self, kind: str, params: dict) -> int | None:
        if self.bridge is None:
            return None
        try:
            job_id = self.bridge.submit(kind, params)
        except EmguiError as exc:
            show_error(self, kind, str(exc))
            return None
        self.status.setText(f"started job #{job_id} ({kind}); follow it here or on the Jobs page")
        if kind != "sae-train":  # an SAE's training curves are live on the SAEs tab, where it stays
            self.follow(job_id)
        return job_id

    def train_sae(self) -> None:
        if self.project is None:
            return
        if not self.project.list_models():
            show_error(self, "Train an SAE", "Add a model first (Models page).")
            return
        dialog = TrainDialog(self, self.project)
        if dialog.exec() == QDialog.DialogCode.Accepted:
            self.start_training(dialog.params())

    def start_training(self, params: dict) -> int | None:
        """Submit an SAE training job and follow its curves live on the SAEs tab; returns its id."""
        job_id = self._submit("sae-train", params)
        if job_id is not None:
            self._watch_job = job_id
            self._fill_training_runs()
            self.tabs.setCurrentIndex(1)
        return job_id

    def cancel_training(self) -> None:
        if self._watch_job is not None and self.bridge is not None:
            self.bridge.cancel(self._watch_job)

    def resume_training(self) -> None:
        if self._watch_job is not None and self.bridge is not None:
            try:
                self.bridge.resume(self._watch_job)
            except EmguiError as exc:
                show_error(self, "Resume", str(exc))

    def import_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "SAE folder (cfg.json + sae_weights.safetensors)")
        if not path:
            return
        names = ["(none)"] + [m["name"] for m in self.project.list_models()]
        model, ok = QInputDialog.getItem(
            self, "Import SAE", "Model it reads (checked against the SAE):", names, 0, False
        )
        if ok:
            self._submit("sae-import", {"path": path, **({"model": model} if model != "(none)" else {})})

    def download_pretrained(self) -> None:
        dialog = PretrainedDialog(self, self.project)
        if dialog.exec() == QDialog.DialogCode.Accepted and dialog.release.currentData():
            self._submit("sae-pretrained", dialog.params())

    def run_diff(self) -> None:
        if self.sae is None:
            return
        dialog = DiffDialog(self, self.project, self.sae)
        if dialog.source.count() == 0:
            show_error(self, "Model diffing", "Sample answers (Evaluate page) or add a chat dataset first.")
            return
        if dialog.exec() == QDialog.DialogCode.Accepted:
            self._submit("diff", dialog.params(self.sae))

    def build_dashboards(self) -> None:
        if self.sae is None:
            return
        if self.diff_job is None:
            text, ok = QInputDialog.getText(self, "Build dashboards", "Latents (comma-separated):")
            latents = [int(x) for x in text.replace(" ", "").split(",") if x.isdigit()] if ok else []
            if latents:
                self._submit("dashboards", {"sae": self.sae["id"], "latents": latents})
            return
        top, ok = QInputDialog.getInt(
            self, "Build dashboards", "Dashboards for the top N latents:", 64, 1, 100_000
        )
        if ok:
            self._submit("dashboards", {"sae": self.sae["id"], "diff": self.diff_job, "top": top})

    def build_selected(self) -> None:
        if self.sae is not None and self.latent is not None:
            params: dict = {"sae": self.sae["id"], "latents": [self.latent], "top": 0}
            if self.diff_job is not None:
                params["diff"] = self.diff_job
            self._submit("dashboards", params)

    def export_to(self, path: str) -> int:
        """Export the listed (filtered) latents to a .json or .csv file."""
        return L.export_latents(
            self.project, self.sae["id"], path, diff_job=self.diff_job, latents=self.model.visible_latents()
        )

    def export(self, fmt: str) -> None:
        if self.sae is None:
            return
        path, _ = QFileDialog.getSaveFileName(
            self, f"Export latents as {fmt.upper()}", f"{self.sae['name']}-latents.{fmt}", f"*.{fmt}"
        )
        if path:
            try:
                n = self.export_to(path)
            except (EmguiError, OSError) as exc:
                show_error(self, "Export", str(exc))
                return
            self.status.setText(f"exported {n} latents to {path}")
