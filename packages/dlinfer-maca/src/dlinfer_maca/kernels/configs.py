"""Kernel launch choices that depend on the row count M, without Triton: the quantised GEMMs pick their
configuration here per call (``quant.py``), the quantising norms their warp count (``norm.py``), and the plugin
declares from the same bounds the prefill sizes a framework's warm-up runs (``plugin.py``), so that every
launch variant compiles before serving instead of inside the first long request.
"""

from __future__ import annotations

from typing import NamedTuple


class GemmConfig(NamedTuple):
    """One launch configuration. ``split_k`` 0 = choose from the SM count, -1 = the same in whole waves; ``reduce``:
    0 = fp32 partial
    buffer summed by torch, 1 = in-kernel (last program of a tile sums the partials); ``unpack`` (W4A16):
    0 = int subtract + convert, 1 = fp16/bf16 exponent magic numbers, 2 = the magic numbers two nibbles per ``LOP3``
    (inline PTX, joined kernel only; on a non-NVIDIA device a launch runs 1, see ``quant.w4_unpack``; the
    interpreter runs the same bits with integer ops); ``join`` (W4A16):
    0 = one narrow ``tl.dot`` per nibble plane (8 accumulators), 1 = planes joined into one operand, one ``tl.dot``,
    2 = joined with the group scales folded into the weights before the MMA (one rounding per dequantised weight);
    ``even_k`` (joined W4A16 kernel): advance the x and weight pointers per K step and load without the per-element
    K mask. IN is a multiple of the group, which the K step divides, so the masked loads are only a safeguard.
    ``gemv`` (W4A16): the CUDA-core kernel, one program per (column tile, K split, row), fp32 FMAs, no MMA
    (``block_n``, ``block_k``, ``num_warps``, ``split_k`` and ``reduce`` apply, and ``num_stages`` 2-4: the weight
    tiles a thread holds, the one in use and the rest loaded ahead; the one-row config against a wide weight,
    ``W4A16_DECODE_GEMV``). ``fold`` (gemv): each K step's ``block_k`` rows are summed ``fold`` to one into
    ``block_k / fold`` accumulator rows (inside each thread where a pass of the program's threads covers those rows),
    so that a step loads ``fold`` times the bytes without more accumulators. ``pipelined`` (gemv): the K loop is
    Triton's software pipeline (``tl.range(num_stages=num_stages)``, asynchronous copies through shared memory, 2-8
    stages) instead of ``num_stages - 1`` weight tiles held ahead in registers. ``column_threads`` (gemv): one packed
    word column per thread, so that a thread's K rows sum in its registers (8 accumulators, about a third of the
    registers); the K loop is Triton's pipeline over ``num_stages`` (1-8, 1: none). ``programs_per_sm``: how many
    programs of this config fit one SM at once (its build's registers and shared memory), which the automatic split
    count (``split_k`` 0 / -1) fills; 0 = 16 warps' worth (``16 // num_warps``)."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    split_k: int = 0
    reduce: int = 1
    unpack: int = 0
    group_m: int = 8
    join: int = 0
    even_k: bool = False
    gemv: bool = False
    fold: int = 1
    pipelined: bool = False
    column_threads: bool = False
    programs_per_sm: int = 0


GemmTable = tuple[tuple[int, GemmConfig], ...]
"""Rows ``(M upper bound, inclusive -> config)``, bounds ascending, the last one :data:`OPEN_BOUND`."""
OPEN_BOUND = 1 << 62
"""The bound of a table's last (open-ended) bucket."""

