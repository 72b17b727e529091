"""bench/gpu_check.py's tiny mode on the CPU: every check of the GPU run runs and lands in the table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_runs_every_check_on_the_cpu() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    env.pop("EMGUI_FREE_MEMORY", None)
    out = subprocess.run([sys.executable, "bench/gpu_check.py", "--smoke"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = out.stdout.split("emgui GPU check on cpu", 1)[1]
    for check in ("lora train tokens/s", "lora memory est. / peak", "sampling tokens/s",
                  "steered / plain generation", "too big: refused at submit", "wall time"):  # fmt: skip
        assert check in table, table
    assert "qlora train tokens/s" in table or "bitsandbytes is not installed" in table
    refused = next(line for line in table.splitlines() if "refused at submit" in line)
    assert " yes " in refused and "suggests" in refused
    assert "FAILED" not in table
