"""The W4A16 kernel's inline-PTX unpack (``unpack=2``) cannot run in Triton's interpreter: compile it for sm_90 with
Triton's bundled ptxas (no GPU needed) through ``tools/w4a16_sass_compare.py``, fp16 and bf16, so a PTX or
lowering error fails here, and check the K loop holds the tensor-core MMA and the LOP3 unpack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

ROOT = Path(__file__).resolve().parents[3]
TOOL = ROOT / "packages/dlinfer-maca/tools/w4a16_sass_compare.py"
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"

pytestmark = pytest.mark.skipif(not PTXAS.exists(), reason="Triton's bundled ptxas is missing")


def _profile_rows(args: list[str], prefix: str, tmp_path: Path) -> list[dict[str, str]]:
    """Run the SASS tool (sm_90 build, no GPU) and return its table rows whose kernel name starts with prefix."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    src = [str(ROOT / "packages" / pkg / "src") for pkg in ("dlinfer-maca", "dlinfer-core")]
    env["PYTHONPATH"] = os.pathsep.join([*src, env.get("PYTHONPATH", "")])
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    proc = subprocess.run([sys.executable, str(TOOL), *args, "--no-peer", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    header, rows = None, []
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "kernel":
            header = cells
        elif line.startswith(f"| {prefix}"):
            rows.append(dict(zip(header or [], cells, strict=False)))
    assert rows, proc.stdout
    return rows


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_lop3_unpack_compiles_for_sm90(dtype: str, tmp_path: Path) -> None:
    rows = _profile_rows(["--unpack", "2", "--even-k", "--dtype", dtype], "maca_m", tmp_path)
    assert len(rows) == 3, rows
    for row in rows:
        assert "unpack2" in row["kernel"] and "evenk" in row["kernel"]
        assert int(row["HMMA"]) + int(row["HGMMA"]) > 0, row
        assert int(row["LOP3"]) > 0, row


def test_gemv_kernel_compiles_for_sm90_without_spills(tmp_path: Path) -> None:
    """The CUDA-core kernel (``GemmConfig.gemv``, inline-PTX ``LOP3``): compiles for sm_90, holds no MMA and no
    spill stack, and its loop has the fp32 FMAs and the one-instruction unpack."""
    rows = _profile_rows(["--gemv"], "maca_gemv", tmp_path)
    assert len(rows) >= 3, rows
    for row in rows:
        assert int(row["HMMA"]) + int(row["HGMMA"]) == 0 and int(row["stack"]) == 0, row
        # one LOP3 and one FADD per weight: as many of each as the FMAs with x (the rest of the FFMAs scale groups)
        assert int(row["FFMA"]) > 0 and int(row["LOP3"]) >= int(row["FADD"]) > 0, row


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_table_programs_per_sm_matches_the_sm90_split_build(dtype: str, tmp_path: Path) -> None:
    """A W4A16 table row that states ``programs_per_sm`` (the slots its automatic split count fills) states what
    its split-K build holds on sm_90: the tool derives it from the build's registers and shared memory."""
    from dlinfer_maca.kernels import configs

    rows = _profile_rows(["--split", "--dtype", dtype], "maca_m", tmp_path)
    by_m = {int(r["kernel"].split("_")[1][1:]): r for r in rows}
    stated = {m: configs.pick_config(configs.W4A16_TABLE, m).programs_per_sm for m in by_m}
    assert any(stated.values()), stated
    for m, per_sm in stated.items():
        assert "_split_" in by_m[m]["kernel"], by_m[m]
        if per_sm:
            assert int(by_m[m]["per_sm"]) == per_sm, (m, by_m[m])


def test_sm90_occupancy_rule() -> None:
    """``programs_per_sm_sm90`` against hand counts from the sm_90 limits (64 K registers in 256-register warp
    units, 228 KB shared memory with 1 KB reserved per block, 64 warps, 32 blocks per SM)."""
    interpret = os.environ.get("TRITON_INTERPRET")  # the tool unsets it on import (it builds for sm_90)
    sys.path.insert(0, str(TOOL.parent))
    try:
        from w4a16_sass_compare import programs_per_sm_sm90
    finally:
        sys.path.remove(str(TOOL.parent))
        if interpret is not None:
            os.environ["TRITON_INTERPRET"] = interpret
    assert programs_per_sm_sm90(255, 73856, 4) == 2  # 8192 registers a warp: 8 warps
    assert programs_per_sm_sm90(128, 29056, 4) == 4  # registers allow 4, shared memory 7
    assert programs_per_sm_sm90(96, 29056, 4) == 5  # 3072 a warp: 21 warps -> 5 blocks
    assert programs_per_sm_sm90(32, 100_000, 4) == 2  # shared memory: 233472 // 101024
    assert programs_per_sm_sm90(16, 0, 1) == 32  # the block limit