# Defaults by M (upper bound inclusive -> config): the rows tools/tune_quant_gpu.py suggested on the H200
# (benchmarks/h200/tune-quant-run1.json; each row the smallest geo-mean slowdown against every cell's best).
# GemmConfig(block_m, block_n, block_k, num_warps, num_stages, split_k, reduce, unpack, group_m, join)
# W4A16: H200 sweeps benchmarks/h200/2026-12-02d/tune-quant-w4-sweep-9ee5d41.json (M 2-64) and
# benchmarks/h200/2026-12-03/tune-quant-w4-gemv-sweep.json (M 1: the CUDA-core kernel; M 65-128: the open row)
W4A16_TABLE: GemmTable = (
    (16, GemmConfig(16, 128, 64, 4, 3, 0, 1, 2, 8, 1, even_k=True)),  # 1.02x of the cell best (shipped before: 1.08x)
    # 1.00x (before: 1.10x). Its split build holds 2 programs per SM on sm_90 (254 registers x 128 threads), so the
    # split count fills 2 per SM in whole waves: at M 64, 4096x14336 that is 2 splits, 41.0 us against 47.5 with
    # the 4-per-SM count's 4 (cold L2, H200, 2026-12-03 fourth session)
    (64, GemmConfig(64, 128, 128, 4, 2, -1, 1, 2, 8, 1, even_k=True, programs_per_sm=2)),
    # the open row (M 65-128, and the forced fused path from W4A16_DEQUANT_MIN_M on): x1.04 of the cell best at M
    # 65 and 128 (the row before: x1.82); 61-80 us against dequantise + cuBLAS's 85-91 us on the 4096x14336 and
    # 14336x4096 weights, 40-41 against 36-39 us on 4096x6144. Its split build holds 2 programs per SM on sm_90
    # (255 registers x 128 threads), so the split count fills 2 per SM in whole waves: with 4 (16 warps' worth) M 65
    # split 3 ways at 4096x14336 (336 programs on 264 slots: a second wave 27 % full) and took 74.6 us against M
    # 128's 59.7 with 2 splits (H200, 2026-12-03 fourth session). tests/test_w4a16_sm90_compile.py checks both
    # rows' programs_per_sm against their sm_90 builds.
    (OPEN_BOUND, GemmConfig(128, 128, 64, 4, 3, -1, 1, 2, 8, 2, even_k=True, programs_per_sm=2)),
)
W4A16_DECODE_GEMV = GemmConfig(1, 128, 32, 4, 2, -1, 1, 0, 8, 0, gemv=True)
"""One row against a wide weight: the CUDA-core kernel. H200, M 1 (two sweeps): 24.0-24.1 us against the M<=16 row's
30.9-31.0 at K x N 4096x14336; 29.0-29.1 against 29.6-33.8 at 14336x4096; 17.9-18.0 against 15.5-15.6 at
4096x6144, hence :data:`W4A16_GEMV_MIN_N`. From 2 rows on it reads the weights once per row and loses."""
W4A16_GEMV_MIN_N = 8192
"""OUT from which a one-row W4A16 call runs :data:`W4A16_DECODE_GEMV` (narrower: the M<=16 row)."""
W8A8_TABLE: GemmTable = (  # H200 sweep (tune-quant-run1.json)
    (16, GemmConfig(16, 64, 128, 4, 3, 0, 1, 0, 8, 0)),
    (64, GemmConfig(64, 64, 128, 4, 4, 0, 1)),
    (256, GemmConfig(128, 128, 128, 8, 3, 0, 1)),  # 1.16x / 1.57x LMDeploy at M256 (the suggested 64x128 row: 0.93x)
    (OPEN_BOUND, GemmConfig(256, 128, 128, 8, 3, 1, 1, 0, 8, 0)),
)
W4A16_DEQUANT_MIN_M = 129
"""From this many rows on, W4A16 dequantises the weight into a transient ``[IN, OUT]`` buffer in the activation
dtype and multiplies with the vendor GEMM (``torch.mm``) instead of the fused kernel. The dequantise costs about the
same at any M (25-58 us for the 8B shapes on the H200) while the fused kernel's 128-row tiles leave SMs idle or
split K: at M 129-255 the best fused config took 98-124 / 100-124 / 59-60 us against dequantise + cuBLAS's 88-102 /
95-108 / 40-45 us (K x N 4096x14336 / 14336x4096 / 4096x6144; 2026-12-03 sweep), and at M 256-1024 cuBLAS on the
dequantised weight took 25-50 % of the fused kernel's time (tune-quant-run1.json). The dequantised weight is rounded
once to the activation dtype, as LMDeploy's kernel does; the op contract permits it (``OpSpec.rounded_weight``)."""
QUANT_NORM_MANY_ROWS = 1024
"""From this many rows on, the quantising norm kernels run 4 warps per row of <= 4096 elements (``norm._warps``;
H200 sweep, tools/tune_norm_decode_gpu.py)."""


def pick_config(table: GemmTable, M: int) -> GemmConfig:
    """The first row of ``table`` whose M bound covers ``M``."""
    return next(c for bound, c in table if bound >= M)


def w4a16_config(M: int, N: int = 0) -> GemmConfig | None:
    """The fused W4A16 kernel's config for ``M`` rows and ``N`` output columns, or None from
    :data:`W4A16_DEQUANT_MIN_M` on (dequantise + GEMM)."""
    if M >= W4A16_DEQUANT_MIN_M:
        return None
    if M == 1 and N >= W4A16_GEMV_MIN_N:
        return W4A16_DECODE_GEMV
    return pick_config(W4A16_TABLE, M)


def bucket_ends(table: GemmTable) -> tuple[int, ...]:
    """Row counts that reach every launch variant of ``table``: the first and the last M of each bucket (the
    automatic split-K count only falls as M grows inside a bucket, so its two ends hold both the split and the
    unsplit variant), and the first M of the open last bucket."""
    sizes: set[int] = set()
    low = 1
    for bound, _ in table:
        sizes.add(low)
        if bound < OPEN_BOUND:
            sizes.add(bound)
        low = bound + 1
    return tuple(sorted(sizes))


def prefill_warmup_tokens() -> tuple[int, ...]:
    """Token counts of the single-sequence prefills that compile every M-dependent kernel variant of this
    backend (``FrameworkSettings.prefill_warmup_tokens``): both GEMM tables' bucket ends (W4A16's below its
    dequantise switch, and both sides of that switch) and the norm row switch. The kernels do not specialise on M
    itself (``do_not_specialize``), so these cover every M."""
    w4 = {m for m in bucket_ends(W4A16_TABLE) if m < W4A16_DEQUANT_MIN_M} | {W4A16_DEQUANT_MIN_M - 1,
                                                                            W4A16_DEQUANT_MIN_M}
    return tuple(sorted({*bucket_ends(W8A8_TABLE), *w4, QUANT_NORM_MANY_ROWS}))
