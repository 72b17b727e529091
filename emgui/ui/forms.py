"""Forms made from a job kind's declared parameters (emgui.core.paramspec).

`ParamForm` shows a kind's key parameters in front and the rest under "Advanced", each with the declared
default, range, unit and help (as the tooltip); `values()` gives what differs from the defaults, so a job row
shows the user's choices and the declared defaults beside them. `JobDialog` wraps a form in a dialog that
submits the job and opens its live view on the Jobs page.
"""

from __future__ import annotations

import math
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from emgui.core.errors import EmguiError
from emgui.core.paramspec import ParamSpec
from emgui.ui.widgets import hint, show_error

INT_LIMIT = 2**31 - 1
NONE_TEXT = "automatic"  # what an unset optional parameter shows (the job decides, as its help says)


def tooltip(spec: ParamSpec) -> str:
    parts = [spec.help[:1].upper() + spec.help[1:] if spec.help else spec.title]
    facts = [] if spec.required else [f"default: {spec.describe_default()}"]
    if spec.describe_range():
        facts.append(spec.describe_range())
    if facts:
        parts.append("(" + "; ".join(facts) + ")")
    return " ".join(parts) + f"\nparameter: {spec.name}"


class SciSpinBox(QDoubleSpinBox):
    """A number box that shows 0.0001 as 1e-04 and 3 as 3: learning rates and thresholds in one widget.
    Its arrows multiply or divide by 2 when the value spans orders of magnitude (learning rates)."""

    def __init__(self, spec: ParamSpec):
        super().__init__()
        self.setDecimals(12)
        self.setRange(spec.min if spec.min is not None else -1e12, spec.max if spec.max is not None else 1e12)
        default = spec.default if isinstance(spec.default, (int, float)) else 0.0
        self.log_steps = bool(default) and abs(default) < 0.01
        self.setSingleStep(_step_for(default, spec))

    def textFromValue(self, value: float) -> str:  # noqa: N802 - Qt naming
        return f"{value:.6g}"

    def valueFromText(self, text: str) -> float:  # noqa: N802
        try:
            return float(text)
        except ValueError:
            return self.value()

    def validate(self, text: str, pos: int):  # noqa: ANN201
        from PySide6.QtGui import QValidator

        if text.strip() in ("", "-", ".", "e", "-.") or text.strip().lower().endswith(("e", "e-", "e+")):
            return QValidator.State.Intermediate, text, pos
        try:
            value = float(text)
        except ValueError:
            return QValidator.State.Invalid, text, pos
        ok = self.minimum() <= value <= self.maximum()
        return (QValidator.State.Acceptable if ok else QValidator.State.Intermediate), text, pos

    def stepBy(self, steps: int) -> None:  # noqa: N802
        if self.log_steps and self.value() > 0:
            self.setValue(self.value() * (2.0**steps))
        else:
            super().stepBy(steps)


def _step_for(default: float, spec: ParamSpec) -> float:
    if spec.max is not None and spec.min is not None and spec.max - spec.min <= 1:
        return 0.05
    if default and abs(default) < 1:
        return 10 ** math.floor(math.log10(abs(default)))
    return 1.0 if not default or abs(default) >= 1 else 0.1


class Field:
    """One parameter's editor: `get()` the value as the job reads it, `set()` it."""

    def __init__(self, spec: ParamSpec, widget: QWidget, get, set_):  # noqa: ANN001
        self.spec, self.widget, self._get, self._set = spec, widget, get, set_

    def get(self) -> Any:
        return self._get()

    def set(self, value: Any) -> None:
        self._set(value)


