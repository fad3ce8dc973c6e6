"""maca's declared prefill warm-up sizes reach every row-count variant of its kernels, and declaring stays cheap.

The expected sizes are found by walking M and watching where the launch choices change (``pick_config`` over both
GEMM tables, the quantising norms' warp count), not from a list: a table row or the norm switch that moves without
the declaration following fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from dlinfer_maca.kernels import configs, moe, norm, quant
from dlinfer_maca.plugin import dlinfer_backend


def _walk_limit() -> int:
    finite = [b for table in (configs.W8A8_TABLE, configs.W4A16_TABLE) for b, _ in table if b < configs.OPEN_BOUND]
    return 2 * max(*finite, configs.W4A16_DEQUANT_MIN_M, configs.QUANT_NORM_MANY_ROWS)


def _switches(choice, limit: int) -> set[int]:  # type: ignore[no-untyped-def]
    """1, and both sides of every M where ``choice(M)`` differs from ``choice(M - 1)``."""
    out = {1}
    for m in range(2, limit):
        if choice(m) != choice(m - 1):
            out |= {m - 1, m}
    return out


def test_declared_sizes_are_the_bucket_ends_of_the_tables() -> None:
    limit = _walk_limit()
    declared = dlinfer_backend().framework.prefill_warmup_tokens
    expected = set()
    expected |= _switches(lambda m: quant.pick_config(quant.W8A8_TABLE, m), limit)
    expected |= _switches(configs.w4a16_config, limit)  # the fused kernel's buckets, then dequantise + GEMM
    # the norm switch: only its first row count is needed (both sides fall in the open GEMM bucket, reached at its
    # first M); H 4096 is the largest row the switch applies to
    warps = _switches(lambda m: norm._warps(4096, True, m), limit)
    expected |= {m for m in warps if norm._warps(4096, True, m) != norm._warps(4096, True, 1)}
    assert set(declared) == expected, f"declared {declared}, the tables and the norm switch give {sorted(expected)}"
    assert list(declared) == sorted(set(declared)), declared
    # every M up to the walk limit shares its GEMM configs and norm warps with some declared size
    reached = {(quant.pick_config(quant.W8A8_TABLE, m), configs.w4a16_config(m),
                norm._warps(4096, True, m)) for m in declared}
    missing = [m for m in range(1, limit) if (quant.pick_config(quant.W8A8_TABLE, m),
                                              configs.w4a16_config(m),
                                              norm._warps(4096, True, m)) not in reached]
    assert not missing, f"row counts whose launch choices no declared size reaches: {missing[:8]}"


def _unspecialised(kernel) -> set[str]:  # type: ignore[no-untyped-def]
    """Names in a kernel's ``do_not_specialize`` (compiled JITFunction or the interpreter's wrapper)."""
    names = getattr(kernel, "do_not_specialize", None)
    if names is None:
        names = getattr(kernel, "kwargs", {}).get("do_not_specialize")
    return set(names or ())


@pytest.mark.parametrize(
    ("kernel", "per_step"),
    [
        (quant._w8a8_kernel, {"M", "n_split"}),
        (quant._w4a16_kernel, {"M", "n_split"}),
        (quant._w4a16_join_kernel, {"M", "n_split"}),
        (moe._moe_align_kernel, {"N", "max_padded", "max_tiles"}),
        (moe._moe_scatter_kernel, {"N"}),
        (moe._moe_gemm_kernel, {"N_rows"}),
    ],
    ids=["w8a8", "w4a16", "w4a16_join", "moe_align", "moe_scatter", "moe_gemm"],
)
def test_per_step_counts_are_not_specialised(kernel, per_step: set[str]) -> None:  # type: ignore[no-untyped-def]
    """One size per bucket end covers the bucket only if Triton does not recompile for M = 1 / multiple of 16."""
    missing = per_step - _unspecialised(kernel)
    assert not missing, f"{per_step} change every step; {sorted(missing)} still specialised"


def test_declaring_imports_no_triton() -> None:
    code = (
        "import sys\n"
        "from dlinfer_maca.plugin import dlinfer_backend\n"
        "b = dlinfer_backend()\n"
        "assert b.framework.prefill_warmup_tokens, b.framework\n"
        "loaded = sorted(m for m in sys.modules if m == 'triton' or m.startswith('triton.'))\n"
        "assert not loaded, loaded[:5]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_readme_lists_the_declared_sizes():
    """The README's capability row states the sizes the plugin declares (docs that follow the tables)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `framework.prefill_warmup_tokens`"))
    listed = re.match(r"\| `framework\.prefill_warmup_tokens` \| ([\d, ]+):", row)
    assert listed, row[:200]
    assert tuple(int(v) for v in listed.group(1).split(",")) == configs.prefill_warmup_tokens()
