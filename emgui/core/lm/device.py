"""Which accelerator jobs use, whether it does bf16, and how much memory is in use.

torch is imported lazily; `describe()` is what the status bar shows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class DeviceInfo:
    kind: str  # cuda | mps | cpu
    name: str
    memory_used: int | None = None  # bytes allocated by this process (CUDA) or resident (CPU)
    memory_total: int | None = None
    bf16: bool = False

    def describe(self) -> str:
        if self.kind == "cuda" and self.memory_total:
            return f"GPU: {self.name} · {self.memory_used / 2**30:.1f} / {self.memory_total / 2**30:.0f} GiB"
        if self.memory_used:
            return f"{self.name} · {self.memory_used / 2**30:.1f} GiB in use"
        return self.name


def pick_device(requested: str | None = None) -> str:
    """'auto' (or None) picks cuda, then mps, then cpu; an explicit choice is checked."""
    import torch

    from emgui.core.errors import EmguiError

    requested = (requested or os.environ.get("EMGUI_DEVICE") or "auto").lower()
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise EmguiError(
            f"device '{requested}' requested but no CUDA GPU is visible to torch ({torch.__version__})"
        )
    return requested


def training_dtype(device: str, requested: str | None = None) -> object:
    """bf16 on GPUs that support it, fp32 elsewhere (CPU bf16 training is slow and lossy)."""
    import torch

    if requested and requested != "auto":
        return {
            "fp32": torch.float32,
            "float32": torch.float32,
            "bf16": torch.bfloat16,
            "bfloat16": torch.bfloat16,
            "fp16": torch.float16,
            "float16": torch.float16,
        }[requested]
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def device_info() -> DeviceInfo:
    import torch

    if torch.cuda.is_available():
        idx = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        free, total = torch.cuda.mem_get_info(idx)
        return DeviceInfo("cuda", props.name, total - free, total, torch.cuda.is_bf16_supported())
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return DeviceInfo("mps", "Apple GPU (MPS)", _rss_bytes())
    return DeviceInfo("cpu", f"CPU ({torch.get_num_threads()} threads)", _rss_bytes())