def _int_field(spec: ParamSpec) -> Field:
    lo = int(spec.min) if spec.min is not None else -INT_LIMIT
    hi = int(spec.max) if spec.max is not None else INT_LIMIT
    if spec.accepts_none() and spec.min is None:
        return _text_field(spec)  # no spare number below the range to stand for "none"
    box = QSpinBox()
    none_value = lo - 1 if spec.accepts_none() else None
    box.setRange(none_value if none_value is not None else lo, hi)
    if none_value is not None:
        box.setSpecialValueText(NONE_TEXT)
    box.setSingleStep(_int_step(spec))

    def get() -> Any:
        return None if none_value is not None and box.value() == none_value else box.value()

    def set_(value: Any) -> None:
        box.setValue(none_value if value is None and none_value is not None else int(value or 0))

    return Field(spec, box, get, set_)


def _int_step(spec: ParamSpec) -> int:
    default = spec.default if isinstance(spec.default, int) and not isinstance(spec.default, bool) else 0
    return max(1, 10 ** (len(str(abs(default))) - 2)) if default >= 1000 else 1


def _float_field(spec: ParamSpec) -> Field:
    if spec.accepts_none():
        return _text_field(spec)
    box = SciSpinBox(spec)
    return Field(spec, box, box.value, lambda v: box.setValue(float(v)))


def _bool_field(spec: ParamSpec) -> Field:
    box = QCheckBox()
    return Field(spec, box, box.isChecked, lambda v: box.setChecked(bool(v)))


def _choice_field(spec: ParamSpec) -> Field:
    box = QComboBox()
    labels = spec.choice_labels or tuple(str(c) for c in spec.choices or ())
    for choice, label in zip(spec.choices or (), labels, strict=True):
        box.addItem(label, choice)

    def set_(value: Any) -> None:
        index = box.findData(value)
        box.setCurrentIndex(max(0, index))

    return Field(spec, box, box.currentData, set_)


def _text_field(spec: ParamSpec) -> Field:
    edit = QLineEdit()
    edit.setPlaceholderText(
        "required" if spec.required else NONE_TEXT if spec.default is None else spec.describe_default()
    )
    row: QWidget = edit
    if spec.ref in ("file", "folder"):
        row = QWidget()
        layout = QHBoxLayout(row)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(edit, 1)
        browse = QPushButton("Browse…")
        layout.addWidget(browse)

        def pick() -> None:
            if spec.ref == "folder":
                path = QFileDialog.getExistingDirectory(row, spec.title)
            else:
                path, _ = QFileDialog.getOpenFileName(row, spec.title)
            if path:
                edit.setText(path)

        browse.clicked.connect(pick)

    def get() -> Any:
        text = edit.text().strip()
        if not text:
            return None if spec.required else spec.default_value()
        if spec.type == "list":
            return [part.strip() for part in text.split(",") if part.strip()]
        for convert in (int, float) if spec.type in ("int", "float") else ():
            try:
                return convert(text)
            except ValueError:
                pass
        return text  # a wrong value is refused, with the parameter named, when the job is submitted

    def set_(value: Any) -> None:
        if value is None or value == spec.default:
            edit.setText("")  # the placeholder shows the default
        else:
            edit.setText(",".join(map(str, value)) if isinstance(value, list) else str(value))

    field = Field(spec, row, get, set_)
    field.edit = edit  # type: ignore[attr-defined]
    return field


def _ref_field(spec: ParamSpec, items: list[tuple[str, Any]]) -> Field:
    """A combo of the project's items (models, datasets, ...); an optional parameter offers 'default'."""
    box = QComboBox()
    if not spec.required:
        box.addItem(f"({NONE_TEXT})" if spec.default is None else f"({spec.describe_default()})", spec.default)
    for text, value in items:
        box.addItem(text, value)

    def set_(value: Any) -> None:
        index = box.findData(value)
        if index < 0 and value is not None:
            box.addItem(str(value), value)
            index = box.count() - 1
        box.setCurrentIndex(max(0, index))

    return Field(spec, box, box.currentData, set_)


