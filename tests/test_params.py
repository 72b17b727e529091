"""Declared job parameters: one declaration per kind gives the defaults, the submit-time checks, the CLI's
help and the saved job row's full parameters."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from emgui.core.errors import EmguiError
from emgui.core.jobs.kinds import get_kind, kinds, resolve_params
from emgui.core.jobs.params import Params
from emgui.core.jobs.paramspec import REQUIRED, Float, Int, ParamError, Str, declare, did_you_mean, resolve
from emgui.core.jobs.registry import JobKind, register_kind
from emgui.core.jobs.runner import JobManager
from emgui.core.project.store import Project

REPO = Path(__file__).resolve().parents[1]
NEW_KINDS = ("judge-check", "panel-import", "likelihood-probe", "persona-projection")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emgui", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def _required_values(kind: JobKind) -> dict:
    """A value of the right type for each required parameter."""
    sample = {"str": "x", "int": 1, "float": 1.0, "bool": True, "list": ["1"]}
    out = {}
    for spec in kind.params or ():
        if spec.required:
            out[spec.name] = spec.choices[0] if spec.type == "choice" else sample[spec.type]
    return out


def test_every_builtin_kind_declares_its_parameters() -> None:
    builtin = {n: k for n, k in kinds().items() if k.target.startswith("emgui.")}
    assert len(builtin) >= 25 and set(NEW_KINDS) <= set(builtin)
    for name, kind in builtin.items():
        assert kind.params is not None, name
        for spec in kind.params:
            assert spec.help, f"{name}.{spec.name} has no help"
            if not spec.required and spec.default is not None:
                assert spec.coerce(spec.default) == spec.default, f"{name}.{spec.name}: default out of its range"
    # The new parameters of diff, evaluate and realign are declared.
    assert {"control", "n_boot"} <= {s.name for s in get_kind("diff").params}
    assert {"probes", "direction", "panel"} <= {s.name for s in get_kind("evaluate").params}
    realign = {s.name for s in get_kind("realign").params}
    assert {"track_panel", "track_diff", "track_top", "track_texts"} <= realign


def test_resolve_fills_defaults_and_converts_the_way_jobs_read() -> None:
    resolved = resolve_params("finetune", {"model": "m", "dataset": "d", "lr": "2e-4", "layers": "3,5"})
    assert resolved["lr"] == 2e-4 and resolved["layers"] == [3, 5]
    assert resolved["method"] == "lora" and resolved["batch_size"] == 4 and resolved["max_steps"] is None
    assert resolved["target_modules"] == ["all-linear"]
    assert len(resolved) == len(get_kind("finetune").params)  # every parameter, defaults included
    # Lists accept a lone value (`--param layers=15`), as the jobs did.
    assert resolve_params("persona-vector", {"model": "m", "layers": 15})["layers"] == [15]
    # A default is a fresh copy: changing one job's list never changes the declaration.
    first = resolve_params("realign", {"model": "m"})
    first["save_at"].append(999)
    assert resolve_params("realign", {"model": "m"})["save_at"] == [0, 10, 20, 40, 80, 120]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"lr": math.nan}, "parameter 'lr' must be a finite number, got nan"),
        ({"lr": "inf"}, "parameter 'lr' must be a finite number"),
        ({"lr": -math.inf}, "parameter 'lr' must be a finite number"),
        ({"batch_size": True}, "parameter 'batch_size' must be an integer, got True"),
        ({"lr": False}, "parameter 'lr' must be a number, got False"),
        ({"batch_size": 2.5}, "parameter 'batch_size' must be an integer, got 2.5"),
        ({"batch_size": 0}, "parameter 'batch_size' must be >= 1, got 0"),
        ({"lora_dropout": 0.95}, "parameter 'lora_dropout' must be <= 0.9"),
        ({"method": "int8"}, "parameter 'method' must be one of lora, full, qlora, got 'int8'"),
        ({"merge": "maybe"}, "parameter 'merge' must be true or false"),
        ({"layers": ["a"]}, "parameter 'layers' must be a list of ints"),
        ({"name": ["a", "b"]}, "parameter 'name' must be text"),
        ({"learning_rate": 1e-4}, "unknown parameter(s) learning_rate (did you mean 'lr'?)"),
        ({"epoch": 2}, "unknown parameter(s) epoch (did you mean 'epochs'?)"),
        ({"lr": None}, "parameter 'lr' must be a number, got None"),
    ],
)
def test_bad_values_are_refused_naming_the_parameter(params: dict, message: str) -> None:
    with pytest.raises(ParamError) as err:
        resolve_params("finetune", {"model": "m", "dataset": "d", **params})
    assert message in str(err.value) and str(err.value).startswith("finetune: ")


def test_missing_required_and_rules_across_parameters() -> None:
    with pytest.raises(ParamError, match="missing parameter 'model'"):
        resolve_params("finetune", {"dataset": "d"})
    with pytest.raises(ParamError, match="give exactly one of prompts=<sampling job id> or dataset="):
        resolve_params("diff", {"sae": "s", "ft": "f"})
    with pytest.raises(ParamError, match="op=subset needs n"):
        resolve_params("dataset-derive", {"op": "subset", "dataset": "d"})
    with pytest.raises(ParamError, match="the projection probe needs direction=NAME"):
        resolve_params("evaluate", {"model": "m", "probes": ["projection"]})
    with pytest.raises(ParamError, match="choose a corpus"):
        resolve_params("sae-train", {"model": "m"})
    with pytest.raises(ParamError, match="pass path=FILE.yaml or builtin=true"):
        resolve_params("questions-import", {})
    # `--param track_diff=none` arrives as None: a value of its own, not a refusal.
    assert resolve_params("realign", {"model": "m", "track_diff": None})["track_diff"] is None


def test_every_kind_resolves_its_own_defaults() -> None:
    for name, kind in kinds().items():
        if kind.params is None:
            continue
        params = _required_values(kind)
        try:
            resolved = kind.resolve(params)
        except ParamError as exc:  # rules across parameters may want more; they must say what
            assert exc.problems and all(exc.problems), name
            continue
        assert set(resolved) == {s.name for s in kind.params}, name


def test_defaults_agree_with_the_code_that_keeps_its_own_constants() -> None:
    from emgui.core.evaluation.runs import DEFAULT_THRESHOLDS
    from emgui.core.steering.sweep import DEFAULT_STRENGTHS
    from emgui.core.training.trainer import TrainConfig

    evaluate = get_kind("evaluate")
    assert evaluate.param("aligned_threshold").default == DEFAULT_THRESHOLDS["aligned"]
    assert evaluate.param("coherent_threshold").default == DEFAULT_THRESHOLDS["coherent"]
    assert get_kind("steer-sweep").param("strengths").default == DEFAULT_STRENGTHS
    finetune = get_kind("finetune")
    for field in dataclasses.fields(TrainConfig):
        if field.name == "target_modules":
            assert finetune.param(field.name).default == [field.default]
            continue
        assert finetune.param(field.name).default == field.default, field.name


def test_params_reads_declared_ranges_and_flags_undeclared_reads() -> None:
    resolved = resolve_params("likelihood-probe", {"model": "m"})
    p = Params(resolved, "likelihood-probe")
    assert p.list("panel") == ["builtin"] and p.int("batch_size") == 8
    p.str("model"), p.int("seed"), p.str("device")
    p.done()  # every parameter read, none undeclared: fine
    p = Params({**resolved, "batch_size": 0}, "likelihood-probe")
    with pytest.raises(EmguiError, match="'batch_size' must be >= 1"):
        p.int("batch_size")  # the declared range, without repeating it in the job
    p = Params(resolved, "likelihood-probe")
    p.int("not_declared", 3)
    with pytest.raises(EmguiError, match="reads undeclared parameter\\(s\\) not_declared"):
        p.done()
    p = Params(resolved, "likelihood-probe")
    p.int("batch_size", 16)
    with pytest.raises(EmguiError, match="repeats a default unlike its declaration: batch_size"):
        p.done()
    assert Params({"method": "full"}, "finetune").choice("method") == "full"  # declared choices


def test_register_kind_refuses_a_different_kind_under_a_taken_name() -> None:
    kind = JobKind("test-dup", "tests.jobkinds_for_tests:counting_job", "test", heavy=False)
    register_kind(kind)
    register_kind(kind)  # the same kind again (a module imported twice): no change
    with pytest.raises(EmguiError, match="a job kind named 'test-dup' is already registered"):
        register_kind(JobKind("test-dup", "tests.jobkinds_for_tests:failing_job", "other", heavy=False))
    with pytest.raises(EmguiError, match="already registered"):
        register_kind(dataclasses.replace(get_kind("finetune"), description="another fine-tune"))
    with pytest.raises(ValueError, match="declared twice: n"):
        declare(Int("n", 1, "a"), Int("n", 2, "b"))


def test_submit_refuses_before_a_job_row_exists_and_stores_the_resolved_parameters(project: Project) -> None:
    manager = JobManager(project)
    with pytest.raises(ParamError, match="unknown parameter\\(s\\) stepz"):
        manager.submit("likelihood-probe", {"model": "m", "stepz": 1})
    with pytest.raises(ParamError, match="'batch_size' must be an integer, got inf"):
        manager.submit("likelihood-probe", {"model": "m", "seed": 1, "batch_size": math.inf})
    with pytest.raises(EmguiError, match="unknown job kind"):
        manager.submit("no-such-kind", {})
    assert project.list_jobs() == []
    job_id = manager.submit("likelihood-probe", {"model": "nope"})
    manager.wait(job_id, 30)
    row = project.get_job(job_id)
    assert row["params"] == {"model": "nope", "panel": ["builtin"], "batch_size": 8, "seed": 0, "device": None}
    assert row["status"] == "failed" and "no model 'nope'" in row["error"]


def test_cli_refusal_leaves_no_job_row_and_help_lists_parameters(tmp_path: Path) -> None:
    root = tmp_path / "p"
    assert _cli("new", str(root)).returncode == 0
    res = _cli("run", str(root), "finetune", "--param", "model=m", "--param", "dataset=d", "--param", "lr=nan")
    assert res.returncode == 1 and "parameter 'lr' must be a finite number" in res.stderr
    res = _cli("run", str(root), "finetune", "--param", "model=m", "--param", "dataset=d", "--param", "epoch=2")
    assert res.returncode == 1 and "did you mean 'epochs'?" in res.stderr
    assert json.loads(_cli("jobs", str(root), "--json").stdout) == []
    res = _cli("run", str(root), "finetune", "--help")
    assert res.returncode == 0 and "usage: emgui run PROJECT finetune" in res.stdout
    for line in ("lora_r", "int          default 8; >= 1", "LoRA rank: the adapter's size", "model", "required"):
        assert line in res.stdout, line
    res = _cli("kinds", "realign")
    assert res.returncode == 0 and "track_diff" in res.stdout and "default auto" in res.stdout
    assert "default 0,10,20,40,80,120" in res.stdout
    res = _cli("kinds")
    assert res.returncode == 0 and "persona-projection" in res.stdout and "emgui kinds KIND" in res.stdout


def test_did_you_mean_and_help_lines() -> None:
    assert did_you_mean("max_step", ["max_steps", "lr"]) == " (did you mean 'max_steps'?)"
    assert did_you_mean("zzz", ["max_steps", "lr"]) == ""
    specs = declare(Str("name", REQUIRED, "what it is called"), Float("x", 0.5, "a share", min=0, max=1))
    with pytest.raises(ParamError) as err:
        resolve("k", specs, {"x": 2, "nmae": "a"})
    assert err.value.problems[:3] == [
        "unknown parameter(s) nmae (did you mean 'name'?)",
        "missing parameter 'name' (pass --param name=...)",
        "parameter 'x' must be <= 1, got 2",
    ]
