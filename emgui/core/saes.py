"""Sparse autoencoders in a project: the `saes` table, sae-lens's on-disk format, and the ways to get one.

An SAE is a folder in sae-lens's format (`cfg.json` + `sae_weights.safetensors`) under
`artifacts/saes/<name>/`, loadable with `sae_lens.SAE.load_from_disk`. It arrives by

- download from sae-lens's registry of pretrained SAEs (`sae-pretrained`): fetched once, saved into the
  project, and from then on always loaded from disk;
- import of a local folder (`sae-import`), copied into the project;
- training (`sae-train`, at the end of this module): cache activations at a hook of any local model over a
  corpus, train with sae-lens's SAE classes, record explained variance, L0 and CE loss recovered.

Before any compute an SAE is checked against the model it will read: its hook must name a module of
the model and its input width must equal the activation width there; a corrupt weight file is refused
with the file's name. `import sae_lens` costs seconds, so it happens only inside the functions that load.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from emgui.core.activations import is_residual, layer_index, parse_hook
from emgui.core.errors import Cancelled, EmguiError
from emgui.core.params import Params
from emgui.core.store import Project, remove_path, replace_reserved

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
ARCHITECTURES = ("topk", "jumprelu", "standard")
_registry_cache: dict[str, Any] = {}
_registry_lock = threading.Lock()


# ------------------------------------------------------------------------------------------ folders
def saes_dir(project: Project) -> Path:
    path = project.artifacts_dir / "saes"
    path.mkdir(parents=True, exist_ok=True)
    return path


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "sae"


def read_sae_folder(folder: str | Path) -> dict:
    """The SAE's cfg.json, checked: the file parses, names its architecture and sizes, and the weights file
    is a readable safetensors file whose W_enc/W_dec shapes agree with the config. Errors name the file."""
    from emgui.core.modelfiles import read_safetensors_header

    folder = Path(folder)
    cfg_path, weights = folder / CFG_FILE, folder / WEIGHTS_FILE
    if not folder.is_dir():
        raise EmguiError(f"SAE folder {folder} does not exist")
    if not cfg_path.is_file():
        raise EmguiError(f"{folder} is not an SAE folder in sae-lens's format: {CFG_FILE} is missing")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EmguiError(f"{cfg_path} is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise EmguiError(f"{cfg_path} must hold a JSON object")
    for key in ("d_in", "d_sae"):
        if not isinstance(cfg.get(key), int) or cfg[key] <= 0:
            raise EmguiError(f"{cfg_path}: '{key}' must be a positive integer, got {cfg.get(key)!r}")
    if not isinstance(cfg.get("architecture"), str):
        raise EmguiError(f"{cfg_path}: 'architecture' is missing")
    if not weights.is_file():
        raise EmguiError(f"{folder}: the weights file {WEIGHTS_FILE} is missing")
    header = read_safetensors_header(weights)  # raises, naming the file, when truncated or corrupt
    want = {"W_enc": [cfg["d_in"], cfg["d_sae"]], "W_dec": [cfg["d_sae"], cfg["d_in"]]}
    for name, shape in want.items():
        if name not in header:
            raise EmguiError(f"{weights} is not an SAE's weights: it has no tensor '{name}'")
        if list(header[name]["shape"]) != shape:
            raise EmguiError(
                f"{weights}: {name} has shape {header[name]['shape']} but {CFG_FILE} says {shape} "
                f"(d_in={cfg['d_in']}, d_sae={cfg['d_sae']})"
            )
    return cfg


def hook_of(cfg: dict) -> str:
    """The hook an SAE reads, from its cfg.json (sae-lens keeps it in metadata since version 6)."""
    meta = cfg.get("metadata") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name")
    if not hook:
        raise EmguiError(
            "the SAE's cfg.json names no hook (metadata.hook_name); pass hook=... when importing"
        )
    return str(hook)


# ------------------------------------------------------------------------------------------ the table
def get_sae(project: Project, ref: int | str | dict) -> dict:
    """An SAE row by id or name (a row passes through); the error lists what exists."""
    if isinstance(ref, dict):
        return ref
    row = None
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        row = project.query_one("SELECT * FROM saes WHERE id = ?", [int(ref)])
    if row is None:
        row = project.query_one("SELECT * FROM saes WHERE name = ?", [str(ref)])
    if row is None:
        names = ", ".join(r["name"] for r in list_saes(project)) or "none yet"
        raise EmguiError(f"no SAE '{ref}' in this project (SAEs: {names})")
    return row


def list_saes(project: Project, model_id: int | None = None) -> list[dict]:
    if model_id is None:
        return project.query("SELECT * FROM saes ORDER BY id")
    return project.query("SELECT * FROM saes WHERE model_id = ? ORDER BY id", [model_id])


def unique_name(project: Project, name: str) -> str:
    base, n = name, 2
    while project.query_one("SELECT id FROM saes WHERE name = ?", [name]):
        name = f"{base}-{n}"
        n += 1
    return name


def _check_name_free(project: Project, name: str) -> None:
    if project.query_one("SELECT id FROM saes WHERE name = ?", [name]):
        raise EmguiError(f"an SAE named '{name}' already exists in this project; choose another name")


def register_sae(
    project: Project,
    folder: str | Path,
    *,
    name: str,
    source: str,
    model_id: int | None = None,
    job_id: int | None = None,
    hook_name: str | None = None,
    info: dict | None = None,
) -> int:
    """Add a row for an SAE folder (already inside the project, normally) after checking its files."""
    cfg = read_sae_folder(folder)
    _check_name_free(project, name)
    sae_id = project.insert(
        "saes",
        {
            "name": name,
            "path": project.relpath(folder),
            "model_id": model_id,
            "hook_name": hook_name or hook_of(cfg),
            "d_in": cfg["d_in"],
            "d_sae": cfg["d_sae"],
            "architecture": cfg["architecture"],
            "source": source,
            "info": info or {},
            "job_id": job_id,
            "created_at": time.time(),
        },
    )
    project.add_artifact(folder, "sae", job_id=job_id, meta={"sae_id": sae_id}, checksum=False)
    return sae_id


def save_and_register(
    project: Project,
    sae: Any,
    *,
    name: str,
    source: str,
    model_id: int | None = None,
    job_id: int | None = None,
    info: dict | None = None,
) -> int:
    """Save an in-memory sae-lens SAE into the project (sae-lens's format) and register it."""
    _check_name_free(project, name)
    tmp = project.temp_path("saes", directory=True)
    try:
        sae.save_model(tmp)
    except BaseException:
        remove_path(tmp)
        raise
    return _place_and_register(
        project, tmp, name=name, source=source, model_id=model_id, job_id=job_id, info=info
    )


def _place_and_register(project: Project, tmp: Path, *, name: str, **fields: Any) -> int:
    """Move a finished SAE folder from its temporary name to a folder of its own (never one another row
    points at, whatever the names slug to) and register it; nothing is left behind if that fails."""
    folder = None
    try:
        folder = project.reserve_path("saes", name, directory=True)
        replace_reserved(tmp, folder)
        return register_sae(project, folder, name=name, **fields)
    except BaseException:
        remove_path(tmp)
        if folder is not None:
            remove_path(folder)
        raise


def delete_sae(project: Project, ref: int | str) -> None:
    """Remove an SAE row, and its folder when this row alone owns it inside artifacts/."""
    project.check_writable("delete SAEs")
    row = get_sae(project, ref)
    path = project.abspath(row["path"])
    owned = path.is_dir() and project.owns_path(path, row=("saes", row["id"]))
    with project.transaction() as conn:
        conn.execute("DELETE FROM saes WHERE id = ?", [row["id"]])
    if owned:
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------------ fitting
def _model_config(project: Project, model_row: dict) -> dict | None:
    """config.json of a model (an adapter's base), or None when there is none to read (a .gguf file)."""
    row = model_row
    while row.get("kind") == "adapter" and row.get("base_model_id"):
        row = project.get_model(row["base_model_id"])
    path = project.model_path(row)
    cfg_path = path / "config.json" if path.is_dir() else None
    if cfg_path is None or not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return cfg.get("text_config") or cfg


def check_fits_config(project: Project, sae_row: dict, model_row: dict) -> None:
    """Refuse an SAE that cannot read this model, from the model's config.json alone (before loading it):
    a residual-stream hook past the model's last layer, or a d_in other than the hidden size."""
    cfg = _model_config(project, model_row)
    if cfg is None or not is_residual(sae_row["hook_name"]):
        return  # checked on the loaded model instead (check_fits_model)
    hidden, n_layers = (
        cfg.get("hidden_size") or cfg.get("n_embd"),
        cfg.get("num_hidden_layers") or cfg.get("n_layer"),
    )
    layer = layer_index(sae_row["hook_name"])
    if n_layers and layer is not None and layer >= n_layers:
        raise EmguiError(
            f"SAE '{sae_row['name']}' reads hook '{sae_row['hook_name']}' (layer {layer}), but model "
            f"'{model_row['name']}' has only {n_layers} layers (0-{n_layers - 1})"
        )
    if hidden and sae_row["d_in"] != hidden:
        raise EmguiError(
            f"SAE '{sae_row['name']}' expects inputs of size {sae_row['d_in']} at '{sae_row['hook_name']}', "
            f"but model '{model_row['name']}' has hidden size {hidden}: this SAE was made for another model"
        )


def check_fits_model(model: Any, sae_row: dict, model_name: str = "the model") -> None:
    """Refuse an SAE whose hook is not a module of the loaded model or whose d_in differs from the width
    there (found with a 2-token forward pass that stops at the hook)."""
    from emgui.core.activations import resolve_module, width_at

    resolve_module(model, sae_row["hook_name"])
    width = width_at(model, sae_row["hook_name"])
    if width != sae_row["d_in"]:
        raise EmguiError(
            f"SAE '{sae_row['name']}' expects inputs of size {sae_row['d_in']} at '{sae_row['hook_name']}', "
            f"but {model_name} produces {width} there"
        )


# ------------------------------------------------------------------------------------------ loading
def load_sae(project: Project, sae_row_or_ref: dict | int | str, device: str | None = None) -> Any:
    """The SAE as a sae-lens `SAE` in eval mode, with decoder rows folded to unit norm (so that W_dec[i] is
    a direction and activations are magnitudes along it). Files are checked first."""
    row = get_sae(project, sae_row_or_ref)
    folder = project.abspath(row["path"])
    read_sae_folder(folder)
    from sae_lens import SAE

    from emgui.core.device import pick_device

    try:
        sae = SAE.load_from_disk(str(folder), device=pick_device(device))
    except Exception as exc:  # sae-lens raises assorted errors for files it cannot use
        raise EmguiError(f"SAE '{row['name']}': cannot load {folder / WEIGHTS_FILE}: {exc}") from exc
    fold_decoder_norms(sae)
    sae.eval()
    sae.requires_grad_(False)
    return sae


def fold_decoder_norms(sae: Any) -> bool:
    """Fold decoder norms into the encoder where that keeps the SAE's outputs (all but TopK SAEs that do
    not rescale by decoder norm, whose top-k choice would change). Returns whether it folded."""
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", True) is False:
        return False
    try:
        sae.fold_W_dec_norm()
    except NotImplementedError:
        return False
    return True


def unit_decoder(sae: Any) -> Any:
    """Decoder rows as unit vectors (a copy), whatever the SAE folded."""
    w = sae.W_dec.detach().float()
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-8)


