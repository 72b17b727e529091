"""The registry of job kinds: what a kind is (its target function, declared parameters, cross-parameter
check) and the table of registered kinds. The built-in kinds register themselves in `emgui.core.jobs.kinds`,
which is also where lookups go (so that a lookup always sees them)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emgui.core.errors import EmguiError
from emgui.core.jobs.paramspec import ParamError, ParamSpec, resolve

JobFunction = Callable[[dict, Any], "dict | None"]  # (params, emgui.core.jobs.runner.JobContext) -> result


@dataclass(frozen=True)
class JobKind:
    name: str
    target: str  # "module:function", imported only when a job of this kind runs
    description: str
    heavy: bool = True  # uses the GPU/CPU hard: at most `max_heavy` such jobs run at once
    resumable: bool = False
    # The declared parameters (emgui.core.jobs.paramspec); None: undeclared, passed to the job unchecked.
    params: tuple[ParamSpec, ...] | None = None
    # Rules across parameters, checked at submit time on the resolved parameters: returns the problems.
    check: Callable[[dict], list[str]] | None = None
    title: str = ""  # what the window calls it ("Fine-tune"); default: the name
    # "module:function(project, kind, resolved params) -> lines to show": run at submit, after the parameters
    # are resolved and before a job row exists; raising EmguiError refuses the job (e.g. a fine-tune that will
    # not fit in memory). A string, so that the check's module is imported only when a job is submitted.
    precheck: str = ""

    def load(self) -> JobFunction:
        module, _, func = self.target.partition(":")
        return getattr(importlib.import_module(module), func)

    def param(self, name: str) -> ParamSpec:
        for spec in self.params or ():
            if spec.name == name:
                return spec
        raise KeyError(f"{self.name} declares no parameter '{name}'")

    def resolve(self, params: dict) -> dict:
        """The job's full parameters (defaults filled in), or ParamError naming every problem."""
        if self.params is None:
            return dict(params)
        resolved = resolve(self.name, self.params, params)
        problems = self.check(resolved) if self.check is not None else []
        if problems:
            raise ParamError(self.name, problems)
        return resolved

    def run_precheck(self, project: Any, resolved: dict) -> list[str]:
        """The kind's submit-time check on resolved parameters: lines to show, or EmguiError to refuse."""
        if not self.precheck:
            return []
        module, _, func = self.precheck.partition(":")
        return list(getattr(importlib.import_module(module), func)(project, self.name, dict(resolved)))


_KINDS: dict[str, JobKind] = {}
_DECLARED: dict[str, dict[str, ParamSpec] | None] = {}


def register_kind(kind: JobKind) -> JobKind:
    """Add a job kind. A second, different kind under a taken name is refused (registering the very same
    kind again, as a module imported twice does, changes nothing)."""
    existing = _KINDS.get(kind.name)
    if existing is not None and existing != kind:
        raise EmguiError(f"a job kind named '{kind.name}' is already registered ({existing.target})")
    _KINDS[kind.name] = kind
    _DECLARED[kind.name] = {s.name: s for s in kind.params} if kind.params is not None else None
    return kind


def registered() -> dict[str, JobKind]:
    """The kinds registered so far (built-in ones only once `emgui.core.jobs.kinds` is imported)."""
    return _KINDS


def declared(name: str) -> dict[str, ParamSpec] | None:
    """A kind's declared parameters by name (None for an unknown or undeclared kind)."""
    return _DECLARED.get(name)
