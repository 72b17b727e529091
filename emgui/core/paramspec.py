"""Declared job parameters: each job kind lists its parameters once, with type, default, range and help.

The declaration is the single source of a parameter's default. From it:
- `resolve` checks a job's parameters when it is submitted (in the window and on the command line), before
  any worker starts and before a job row exists, and fills in the defaults, so the job row holds every value
  the job used;
- `Params` (emgui.core.params) reads a job's parameters without repeating the defaults;
- `emgui kinds KIND`, `emgui run P KIND --help` and the window's forms list the parameters, their defaults,
  ranges and help.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from emgui.core.errors import EmguiError


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED: Any = _Required()

TYPES = ("str", "int", "float", "bool", "choice", "list")

# What a text parameter names, for forms that offer the project's own items: model, dataset (chat data),
# questions (a question set), panel (a labelled answer panel), sae, direction, persona, job:KIND (a finished
# job of that kind), file, folder.
REFS = ("model", "dataset", "questions", "panel", "sae", "direction", "persona", "file", "folder")


class ParamError(EmguiError):
    """Parameters refused before a job starts; `problems` lists each one, naming the parameter."""

    def __init__(self, kind: str, problems: list[str]):
        super().__init__(f"{kind}: " + "; ".join(problems))
        self.kind = kind
        self.problems = problems


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a job kind."""

    name: str
    type: str  # one of TYPES
    default: Any = REQUIRED
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None  # for type "choice"
    choice_labels: tuple[str, ...] | None = None  # what the window shows for each choice
    item: str | None = None  # for type "list": "int", "float" or "str" items (None: as given)
    nullable: bool = False  # None (--param KEY=none) is a value of its own, even with a default
    ref: str | None = None  # what a text parameter names (see REFS), for the window's forms
    label: str = ""  # the form's label; default: the name in words
    key: bool = False  # shown in front in the window's forms (the rest under "Advanced")
    unit: str = ""  # shown after the value, e.g. "tokens"

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"parameter {self.name}: unknown type {self.type!r}")
        if self.type == "choice" and not self.choices:
            raise ValueError(f"parameter {self.name}: a choice needs choices")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def title(self) -> str:
        return self.label or self.name.replace("_", " ").capitalize()

    def default_value(self) -> Any:
        """A fresh copy of the default (lists are mutable)."""
        return copy.deepcopy(self.default)

    def accepts_none(self) -> bool:
        return self.nullable or self.default is None

    def describe_range(self) -> str:
        if self.type == "choice":
            return "one of " + ", ".join(str(c) for c in self.choices or ())
        if self.min is not None and self.max is not None:
            return f"{_num(self.min)} to {_num(self.max)}"
        if self.min is not None:
            return f">= {_num(self.min)}"
        if self.max is not None:
            return f"<= {_num(self.max)}"
        return ""

    def describe_default(self) -> str:
        if self.required:
            return "required"
        if self.default is None:
            return "none"
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        if isinstance(self.default, list):
            return ",".join(str(v) for v in self.default) if self.default else "(empty)"
        if self.default == "":
            return "(empty)"
        return _num(self.default) if isinstance(self.default, float) else str(self.default)

    # ----- checking one value -------------------------------------------------------------------------
    def coerce(self, value: Any) -> Any:
        """The value as the job will read it, or ValueError naming what was wanted."""
        if value is None:
            if self.accepts_none():
                return None
            raise ValueError(self._want())
        convert = getattr(self, f"_to_{self.type}")
        return convert(value)

    def _want(self) -> str:
        return {
            "str": "text",
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "choice": self.describe_range(),
            "list": "a list" + (f" of {self.item}s" if self.item else ""),
        }[self.type]

    def _to_str(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return str(value)  # `--param name=123` arrives as a number; ids name models too
        raise ValueError(self._want())

    def _to_int(self, value: Any) -> int:
        number = _as_int(value)
        if number is None:
            raise ValueError(self._want())
        self._check_range(number)
        return number

    def _to_float(self, value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(self._want())
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(self._want()) from None
        if not math.isfinite(number):
            raise ValueError("a finite number")
        self._check_range(number)
        return number

    def _to_bool(self, value: Any) -> bool:
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("true", "yes", "on"):
                return True
            if lowered in ("false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ValueError(self._want())

    def _to_choice(self, value: Any) -> Any:
        if value in (self.choices or ()) and not isinstance(value, bool):
            return value
        raise ValueError(self._want())

    def _to_list(self, value: Any) -> list:
        if isinstance(value, str):
            items: list = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            items = [value]  # `--param layers=15` arrives as 15
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise ValueError(self._want())
        if self.item == "int":
            ints = [_as_int(v) for v in items]
            if any(v is None for v in ints):
                raise ValueError(self._want())
            return ints
        if self.item == "float":
            try:
                floats = [float(v) for v in items if not isinstance(v, bool)]
            except (TypeError, ValueError):
                raise ValueError(self._want()) from None
            if len(floats) != len(items) or not all(math.isfinite(v) for v in floats):
                raise ValueError(self._want())
            return floats
        if self.item == "str":
            if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in items):
                raise ValueError(self._want())
            return [str(v) for v in items]
        return items

    def _check_range(self, number: float) -> None:
        if self.min is not None and number < self.min:
            raise ValueError(f">= {_num(self.min)}")
        if self.max is not None and number > self.max:
            raise ValueError(f"<= {_num(self.max)}")


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


# ----- short constructors for the declarations in kinds.py ----------------------------------------------
def Str(name: str, default: Any = REQUIRED, help: str = "", **kw: Any) -> ParamSpec:  # noqa: N802
    return ParamSpec(name, "str", default, help, **kw)


def Int(name: str, default: Any = REQUIRED, help: str = "", **kw: Any) -> ParamSpec:  # noqa: N802
    return ParamSpec(name, "int", default, help, **kw)


def Float(name: str, default: Any = REQUIRED, help: str = "", **kw: Any) -> ParamSpec:  # noqa: N802
    return ParamSpec(name, "float", default, help, **kw)


def Bool(name: str, default: Any = False, help: str = "", **kw: Any) -> ParamSpec:  # noqa: N802
    return ParamSpec(name, "bool", default, help, **kw)


def Choice(name: str, choices: Sequence[Any], default: Any = REQUIRED, help: str = "", **kw: Any) -> ParamSpec:  # noqa: N802
    return ParamSpec(name, "choice", default, help, choices=tuple(choices), **kw)


def List(name: str, default: Any = None, help: str = "", **kw: Any) -> ParamSpec:  # noqa: N802
    return ParamSpec(name, "list", default, help, **kw)


def declare(*groups: Iterable[ParamSpec] | ParamSpec) -> tuple[ParamSpec, ...]:
    """One kind's parameters from specs and shared groups; a name declared twice is an error."""
    specs: list[ParamSpec] = []
    for group in groups:
        specs.extend([group] if isinstance(group, ParamSpec) else group)
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"parameters declared twice: {', '.join(twice)}")
    return tuple(specs)


def override(group: Iterable[ParamSpec], **changes: dict) -> tuple[ParamSpec, ...]:
    """A shared group with some members changed (e.g. another default): override(G, n={"default": 5})."""
    from dataclasses import replace

    out = []
    for spec in group:
        out.append(replace(spec, **changes[spec.name]) if spec.name in changes else spec)
    unknown = set(changes) - {s.name for s in out}
    if unknown:
        raise ValueError(f"override: no parameter {', '.join(sorted(unknown))} in the group")
    return tuple(out)


# ----- checking a job's parameters -----------------------------------------------------------------------
def did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if not close and "_" in name:  # learning_rate -> lr, n_steps -> max_steps: compare the parts
        initials = "".join(part[0] for part in name.split("_") if part)
        close = [k for k in known if k == initials]
    return f" (did you mean '{close[0]}'?)" if close else ""


def resolve(kind: str, specs: Sequence[ParamSpec], params: dict) -> dict:
    """The full parameters of a job: every given value checked and converted the way the job reads it,
    every other declared parameter at its default. Raises ParamError listing every problem."""
    by_name = {s.name: s for s in specs}
    problems: list[str] = []
    for key in params:
        if key not in by_name:
            problems.append(f"unknown parameter(s) {key}{did_you_mean(key, by_name)}")
    resolved: dict[str, Any] = {}
    for spec in specs:
        if spec.name in params:
            try:
                resolved[spec.name] = spec.coerce(params[spec.name])
            except ValueError as exc:
                problems.append(f"parameter '{spec.name}' must be {exc}, got {params[spec.name]!r}")
        elif spec.required:
            problems.append(f"missing parameter '{spec.name}' (pass --param {spec.name}=...)")
        else:
            resolved[spec.name] = spec.default_value()
    if problems:
        if any(p.startswith("unknown") for p in problems):
            problems.append("known: " + ", ".join(sorted(by_name)))
        raise ParamError(kind, problems)
    return resolved


def defaults_used(specs: Sequence[ParamSpec], params: dict) -> set[str]:
    """The names whose value in `params` is the declared default (what a job row shows as 'default')."""
    return {
        s.name for s in specs if not s.required and s.name in params and params[s.name] == s.default
    }


def help_lines(specs: Sequence[ParamSpec]) -> list[str]:
    """Lines for a terminal: name, type, default, range, help; required parameters first."""
    rows = sorted(specs, key=lambda s: not s.required)
    width = max((len(s.name) for s in rows), default=0)
    lines = []
    for s in rows:
        kind = s.type if s.type != "list" else f"list of {s.item}" if s.item else "list"
        extra = [f"default {s.describe_default()}" if not s.required else "required"]
        if s.describe_range():
            extra.append(s.describe_range())
        if s.unit:
            extra.append(s.unit)
        lines.append(f"  {s.name:<{width}}  {kind:<12} {'; '.join(extra)}")
        if s.help:
            lines.append(f"  {'':<{width}}  {s.help}")
    return lines