# ------------------------------------------------------------------------------------------ registry
def _registry_path() -> Path:
    spec = importlib.util.find_spec("sae_lens")  # finds the package without importing it (slow)
    if spec is None or not spec.submodule_search_locations:
        raise EmguiError("sae-lens is not installed (pip install sae-lens)")
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained_saes.yaml"


def registry() -> dict:
    """sae-lens's pretrained_saes.yaml, parsed once per process (~1 s)."""
    with _registry_lock:
        if "data" not in _registry_cache:
            import yaml

            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            with _registry_path().open(encoding="utf-8") as fh:
                _registry_cache["data"] = yaml.load(fh, Loader=loader) or {}
        return _registry_cache["data"]


_MODEL_ALIASES = {"gpt2-small": "gpt2"}  # TransformerLens names that differ from the hub's


def _norm_model(name: str) -> str:
    name = name.strip().lower().removeprefix("https://huggingface.co/").removeprefix("hf://").strip("/")
    return _MODEL_ALIASES.get(name, name)


def model_matches(registry_model: str, candidates: list[str]) -> bool:
    """Whether a registry entry's model (e.g. 'gemma-2-2b', 'google/gemma-3-1b-pt', or a hub URL) is one
    of the candidate names (repo ids, folder names): equal ignoring the organisation."""
    want = _norm_model(registry_model)
    short = want.rsplit("/", 1)[-1]
    for cand in candidates:
        c = _norm_model(cand)
        if c and (c == want or c.rsplit("/", 1)[-1] == short):
            return True
    return False