def ref_items(project: Any, ref: str | None) -> list[tuple[str, Any]] | None:
    """(shown text, value) of the project's items a parameter can name; None: not a combo."""
    if project is None or ref is None:
        return None
    if ref == "model":
        return [(m["name"], m["name"]) for m in project.list_models()]
    if ref == "dataset":
        return [(d["name"], d["name"]) for d in project.list_datasets("chat")]
    if ref == "questions":
        return [("builtin (emgui's own)", "builtin")] + [
            (d["name"], d["name"]) for d in project.list_datasets("questions")
        ]
    if ref == "sae":
        from emgui.core.saes import list_saes

        return [(s["name"], s["name"]) for s in list_saes(project)]
    if ref == "direction":
        from emgui.core.steering import list_directions

        return [(d["name"], d["name"]) for d in list_directions(project)]
    if ref == "persona":
        from emgui.core.persona import persona_names

        return [(n, n) for n in persona_names(project)]
    return None


class ParamForm(QWidget):
    """The parameters of one job kind: key ones in front, the others under "Advanced"."""

    changed = Signal()

    def __init__(
        self,
        kind: str,
        project: Any = None,
        *,
        hide: tuple[str, ...] = (),
        front: tuple[str, ...] | None = None,
        values: dict | None = None,
        parent: QWidget | None = None,
    ):
        from emgui.core.jobs import get_kind

        super().__init__(parent)
        self.kind = get_kind(kind)
        self.project = project
        self.fields: dict[str, Field] = {}
        self.labels: dict[str, QLabel] = {}
        specs = [s for s in self.kind.params or () if s.name not in hide]
        in_front = [s for s in specs if (s.name in front if front is not None else s.key)]
        if front is not None:
            in_front.sort(key=lambda s: front.index(s.name))
        rest = [s for s in specs if s not in in_front]
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.front_form = self._form(in_front)
        layout.addLayout(self.front_form)
        self.advanced_button = QToolButton()
        self.advanced_button.setObjectName("disclosure")
        self.advanced_button.setCheckable(True)
        self.advanced_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_button.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced_button.setText(f"Advanced ({len(rest)} settings)")
        self.advanced = QWidget()
        self.advanced_form = self._form(rest)
        self.advanced.setLayout(self.advanced_form)
        self.advanced.setVisible(False)
        self.advanced_button.toggled.connect(self.show_advanced)
        if rest:
            layout.addWidget(self.advanced_button)
            layout.addWidget(self.advanced)
        for name, value in (values or {}).items():
            self.set_value(name, value)

    def _form(self, specs: list[ParamSpec]) -> QFormLayout:
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        for spec in specs:
            field = self._field(spec)
            self.fields[spec.name] = field
            label = QLabel(spec.title + (f" ({spec.unit})" if spec.unit else ""))
            label.setToolTip(tooltip(spec))
            field.widget.setToolTip(tooltip(spec))
            self.labels[spec.name] = label
            if not spec.required:
                field.set(spec.default)
            form.addRow(label, field.widget)
            self._connect(field)
        return form

    def _field(self, spec: ParamSpec) -> Field:
        items = ref_items(self.project, spec.ref) if spec.type == "str" else None
        if items is not None:
            return _ref_field(spec, items)
        return {
            "int": _int_field,
            "float": _float_field,
            "bool": _bool_field,
            "choice": _choice_field,
        }.get(spec.type, _text_field)(spec)

    def _connect(self, field: Field) -> None:
        widget = getattr(field, "edit", field.widget)
        for signal in ("valueChanged", "currentIndexChanged", "toggled", "textChanged"):
            if hasattr(widget, signal):
                getattr(widget, signal).connect(lambda *_: self.changed.emit())
                return

    def show_advanced(self, on: bool) -> None:
        self.advanced_button.setChecked(on)
        self.advanced_button.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.advanced.setVisible(on)

    # ----- values -------------------------------------------------------------------------------------
    def value(self, name: str) -> Any:
        return self.fields[name].get()

    def set_value(self, name: str, value: Any) -> None:
        self.fields[name].set(value)

    def set_visible(self, name: str, visible: bool) -> None:
        self.fields[name].widget.setVisible(visible)
        self.labels[name].setVisible(visible)

    def values(self) -> dict:
        """The parameters that differ from their defaults (and every required one)."""
        out = {}
        for name, field in self.fields.items():
            value = field.get()
            if field.spec.required or value != field.spec.default:
                if value is None and field.spec.required:
                    continue  # left empty: refused with the parameter named on submit
                out[name] = value
        return out


