"""Reading job parameters with errors that name the job kind and the field at fault.

Parameters arrive as JSON from the store, or as strings from `--param KEY=VALUE` on the command line;
`parse_cli_value` turns the latter into numbers, booleans and lists where they look like them.
"""

from __future__ import annotations

import json
import math
from typing import Any

from emgui.core.errors import EmguiError

_MISSING = object()


def parse_cli_value(text: str) -> Any:
    """'3' -> 3, '0.5' -> 0.5, 'true' -> True, '[1,2]' -> [1, 2]; anything else stays a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def finite_json(value: Any) -> Any:
    """`value` with NaN and ±Infinity replaced by None, so that `json.dumps(..., allow_nan=False)` gives
    strict JSON (what `--json` promises) even for rows written before such values were refused."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def dumps_strict(value: Any, **kwargs: Any) -> str:
    """JSON that every parser accepts: no NaN or Infinity tokens."""
    return json.dumps(finite_json(value), allow_nan=False, **kwargs)


def parse_cli_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise EmguiError(f"--param '{pair}' is not KEY=VALUE")
        params[key.strip()] = parse_cli_value(value)
    return params


class Params:
    """Typed access to a job's parameters. Call `done()` last: unknown keys (typos) are an error.

    A job of a kind with declared parameters (emgui.core.paramspec) receives them resolved: every declared
    parameter is present, at its default unless given (`run_job` resolves them). So a job reads them
    without defaults, and `int`/`float`/`choice` take the declared range and choices. `done()` also fails
    when a job read a parameter its declaration lacks, or repeated a default unlike the declared one."""

    def __init__(self, params: dict[str, Any], kind: str):
        self._params = dict(params)
        self._kind = kind
        self._seen: set[str] = set()
        self._specs = _declared(kind)
        self._drift: list[str] = []

    def _spec(self, key: str) -> Any:
        return self._specs.get(key) if self._specs is not None else None

    def _get(self, key: str, default: Any) -> Any:
        self._seen.add(key)
        spec = self._spec(key)
        if spec is not None and default is not _MISSING and default != spec.default:
            self._drift.append(f"{key} (code {default!r}, declared {spec.default!r})")
        value = self._params.get(key, default)
        if value is _MISSING:
            raise EmguiError(f"{self._kind}: missing parameter '{key}' (pass --param {key}=...)")
        return value

    def _bounds(self, key: str, lo: Any, hi: Any) -> tuple[Any, Any]:
        spec = self._spec(key)
        if spec is None:
            return lo, hi
        return (spec.min if lo is None else lo), (spec.max if hi is None else hi)

    def _fail(self, key: str, want: str, value: Any) -> EmguiError:
        return EmguiError(f"{self._kind}: parameter '{key}' must be {want}, got {value!r}")

    def str(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is not None and not isinstance(value, str):
            value = str(value)
        return value

    def int(
        self, key: str, default: Any = _MISSING, *, min: int | None = None, max: int | None = None
    ) -> Any:
        value = self._get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise self._fail(key, "an integer", value)
        try:
            number = int(value) if not isinstance(value, float) or value.is_integer() else None
        except ValueError:
            number = None
        if number is None:
            raise self._fail(key, "an integer", value)
        self._check_range(key, number, *self._bounds(key, min, max))
        return number

    def float(
        self, key: str, default: Any = _MISSING, *, min: float | None = None, max: float | None = None
    ) -> Any:
        value = self._get(key, default)
        if value is None:
            return None
        if isinstance(value, bool):  # `lr=true` is a typo, not 1.0
            raise self._fail(key, "a number", value)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise self._fail(key, "a number", value) from None
        if not math.isfinite(number):  # NaN compares false with every bound and would slip through them
            raise self._fail(key, "a finite number", value)
        self._check_range(key, number, *self._bounds(key, min, max))
        return number

    def bool(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if isinstance(value, str):
            value = parse_cli_value(value)
        if not isinstance(value, bool):
            raise self._fail(key, "true or false", value)
        return value

    def choice(self, key: str, options: tuple[str, ...] | None = None, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is None and default is None:  # an optional choice left unset
            return None
        if options is None:
            spec = self._spec(key)
            if spec is None or spec.choices is None:
                raise EmguiError(f"{self._kind}: parameter '{key}' has no declared choices")
            options = spec.choices
        if value not in options:
            raise self._fail(key, "one of " + ", ".join(options), value)
        return value

    def list(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if value is not None and not isinstance(value, list):
            raise self._fail(key, "a list", value)
        if value is not None and any(isinstance(v, float) and not math.isfinite(v) for v in value):
            raise self._fail(key, "a list of finite numbers", value)
        return value

    def _check_range(self, key: str, value: float, lo: float | None, hi: float | None) -> None:
        if lo is not None and value < lo:
            raise self._fail(key, f">= {lo}", value)
        if hi is not None and value > hi:
            raise self._fail(key, f"<= {hi}", value)

    def done(self) -> None:
        declared = set(self._specs or ())
        unknown = sorted(set(self._params) - self._seen - declared)
        if unknown:
            known = ", ".join(sorted(self._seen | declared))
            raise EmguiError(f"{self._kind}: unknown parameter(s) {', '.join(unknown)} (known: {known})")
        if self._specs is not None:
            undeclared = sorted(self._seen - declared)
            if undeclared or self._drift:
                raise EmguiError(
                    f"internal error: job kind '{self._kind}' "
                    + (f"reads undeclared parameter(s) {', '.join(undeclared)}" if undeclared else "")
                    + ("; " if undeclared and self._drift else "")
                    + (f"repeats a default unlike its declaration: {', '.join(self._drift)}" if self._drift else "")
                    + " (declare parameters once, in emgui/core/kinds.py)"
                )


def _declared(kind: str) -> dict[str, Any] | None:
    """The declared parameters of a registered kind by name, or None (undeclared or unknown kind)."""
    from emgui.core.jobs import declared_params

    return declared_params(kind)