def model_names(project: Project, model_row: dict) -> list[str]:
    """Names a model may go by in the registry: its source, name, and config's _name_or_path."""
    names = [model_row.get("source") or "", model_row.get("name") or ""]
    path = project.model_path(model_row)
    cfg = path / "config.json" if path.is_dir() else None
    if cfg is not None and cfg.is_file():
        try:
            names.append(str(json.loads(cfg.read_text(encoding="utf-8")).get("_name_or_path") or ""))
        except (OSError, json.JSONDecodeError):
            pass
    return [n for n in names if n]


def list_releases(model: list[str] | str | None = None) -> list[dict]:
    """The registry's releases ({release, model, repo_id, n_saes, links}), only those for `model`
    (a name or list of names) when given."""
    names = [model] if isinstance(model, str) else model
    out = []
    for release, entry in registry().items():
        if names and not model_matches(str(entry.get("model", "")), names):
            continue
        out.append(
            {
                "release": release,
                "model": entry.get("model"),
                "repo_id": entry.get("repo_id"),
                "n_saes": len(entry.get("saes") or []),
                "links": entry.get("links") or {},
            }
        )
    return out


def release_saes(release: str) -> list[dict]:
    """The SAEs of a release: id, path in the repo, and l0 / variance explained when the registry has them."""
    entry = registry().get(release)
    if entry is None:
        close = [r for r in registry() if release.lower() in r.lower()][:8]
        hint = f" (did you mean: {', '.join(close)})" if close else ""
        raise EmguiError(f"sae-lens's registry has no release '{release}'{hint}")
    return [dict(s) for s in entry.get("saes") or []]


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host accepts a connection within `timeout` seconds. The probe runs in a thread
    because name resolution ignores socket timeouts and can hang far longer on a machine without DNS."""
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    parsed = urlparse(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((parsed.hostname or "huggingface.co", port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _prefetch(repo_id: str, folder: str, ctx: Any) -> None:
    """Download the release's files for one SAE into the HF cache, with byte progress and cancellation
    between files, so that sae-lens then finds them there."""
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi()
    entries = [
        e
        for e in api.list_repo_tree(repo_id, path_in_repo=folder or None, recursive=True)
        if getattr(e, "size", None) is not None
    ]
    total = sum(e.size for e in entries) or 1
    done = 0
    for entry in entries:
        ctx.check_cancelled()
        ctx.progress(
            0.05 + 0.8 * done / total, f"downloading {entry.path} ({done / 1e6:.1f} / {total / 1e6:.1f} MB)"
        )
        hf_hub_download(repo_id, entry.path)
        done += entry.size


def pretrained_job(params: dict, ctx: Any) -> dict:
    """`sae-pretrained`: download an SAE from sae-lens's registry once, save it into the project, register it."""
    p = Params(params, "sae-pretrained")
    release, sae_id = p.str("release"), p.str("sae_id")
    model_ref, name = p.str("model"), p.str("name")
    p.done()
    project: Project = ctx.project
    ids = [s["id"] for s in release_saes(release)]
    if sae_id not in ids:
        raise EmguiError(
            f"release '{release}' has no SAE '{sae_id}' (it has {len(ids)}: {', '.join(ids[:10])}…)"
        )
    entry = registry()[release]
    path_in_repo = next(s.get("path", "") for s in release_saes(release) if s["id"] == sae_id)
    model_row = project.get_model(model_ref) if model_ref else None
    name = name or unique_name(project, slug(f"{release}-{sae_id}"))
    _check_name_free(project, name)
    if _offline():
        raise EmguiError(
            f"cannot download SAE {release}/{sae_id}: the hub is offline (HF_HUB_OFFLINE is set). "
            "Download it once while online, or import a local SAE folder"
        )
    if not _hub_reachable():
        raise EmguiError(f"cannot download SAE {release}/{sae_id}: the Hugging Face hub is unreachable")
    ctx.progress(0.02, f"fetching {entry.get('repo_id')}/{path_in_repo}")
    _prefetch(entry["repo_id"], path_in_repo, ctx)
    from sae_lens import SAE

    ctx.progress(0.9, "converting")
    sae = SAE.from_pretrained(release, sae_id, device="cpu")
    row = {"name": name, "hook_name": sae.cfg.metadata.hook_name or "", "d_in": sae.cfg.d_in}
    if model_row is not None and row["hook_name"]:
        check_fits_config(project, row, model_row)
    found = next(s for s in release_saes(release) if s["id"] == sae_id)
    info = {k: found[k] for k in ("l0", "variance_explained", "neuronpedia") if k in found}
    info["repo_id"] = entry.get("repo_id")
    new_id = save_and_register(
        project,
        sae,
        name=name,
        source=f"pretrained:{release}/{sae_id}",
        model_id=model_row["id"] if model_row else None,
        job_id=ctx.job_id,
        info=info,
    )
    ctx.progress(1.0, "saved")
    return {"sae_id": new_id, "name": name}


