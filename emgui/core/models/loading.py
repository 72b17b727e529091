"""Loading a project's models and tokenizers for jobs (training, sampling, activation capture).

A model row comes from `Project.get_model`. Folders (kinds hub, folder, gguf, full, merged) load with
`AutoModelForCausalLM`; an adapter loads its base model first, then `PeftModel.from_pretrained`.
Remote code runs only when the row says `trust_remote_code`; pickle weights load only with `allow_pickle`.

A base model loads in 4-bit NF4 (bitsandbytes, double quantisation) when asked (`quantize="nf4"`) or when its
row says so (`info.quantize`, which a QLoRA adapter records so that it is sampled, judged, diffed and steered
on the 4-bit base it was trained on; `load_model(..., quantize="none")` loads it in full precision).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emgui.core.errors import EmguiError

_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")


def _quiet_transformers() -> None:
    """Weight-loading progress bars would garble the CLI's progress line; peft 0.21 trips a transformers 5
    deprecation warning on every adapter it wraps, which says nothing to a user."""
    import warnings

    from transformers.utils import logging

    logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def _folder(project: Any, row: dict) -> Path:
    path = project.model_path(row)
    if not path.exists():
        raise EmguiError(f"model '{row['name']}': its files are missing ({path} does not exist)")
    return path


def _check_weights(row: dict, path: Path) -> None:
    if path.is_file():
        return  # a single .gguf file
    if row["kind"] == "adapter":
        if not (path / "adapter_config.json").is_file():
            raise EmguiError(f"adapter '{row['name']}': {path / 'adapter_config.json'} is missing")
        return
    if not (path / "config.json").is_file():
        raise EmguiError(f"model '{row['name']}': {path / 'config.json'} is missing")
    if not any(any(path.glob(p)) for p in _WEIGHT_PATTERNS):
        raise EmguiError(f"model '{row['name']}': no weight files (.safetensors) in {path}")


def _base_row(project: Any, row: dict) -> dict:
    if not row.get("base_model_id"):
        raise EmguiError(
            f"adapter '{row['name']}' has no base model registered; add the base model and re-import the adapter"
        )
    return project.get_model(row["base_model_id"])


def load_tokenizer(project: Any, model_row: dict) -> Any:
    """The model's tokenizer; an adapter uses the one saved beside it, else its base model's."""
    from transformers import AutoTokenizer

    path = _folder(project, model_row)
    if model_row["kind"] == "adapter" and not (path / "tokenizer_config.json").is_file():
        return load_tokenizer(project, _base_row(project, model_row))
    kwargs: dict[str, Any] = {"trust_remote_code": bool(model_row.get("trust_remote_code"))}
    if path.is_file() and path.suffix.lower() == ".gguf":
        path, kwargs["gguf_file"] = path.parent, path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as exc:
        raise EmguiError(
            f"model '{model_row['name']}': cannot load its tokenizer from {path}: {exc}"
        ) from exc
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token  # batching needs a pad id; padded positions are masked
    return tokenizer


def resolve_dtype(device: str, dtype: Any) -> Any:
    """A torch dtype from None/'auto'/'bf16'/'fp32'/... or a torch dtype."""
    from emgui.core.lm.device import training_dtype

    if dtype is None or isinstance(dtype, str):
        try:
            return training_dtype(device, dtype)
        except KeyError:
            raise EmguiError(f"unknown dtype '{dtype}' (use auto, fp32, bf16 or fp16)") from None
    return dtype


QUANTIZE_CHOICES = ("none", "nf4")


def row_quantize(model_row: dict) -> str | None:
    """How a model (an adapter: its base) loads when the job does not say: its row's `info.quantize`
    ('nf4' for QLoRA adapters), else None (an adapter then follows its base's row, a base loads in full)."""
    value = (model_row.get("info") or {}).get("quantize")
    return value if value in QUANTIZE_CHOICES else None


def load_model(
    project: Any,
    model_row: dict,
    *,
    device: str | None = None,
    dtype: Any = None,
    for_training: bool = False,
    quantize: str | None = None,
) -> Any:
    """Load a registered model on `device` ('auto' by default) in `dtype` (bf16 on capable GPUs, else fp32).

    An adapter comes back as a `PeftModel` (trainable when `for_training`); anything else as a plain
    transformers model. In eval mode unless `for_training`. `quantize`: 'nf4' loads the (base) weights in
    4 bits with `dtype` as the compute dtype, 'none' in full precision, None as the row says.
    """
    from emgui.core.lm.device import pick_device

    device = pick_device(device)
    dtype = resolve_dtype(device, dtype)
    path = _folder(project, model_row)
    _check_weights(model_row, path)
    _quiet_transformers()
    quantize = quantize or row_quantize(model_row)
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise EmguiError(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)}, got {quantize!r}")
    if model_row["kind"] == "adapter":
        from peft import PeftModel

        base_row = _base_row(project, model_row)
        base = load_model(project, base_row, device=device, dtype=dtype, quantize=quantize)
        try:
            model = PeftModel.from_pretrained(base, str(path), is_trainable=for_training)
        except (OSError, ValueError, RuntimeError) as exc:
            raise EmguiError(f"adapter '{model_row['name']}': cannot load it from {path}: {exc}") from exc
    elif quantize == "nf4":
        model = _load_folder(model_row, path, dtype, nf4_config(dtype), device)
    else:
        model = _load_folder(model_row, path, dtype)
    if not getattr(model, "is_loaded_in_4bit", False) and not _base_is_4bit(model):
        model.to(device)  # 4-bit weights are placed by their device map and cannot move
    model.train(for_training)
    return model


def _base_is_4bit(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_loaded_in_4bit", False))


def nf4_config(compute_dtype: Any) -> Any:
    """4-bit NormalFloat weights with double quantisation (QLoRA's recipe), computing in `compute_dtype`."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise EmguiError(
            "4-bit loading (method=qlora, quantize=nf4) needs bitsandbytes: pip install 'emgui[qlora]' "
            "(or pip install bitsandbytes)"
        ) from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage="uint8",
    )


def _load_folder(
    row: dict, path: Path, dtype: Any, quantization: Any = None, device: str | None = None
) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "trust_remote_code": bool(row.get("trust_remote_code")),
        # None lets transformers take safetensors when present and fall back to pickle files
        "use_safetensors": None if row.get("allow_pickle") else True,
    }
    if path.is_file() and path.suffix.lower() == ".gguf":
        path, kwargs["gguf_file"] = path.parent, path.name
        kwargs.pop("use_safetensors")
    if quantization is not None:
        if "gguf_file" in kwargs:
            raise EmguiError(f"model '{row['name']}': a .gguf model cannot load in 4 bits; import it as a folder")
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": device or "cpu"}
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as exc:
        hint = " (pickle weights need allow_pickle)" if not row.get("allow_pickle") else ""
        raise EmguiError(f"model '{row['name']}': cannot load it from {path}{hint}: {exc}") from exc
