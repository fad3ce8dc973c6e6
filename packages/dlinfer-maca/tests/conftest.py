"""Test setup: kernels run on CUDA when present, else under Triton's CPU interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import triton  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"


@pytest.fixture
def device() -> str:
    return DEVICE


ROOT = Path(__file__).resolve().parents[3]
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
needs_ptxas = pytest.mark.skipif(not PTXAS.exists(), reason="Triton's bundled ptxas is missing")
"""For tests that build kernels for sm_90 on the CPU host (Triton's bundled ptxas, no GPU)."""


def run_as_for_gpu(argv: list[str], cache_dir: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """``python argv...`` with ``TRITON_INTERPRET`` unset (kernels defined as for a GPU), dlinfer-maca and
    dlinfer-core from this checkout, and its own Triton cache."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / "packages" / p / "src") for p in ("dlinfer-maca", "dlinfer-core"))
    env["TRITON_CACHE_DIR"] = str(cache_dir)
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)