# ------------------------------------------------------------------------------------------ import
def import_folder(
    project: Project,
    path: str | Path,
    *,
    name: str | None = None,
    model: int | str | None = None,
    hook_name: str | None = None,
    job_id: int | None = None,
) -> int:
    """Copy a local sae-lens SAE folder into the project and register it; refused before copying when its
    files are unusable or it does not fit `model`."""
    src = Path(path).expanduser()
    cfg = read_sae_folder(src)
    hook = hook_name or hook_of(cfg)
    parse_hook(hook)
    name = name or unique_name(project, slug(src.name))
    _check_name_free(project, name)
    model_row = project.get_model(model) if model is not None else None
    row = {"name": name, "hook_name": hook, "d_in": cfg["d_in"]}
    if model_row is not None:
        check_fits_config(project, row, model_row)
    dest = project.temp_path("saes", directory=True)
    try:
        for file in (CFG_FILE, WEIGHTS_FILE):
            shutil.copy2(src / file, dest / file)
        for extra in src.glob("*.safetensors"):  # e.g. sparsity.safetensors: small and useful
            if extra.name != WEIGHTS_FILE:
                shutil.copy2(extra, dest / extra.name)
        if hook != cfg.get("metadata", {}).get("hook_name"):  # keep cfg.json in step with the row
            cfg.setdefault("metadata", {})["hook_name"] = hook
            (dest / CFG_FILE).write_text(json.dumps(cfg), encoding="utf-8")
    except BaseException:
        remove_path(dest)
        raise
    return _place_and_register(
        project,
        dest,
        name=name,
        source="folder",
        model_id=model_row["id"] if model_row else None,
        job_id=job_id,
        hook_name=hook,
        info={"imported_from": str(src.resolve())},
    )