def submit_and_follow(page: Any, kind: str, params: dict) -> int | None:
    """Submit a job through the window's bridge and show its live view on the Jobs page. Refused
    parameters are shown in a message naming them; nothing is started then."""
    if page.bridge is None:
        show_error(page, "No project", "Open or create a project first.")
        return None
    try:
        job_id = page.bridge.submit(kind, params)
    except EmguiError as exc:
        show_error(page, f"Cannot start {kind}", str(exc))
        return None
    page.window_.show_job(job_id)
    return job_id


class JobDialog(QDialog):
    """Start one job of a kind from its declared parameters; on Start it opens the job's live view."""

    def __init__(
        self,
        page: Any,
        kind: str,
        *,
        intro: str = "",
        values: dict | None = None,
        hide: tuple[str, ...] = (),
        fixed: dict | None = None,
    ):
        super().__init__(page)
        self.page = page
        self.kind_name = kind
        self.fixed = dict(fixed or {})
        self.job_id: int | None = None
        self.form = ParamForm(kind, page.project, values=values, hide=tuple(hide) + tuple(self.fixed))
        self.setWindowTitle(self.form.kind.title or kind)
        self.setMinimumWidth(560)
        layout = QVBoxLayout(self)
        layout.addWidget(hint(intro or self.form.kind.description))
        layout.addWidget(self.form)
        layout.addStretch(1)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.start_button = buttons.addButton("Start", QDialogButtonBox.ButtonRole.AcceptRole)
        self.start_button.setObjectName("primary")
        buttons.accepted.connect(self.start)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def params(self) -> dict:
        return {**self.form.values(), **self.fixed}

    def start(self) -> None:
        self.job_id = submit_and_follow(self.page, self.kind_name, self.params())
        if self.job_id is not None:
            self.accept()


def apply_spec(widget: QWidget, kind: str, name: str, *, set_default: bool = True) -> ParamSpec:
    """Give an existing page widget a parameter's declared range, default and help (its tooltip), so the
    pages' own forms never repeat them. Bounds the declaration leaves open keep the widget's own."""
    from emgui.core.jobs import get_kind

    spec = get_kind(kind).param(name)
    widget.setToolTip(tooltip(spec))
    if isinstance(widget, (QSpinBox, QDoubleSpinBox)):
        lo = widget.minimum() if spec.min is None else spec.min
        hi = widget.maximum() if spec.max is None else spec.max
        widget.setRange(int(lo), int(hi)) if isinstance(widget, QSpinBox) else widget.setRange(lo, hi)
        if set_default and isinstance(spec.default, (int, float)) and not isinstance(spec.default, bool):
            widget.setValue(spec.default)
    elif isinstance(widget, QCheckBox):
        if set_default and isinstance(spec.default, bool):
            widget.setChecked(spec.default)
    elif isinstance(widget, QComboBox):
        if set_default and spec.choices:
            index = widget.findText(str(spec.default))
            widget.setCurrentIndex(max(0, index))
    elif isinstance(widget, QLineEdit) and set_default and not spec.required:
        if isinstance(spec.default, list):
            widget.setText(", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in spec.default))
        elif spec.default is None:
            widget.setPlaceholderText(widget.placeholderText() or NONE_TEXT)
        else:
            widget.setText(str(spec.default))
    return spec