def import_job(params: dict, ctx: Any) -> dict:
    """`sae-import`: copy a local SAE folder (cfg.json + sae_weights.safetensors) into the project."""
    p = Params(params, "sae-import")
    path, name, model, hook = p.str("path"), p.str("name"), p.str("model"), p.str("hook")
    p.done()
    sae_id = import_folder(ctx.project, path, name=name, model=model, hook_name=hook, job_id=ctx.job_id)
    ctx.progress(1.0, "imported")
    return {"sae_id": sae_id, "name": get_sae(ctx.project, sae_id)["name"]}


# ------------------------------------------------------------------------------------------ training
_TRAIN_CLASSES = {
    "topk": ("TopKTrainingSAE", "TopKTrainingSAEConfig"),
    "jumprelu": ("JumpReLUTrainingSAE", "JumpReLUTrainingSAEConfig"),
    "standard": ("StandardTrainingSAE", "StandardTrainingSAEConfig"),
}
CACHE_FILE = "activations.safetensors"
STATE_FILE = "train_state.pt"
CHECKPOINT_SECONDS = 30.0


def as_lists(params: dict, *keys: str) -> dict:
    """`--param samples=3` arrives as a number: treat a lone value as a one-element list."""
    return {
        k: ([v] if k in keys and isinstance(v, (int, float)) and not isinstance(v, bool) else v)
        for k, v in params.items()
    }


def _train_settings(params: dict) -> dict:
    p = Params(as_lists(params, "samples"), "sae-train")
    s = {
        "model": p.str("model"),
        "hook": p.str("hook"),
        "architecture": p.choice("architecture"),
        "d_sae": p.int("d_sae"),
        "expansion": p.int("expansion"),
        "k": p.int("k"),
        "l1_coefficient": p.float("l1_coefficient"),
        "l0_coefficient": p.float("l0_coefficient"),
        "lr": p.float("lr"),
        "tokens": p.int("tokens"),
        "cache_tokens": p.int("cache_tokens"),
        "batch_size": p.int("batch_size"),
        "context_size": p.int("context_size"),
        "datasets": p.list("datasets"),
        "samples": p.list("samples"),
        "text_files": p.list("text_files"),
        "name": p.str("name"),
        "device": p.str("device"),
        "dtype": p.str("dtype"),
        "seed": p.int("seed"),
        "eval_fraction": p.float("eval_fraction"),
        "ce_sequences": p.int("ce_sequences"),
    }
    p.done()
    if not (s["datasets"] or s["samples"] or s["text_files"]):
        raise EmguiError(
            "sae-train: choose a corpus: datasets=..., samples=<sampling job ids> or text_files=..."
        )
    s["cache_tokens"] = s["cache_tokens"] or min(s["tokens"], 500_000)
    return s


def _chunks(tokenizer: Any, items: list[dict], size: int) -> list[list[int]]:
    """Every corpus item tokenized and cut into sequences of at most `size` tokens."""
    from emgui.core.activations import encode_item

    seqs = []
    for item in items:
        ids = encode_item(tokenizer, item, max_length=10**7)["input_ids"]
        seqs += [ids[i : i + size] for i in range(0, len(ids), size) if len(ids[i : i + size]) >= 2]
    return seqs


def _cache_activations(
    ctx: Any, model: Any, hook: str, seqs: list[list[int]], n_tokens: int, pad_id: int, device: str
) -> Any:
    """Activations at the hook for up to n_tokens tokens ([n, d], float32, CPU). The first position of each
    sequence is skipped: its norm is an outlier (an attention sink) that no other token shares."""
    import torch

    from emgui.core.activations import capture, length_batches, pad_batch

    chunks, have = [], 0
    batches = length_batches([len(s) for s in seqs], max_tokens=4096, window=256)  # seqs come shuffled
    for i, idx in enumerate(batches):
        batch = pad_batch([seqs[j] for j in idx], pad_id, device)
        acts = next(capture(model, hook, [batch]))
        keep = batch["attention_mask"].bool().clone()
        keep[:, 0] = False
        chunks.append(acts[keep].float().cpu())
        have += chunks[-1].shape[0]
        shown = min(have, n_tokens)  # the last batch overshoots; the cache is cut to n_tokens below
        ctx.progress(0.3 * shown / n_tokens, f"caching activations: {shown:,} / {n_tokens:,} tokens")
        if have >= n_tokens or i == len(batches) - 1:
            break
    if not have:
        raise EmguiError("sae-train: the corpus gave no tokens to cache")
    acts = torch.cat(chunks)[:n_tokens]
    # batches are sorted by length within windows: shuffle so that the held-out slice is a fair sample
    return acts[torch.randperm(acts.shape[0], generator=torch.Generator().manual_seed(1234))]


def _make_training_sae(s: dict, d_in: int, metadata: dict) -> Any:
    import sae_lens
    from sae_lens.saes.sae import SAEMetadata

    cls_name, cfg_name = _TRAIN_CLASSES[s["architecture"]]
    extra: dict[str, Any] = {
        "topk": {"k": s["k"]},
        "jumprelu": {"l0_coefficient": s["l0_coefficient"]},
        "standard": {"l1_coefficient": s["l1_coefficient"]},
    }[s["architecture"]]
    cfg = getattr(sae_lens, cfg_name)(
        d_in=d_in, d_sae=s["d_sae"] or s["expansion"] * d_in, metadata=SAEMetadata(**metadata), **extra
    )
    return getattr(sae_lens, cls_name)(cfg)


def _coefficients(sae: Any, step: int) -> dict[str, float]:
    """sae-lens's coefficient warm-up: linear from 0 over warm_up_steps."""
    out = {}
    for name, c in sae.get_coefficients().items():
        if hasattr(c, "warm_up_steps"):
            out[name] = c.value * min(1.0, (step + 1) / c.warm_up_steps) if c.warm_up_steps else c.value
        else:
            out[name] = float(c)
    return out


def _lr_factor(step: int, steps: int) -> float:
    """Linear warm-up over the first 5% of steps, linear decay to a tenth over the last 20%."""
    warm = max(1, steps // 20)
    decay_from = int(steps * 0.8)
    factor = min(1.0, (step + 1) / warm)
    if step >= decay_from and steps > decay_from:
        factor *= 1.0 - 0.9 * (step - decay_from) / (steps - decay_from)
    return factor


def explained_variance(x: Any, x_hat: Any) -> float:
    """1 - residual variance / total variance, over all tokens and dimensions."""
    resid = (x - x_hat).pow(2).sum()
    total = (x - x.mean(0, keepdim=True)).pow(2).sum().clamp_min(1e-12)
    return float(1 - resid / total)


def _train_loop(ctx: Any, sae: Any, train_acts: Any, s: dict, scale: float, state: dict | None) -> int:
    """Train on cached activations (sampled with replacement, one seeded draw per step, so a resumed run
    continues the same sequence). Live metrics every few steps; a checkpoint every 30 s and on cancel."""
    import torch
    from sae_lens.saes.sae import TrainStepInput

    device = next(sae.parameters()).device
    steps = max(1, -(-s["tokens"] // s["batch_size"]))
    opt = torch.optim.Adam(sae.parameters(), lr=s["lr"], betas=(0.9, 0.999))
    since_fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=device)
    start = 0
    if state is not None:
        sae.load_state_dict(state["sae"])
        opt.load_state_dict(state["opt"])
        since_fired = state["since_fired"].to(device)
        start = int(state["step"])
        ctx.log(f"resuming SAE training at step {start} of {steps}")
    dead_window = max(10, min(1000, steps // 4))
    log_every = max(1, steps // 300)
    last_save = time.monotonic()
    n = train_acts.shape[0]

    def save(step: int) -> None:
        blob = {
            "sae": sae.state_dict(),
            "opt": opt.state_dict(),
            "since_fired": since_fired.cpu(),
            "step": step,
        }
        tmp = ctx.checkpoint_dir / (STATE_FILE + ".tmp")
        torch.save(blob, tmp)
        tmp.replace(ctx.checkpoint_dir / STATE_FILE)
        ctx.save_checkpoint({**(ctx.resume_state or {}), "stage": "train", "step": step, "scale": scale})

    done = start  # steps whose update has been applied
    try:
        for step in range(start, steps):
            gen = torch.Generator().manual_seed(s["seed"] * 1_000_003 + step)
            x = train_acts[torch.randint(n, (s["batch_size"],), generator=gen)].to(device) * scale
            for group in opt.param_groups:
                group["lr"] = s["lr"] * _lr_factor(step, steps)
            sae.train()
            out = sae.training_forward_pass(
                TrainStepInput(
                    sae_in=x,
                    coefficients=_coefficients(sae, step),
                    dead_neuron_mask=since_fired > dead_window,
                    n_training_steps=step,
                    is_logging_step=False,
                )
            )
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            done = step + 1
            with torch.no_grad():
                fired = (out.feature_acts > 0).any(0)
                since_fired += 1
                since_fired[fired] = 0
                if step % log_every == 0 or step == steps - 1:
                    ctx.metric("loss", step, out.loss.item())
                    ctx.metric("mse", step, out.losses["mse_loss"].item())
                    ctx.metric("l0", step, (out.feature_acts > 0).sum(-1).float().mean().item())
                    ctx.metric("explained_variance", step, explained_variance(x, out.sae_out))
                    ctx.metric("dead_fraction", step, (since_fired > dead_window).float().mean().item())
                    ctx.metric("lr", step, opt.param_groups[0]["lr"])
            ctx.progress(0.3 + 0.6 * (step + 1) / steps, f"training step {step + 1} / {steps}")
            if time.monotonic() - last_save > CHECKPOINT_SECONDS:
                save(done)
                last_save = time.monotonic()
    except Cancelled:
        save(done)
        raise
    return steps


def _ce_losses(model: Any, sae: Any, hook: str, seqs: list[list[int]], pad_id: int, device: str) -> dict:
    """Next-token loss of the model as is, with the SAE's reconstruction spliced in at the hook, and with
    the hook zeroed (position 0, which the SAE never saw, is left alone in both)."""
    import torch

    from emgui.core.activations import edit_output, pad_batch

    batch = pad_batch(seqs, pad_id, device)

    def loss() -> float:
        with torch.inference_mode():
            logits = model(**batch, use_cache=False).logits.float()
        mask = batch["attention_mask"][:, 1:].bool()
        ce = torch.nn.functional.cross_entropy(
            logits[:, :-1][mask], batch["input_ids"][:, 1:][mask], reduction="mean"
        )
        return float(ce)

    def splice(h: Any) -> Any:
        out = sae(h.float()).to(h.dtype)
        out[:, 0] = h[:, 0]
        return out

    def zero(h: Any) -> Any:
        out = torch.zeros_like(h)
        out[:, 0] = h[:, 0]
        return out

    clean = loss()
    with edit_output(model, hook, splice):
        spliced = loss()
    with edit_output(model, hook, zero):
        zeroed = loss()
    denom = zeroed - clean
    recovered = (zeroed - spliced) / denom if abs(denom) > 1e-9 else float("nan")
    return {
        "ce_loss_clean": clean,
        "ce_loss_sae": spliced,
        "ce_loss_zero": zeroed,
        "ce_loss_recovered": recovered,
    }


def evaluate_sae(sae: Any, acts: Any, batch: int = 4096) -> dict:
    """Explained variance, mean L0 and the fraction of latents that never fire, over activations [n, d]."""
    import torch

    device = next(sae.parameters()).device
    resid = total = l0 = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=device)
    mean = acts.mean(0).to(device)
    with torch.inference_mode():
        for i in range(0, acts.shape[0], batch):
            x = acts[i : i + batch].to(device).float()
            z = sae.encode(x)
            x_hat = sae.decode(z)
            resid += float((x - x_hat).pow(2).sum())
            total += float((x - mean).pow(2).sum())
            l0 += float((z > 0).sum())
            fired |= (z > 0).any(0)
    n = max(1, acts.shape[0])
    return {
        "explained_variance": 1 - resid / max(total, 1e-12),
        "l0": l0 / n,
        "dead_fraction": float((~fired).float().mean()),
    }


def _save_and_evaluate(
    ctx: Any, sae: Any, folder: Path, s: dict, sae_device: str, acts: Any, ce_seqs: list, model: Any,
    model_row: dict, hook: str, d_in: int, pad_id: int,
) -> dict:  # fmt: skip
    """Save the trained SAE into `folder` and measure exactly what was written."""
    from sae_lens import SAE

    from emgui.core.activations import layers_path, width_at
    from emgui.core.loading import load_model

    sae.save_inference_model(folder)
    saved = SAE.load_from_disk(str(folder), device=sae_device)
    info: dict[str, Any] = evaluate_sae(saved, acts)
    if ce_seqs:
        ctx.progress(0.95, "measuring CE loss recovered")
        if model is None:
            model = load_model(ctx.project, model_row, device=s["device"], dtype=s["dtype"])
        if width_at(model, hook) != d_in:
            raise EmguiError(f"sae-train: the activation width at {hook} changed since caching")
        info.update(_ce_losses(model, saved, hook, ce_seqs, pad_id, str(next(model.parameters()).device)))
    info["layers_path"] = layers_path(model) if model is not None else None
    return info


def train_job(params: dict, ctx: Any) -> dict:
    """`sae-train`: cache activations at a hook of a local model over a corpus, train an SAE on them with
    sae-lens's classes, save it in sae-lens's format and register it with EV, L0 and CE loss recovered."""
    import random

    import torch
    from safetensors.torch import load_file, save_file

    from emgui.core.activations import corpus_items, resolve_module
    from emgui.core.loading import load_model, load_tokenizer

    os.environ.setdefault("WANDB_MODE", "disabled")
    s = _train_settings(params)
    project: Project = ctx.project
    model_row = project.get_model(s["model"])
    resume = ctx.resume_state or {}
    cfg = _model_config(project, model_row) or {}
    n_layers = cfg.get("num_hidden_layers")
    hook = s["hook"] or (f"model.layers.{n_layers // 2}" if n_layers else "model.layers.0")
    parse_hook(hook)
    name = (
        resume.get("name")
        or s["name"]
        or unique_name(project, slug(f"{model_row['name']}-{hook.replace('model.', '')}-{s['architecture']}"))
    )
    if not resume.get("name"):
        _check_name_free(project, name)
    tokenizer = load_tokenizer(project, model_row)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    items = corpus_items(project, datasets=s["datasets"], samples=s["samples"], text_files=s["text_files"])
    random.Random(s["seed"]).shuffle(items)
    seqs = _chunks(tokenizer, items, s["context_size"])
    if len(seqs) < 2:
        raise EmguiError("sae-train: the corpus is too small (fewer than 2 sequences of 2+ tokens)")
    n_ce = min(s["ce_sequences"], len(seqs) // 5)
    ce_seqs, train_seqs = seqs[:n_ce], seqs[n_ce:]

    model = None
    cache_path = ctx.checkpoint_dir / CACHE_FILE
    if resume.get("stage") in ("cached", "train") and cache_path.is_file():
        acts = load_file(str(cache_path))["acts"]
        ctx.log(f"reusing {acts.shape[0]:,} cached activations from {cache_path}")
    else:
        ctx.progress(0.01, f"loading model '{model_row['name']}'")
        model = load_model(project, model_row, device=s["device"], dtype=s["dtype"])
        resolve_module(model, hook)
        device = str(next(model.parameters()).device)
        acts = _cache_activations(ctx, model, hook, train_seqs, s["cache_tokens"], pad_id, device)
        save_file({"acts": acts.contiguous()}, str(cache_path))
        ctx.save_checkpoint({"stage": "cached", "name": name, "hook": hook})
    d_in = acts.shape[1]
    n_eval = int(acts.shape[0] * s["eval_fraction"])
    train_acts, eval_acts = acts[n_eval:], acts[:n_eval]
    scale = float(resume.get("scale") or (d_in**0.5) / train_acts.norm(dim=-1).mean().clamp_min(1e-8))
    ctx.log(
        f"{acts.shape[0]:,} activations of width {d_in} at {hook}; {n_eval:,} held out; norm scale {scale:.4g}"
    )

    from emgui.core.device import pick_device

    sae_device = pick_device(s["device"])
    torch.manual_seed(s["seed"])
    metadata = {
        "model_name": model_row.get("source") or model_row["name"],
        "hook_name": hook,
        "context_size": s["context_size"],
        "prepend_bos": False,
        "dataset_path": ", ".join(map(str, s["datasets"] + s["text_files"])) or None,
    }
    sae = _make_training_sae(s, d_in, metadata).to(sae_device)
    state_path = ctx.checkpoint_dir / STATE_FILE
    state = (
        torch.load(state_path, weights_only=True)
        if resume.get("stage") == "train" and state_path.is_file()
        else None
    )
    if state is None:
        ctx.save_checkpoint({"stage": "cached", "name": name, "hook": hook, "scale": scale})
    steps = _train_loop(ctx, sae, train_acts, s, scale, state)

    ctx.progress(0.9, "folding and saving")
    with torch.no_grad():
        sae.fold_activation_norm_scaling_factor(scale)
        fold_decoder_norms(sae)
    tmp = project.temp_path("saes", directory=True)  # moved to a folder of its own once evaluated
    try:
        info = _save_and_evaluate(ctx, sae, tmp, s, sae_device, eval_acts if n_eval else train_acts, ce_seqs, model,
                                  model_row, hook, d_in, pad_id)  # fmt: skip
    except BaseException:
        remove_path(tmp)
        raise
    info.update(
        {
            "tokens_trained": steps * s["batch_size"],
            "cached_tokens": int(acts.shape[0]),
            "steps": steps,
            "norm_scaling_factor": scale,
            "corpus": {k: s[k] for k in ("datasets", "samples", "text_files")},
            "settings": {
                k: s[k] for k in ("architecture", "k", "l1_coefficient", "l0_coefficient", "lr", "batch_size")
            },
        }
    )
    sae_id = _place_and_register(
        project,
        tmp,
        name=name,
        source="trained",
        model_id=model_row["id"],
        job_id=ctx.job_id,
        hook_name=hook,
        info=info,
    )
    for key in ("explained_variance", "l0", "ce_loss_recovered", "dead_fraction"):
        if key in info:
            ctx.log(f"{key}: {info[key]:.4f}")
    if info.get("explained_variance", 1.0) < 0.5 or info.get("dead_fraction", 0.0) > 0.5:
        # Still saved (it is a real result), but a researcher should not read latents off it unawares.
        ctx.log(
            "WARNING: this SAE reconstructs poorly (explained variance below 0.5 or over half its latents dead): "
            "train on more tokens (`tokens`), for longer, or with a smaller `k` / `expansion` before diffing with it"
        )
    cache_path.unlink(missing_ok=True)  # large; the SAE is saved
    ctx.progress(1.0, "trained")
    return {"sae_id": sae_id, "name": name, **{k: info[k] for k in ("explained_variance", "l0") if k in info}}


__all__ = [
    "ARCHITECTURES",
    "check_fits_config",
    "check_fits_model",
    "get_sae",
    "import_folder",
    "list_releases",
    "list_saes",
    "load_sae",
    "read_sae_folder",
    "register_sae",
    "release_saes",
    "save_and_register",
]
