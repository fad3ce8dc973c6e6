"""Quantised GEMM kernels (W4A16 AWQ, W8A8) against fp64 oracles, over every kernel variant and path.

Each launch configuration the config tables or the sweep (tools/tune_quant_gpu.py) may pick is covered:
the per-plane and the joined W4A16 kernels, exact and scale-folded, both int4 unpack methods, with and
without split-K, with the in-kernel (last-arrival) and the torch reduction of the partials; M in {1, 5, 16,
33}, OUT not a multiple of the 128-column layout chunk, IN spanning several groups. Runs on CUDA when present,
else under TRITON_INTERPRET=1 (conftest). Fresh random inputs per test; outputs are fresh buffers.
"""

from __future__ import annotations

import pytest
import torch
from _ref import assert_close
from conftest import DEVICE, ON_GPU

from dlinfer.spec import AWQ_ORDER
from dlinfer.testing.inputs import awq_pack
from dlinfer_maca.kernels import _utils, configs, quant
from dlinfer_maca.kernels.quant import GemmConfig

pytestmark = pytest.mark.interpreter

# interpreter: small tiles; GPU: the table's tile shapes
BASE = quant._INTERP if not ON_GPU else GemmConfig(16, 128, 64, 4, 3, 0, 1, 1, 8, 1)


def _w4_case(M: int, K: int, N: int, g: int, dtype: torch.dtype, bias: bool = False):
    q = torch.randint(0, 16, (K, N))
    z = torch.randint(0, 16, (K // g, N))
    s = (torch.rand(K // g, N) * 0.02 + 0.005).to(dtype)
    x = torch.randn(M, K).to(dtype)
    b = torch.randn(N).to(dtype) if bias else None
    W = (q - z.repeat_interleave(g, 0)).double() * s.double().repeat_interleave(g, 0)  # independent dequant
    ref = x.double() @ W + (b.double() if b is not None else 0)
    prepared = quant.awq_prepare(awq_pack(q).to(DEVICE), s.to(DEVICE), awq_pack(z).to(DEVICE), g)
    dev = (x.to(DEVICE), b.to(DEVICE) if b is not None else None)
    return prepared, dev, ref


def _run_w4(M, K, N, g, dtype, cfg, bias=False, split_k=None):
    (qw, sc, qz), (x, b), ref = _w4_case(M, K, N, g, dtype, bias)
    out = quant.w4a16_fwd(x, qw, sc, qz, b, g, split_k=split_k, config=cfg)
    assert out.shape == (M, N) and out.dtype == dtype
    return out, ref


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("unpack", [0, 1, 2], ids=["int", "magic", "lop3-pairs"])
@pytest.mark.parametrize("join", [0, 1, 2], ids=["planes", "joined", "joined-folded"])
@pytest.mark.parametrize("even_k", [False, True], ids=["k-masked", "even-k"])
def test_w4a16_kernel_variants(join, unpack, dtype, even_k):
    """Every kernel body (8 per-plane dots / joined operand, exact / folded scales, every unpack), split-K with
    the in-kernel reduction, bias, OUT = 264 (two full chunks and a partial one), IN over 6 groups. unpack 2 is
    inline PTX on a GPU; the interpreter runs the same bits with integer ops (fp16; bf16 falls back to unpack 0)."""
    if unpack == 2 and join == 0:
        with pytest.raises(ValueError, match="unpack=2"):
            _run_w4(5, 192, 264, 32, dtype, BASE._replace(join=0, unpack=2))
        return
    if even_k and join == 0:
        pytest.skip("even_k is a joined-kernel option")
    cfg = BASE._replace(join=join, unpack=unpack, split_k=3, reduce=1, block_n=256 if join else 128, even_k=even_k)
    out, ref = _run_w4(5, 192, 264, 32, dtype, cfg, bias=True)
    assert_close(out, ref, dtype, factor=2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("unpack", [1, 2], ids=["magic", "lop3-pairs"])
def test_w4a16_folded_weight_is_rounded_once(unpack, dtype):
    """``join=2`` folds the scale into each weight before the MMA: one rounding of the exact (q - z) * s to the
    dtype. One-hot rows of x pick single K rows, so each output is one dequantised weight, exact in the fp32
    accumulator: equal bit for bit to the fp64 product rounded once. Scales from 1e-5 (fp16 subnormals) up."""
    K, N, g = 192, 264, 32
    picks = [0, 31, 64, 100, 150, 191]
    q = torch.randint(0, 16, (K, N))
    z = torch.randint(0, 16, (K // g, N))
    s = torch.where(torch.rand(K // g, N) < 0.3, torch.rand(K // g, N) * 1e-4 + 1e-5,
                    torch.rand(K // g, N) * 0.02 + 0.005).to(dtype)
    W = ((q - z.repeat_interleave(g, 0)).double() * s.double().repeat_interleave(g, 0)).to(dtype)
    x = torch.zeros(len(picks), K, dtype=dtype)
    x[torch.arange(len(picks)), picks] = 1
    qw, sc, qz = quant.awq_prepare(awq_pack(q).to(DEVICE), s.to(DEVICE), awq_pack(z).to(DEVICE), g)
    cfg = BASE._replace(join=2, unpack=unpack, split_k=3, reduce=1, block_n=256)
    out = quant.w4a16_fwd(x.to(DEVICE), qw, sc, qz, None, g, config=cfg).cpu()
    assert torch.equal(out, W[picks])


@pytest.mark.parametrize("even_k", [False, True], ids=["k-masked", "even-k"])
@pytest.mark.parametrize("M", [1, 5, 16, 33])
@pytest.mark.parametrize("path", ["no-split", "auto", "whole-waves", "split-torch-sum", "split-in-kernel"])
def test_w4a16_sizes_and_split_paths(M, path, even_k):
    """Row counts, OUT tails and every split path; ``even_k``: pointers advanced per K step, no K mask."""
    dtype = torch.float16
    split, reduce = {"no-split": (1, 1), "auto": (0, 1), "whole-waves": (-1, 1), "split-torch-sum": (3, 0),
                     "split-in-kernel": (4, 1)}[path]
    N = 136 if M % 2 else 72  # 128 + 8 and 72: OUT tails of the 128-column chunk
    cfg = BASE._replace(split_k=split, reduce=reduce, block_m=16 if M <= 16 else 32, even_k=even_k)
    out, ref = _run_w4(M, 256, N, 64, dtype, cfg)
    assert_close(out, ref, dtype, factor=2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("path", ["no-split", "auto", "whole-waves", "split-torch-sum", "split-in-kernel"])
def test_w4a16_gemv_kernel(M, path, dtype):
    """The CUDA-core kernel (``GemmConfig.gemv``): IN over 4 groups of 2 K steps each (the group-end scaling and
    zero-point reload, the clamped prefetch of the last step), every split path (splits in whole groups), bias,
    OUT with a partial chunk, one program row per input row."""
    split, reduce = {"no-split": (1, 1), "auto": (0, 1), "whole-waves": (-1, 1), "split-torch-sum": (3, 0),
                     "split-in-kernel": (2, 1)}[path]
    cfg = GemmConfig(1, 128, 32, 4, 2, split, reduce, 0, 8, 0, gemv=True)
    out, ref = _run_w4(M, 256, 136, 64, dtype, cfg, bias=True)
    assert_close(out, ref, dtype, factor=2)


@pytest.mark.parametrize("stages", [3, 4])
@pytest.mark.parametrize(("K", "split"), [(256, 1), (256, 2), (96, 1), (384, 3)],
                         ids=["8-steps", "2-splits", "3-steps", "3-splits-of-4"])
def test_w4a16_gemv_deeper_prefetch(stages, K, split):
    """``num_stages`` 3 and 4: two or three weight tiles loaded ahead, with splits shorter than the prefetch depth
    (3 steps) and of one group each, so the clamped loads past a split's end are exercised."""
    cfg = GemmConfig(1, 128, 32, 4, stages, split, 1, 0, 8, 0, gemv=True)
    out, ref = _run_w4(2, K, 136, 32 if K == 96 else 128, torch.float16, cfg, bias=True)
    assert_close(out, ref, torch.float16, factor=2)


@pytest.mark.parametrize(("block_k", "fold", "stages", "group"),
                         [(64, 2, 2, 128), (128, 4, 2, 128), (64, 2, 3, 64), (128, 4, 4, 32)],
                         ids=["64/2", "128/4", "64/2-3-stages", "step-cut-to-group-32/4"])
def test_w4a16_gemv_fold(block_k, fold, stages, group):
    """``GemmConfig.fold``: each step's rows summed onto ``block_k / fold`` accumulator rows, with the deeper
    prefetch, splits and a K step cut to a smaller group (128 -> 32 rows, 8 accumulator rows)."""
    for split in (1, 2):
        cfg = GemmConfig(1, 128, block_k, 4, stages, split, 1, 0, 8, 0, gemv=True, fold=fold)
        out, ref = _run_w4(3, 256, 136, group, torch.float16, cfg, bias=True)
        assert_close(out, ref, torch.float16, factor=2)


@pytest.mark.parametrize(("block_k", "fold", "stages", "group"),
                         [(32, 1, 2, 128), (32, 1, 4, 128), (64, 2, 3, 64), (32, 1, 6, 32)],
                         ids=["2-stages", "4-stages", "fold-2", "6-stages-group-32"])
def test_w4a16_gemv_pipelined(block_k, fold, stages, group):
    """``GemmConfig.pipelined``: the K loop as Triton's software pipeline (``tl.range(num_stages)``), with splits of
    one group and of several, pipelines deeper than a split's steps, and fold."""
    for K, split in ((256, 1), (256, 2), (384, 3)):
        cfg = GemmConfig(1, 128, block_k, 4, stages, split, 1, 0, 8, 0, gemv=True, fold=fold, pipelined=True)
        out, ref = _run_w4(3, K, 136, group, torch.float16, cfg, bias=True)
        assert_close(out, ref, torch.float16, factor=2)


@pytest.mark.parametrize(("block_n", "warps", "block_k", "stages", "group"),
                         [(128, 4, 32, 1, 128), (128, 4, 64, 3, 64), (256, 8, 32, 1, 32), (128, 2, 32, 2, 128),
                          (256, 4, 16, 1, 32)],
                         ids=["8-rows-1-stage", "8-rows-3-stages", "8-rows-wide", "4-rows", "4-rows-wide"])
def test_w4a16_gemv_column_threads(block_n, warps, block_k, stages, group):
    """``GemmConfig.column_threads``: one word column per thread, ``block_k`` in passes of 32 * warps / (block_n / 8)
    rows; splits of one group and of several, an OUT tail, bias."""
    for K, split in ((256, 1), (256, 2), (384, 3)):
        cfg = GemmConfig(1, block_n, block_k, warps, stages, split, 1, 0, 8, 0, gemv=True, column_threads=True)
        out, ref = _run_w4(3, K, 136, group, torch.float16, cfg, bias=True)
        assert_close(out, ref, torch.float16, factor=2)


def test_w4a16_gemv_column_threads_refusals():
    base = GemmConfig(1, 128, 32, 4, 1, 0, 1, 0, 8, 0, gemv=True, column_threads=True)
    for bad in (base._replace(pipelined=True), base._replace(fold=2), base._replace(num_stages=9)):
        with pytest.raises(ValueError, match="column_threads runs Triton's pipeline"):
            _run_w4(1, 128, 136, 64, torch.float16, bad)
    for bad in (base._replace(block_k=16, num_warps=16), base._replace(block_n=384, num_warps=1)):
        with pytest.raises(ValueError, match="column_threads needs the tile's"):
            _run_w4(1, 128, 136, 64, torch.float16, bad)


def test_w4a16_gemv_step_larger_than_the_group():
    """A K step wider than the group is cut to the group (one step per group), as for the MMA kernels."""
    cfg = GemmConfig(1, 256, 128, 4, 2, 0, 1, 0, 8, 0, gemv=True)
    out, ref = _run_w4(2, 192, 264, 32, torch.float16, cfg)
    assert_close(out, ref, torch.float16, factor=2)


@pytest.mark.parametrize(("sms", "tiles", "rounded_up", "whole"),
                         [(132, 112, 5, 4), (132, 32, 17, 16), (132, 48, 11, 11), (4, 3, 6, 5)])
def test_auto_split_whole_waves_leaves_no_partial_wave(monkeypatch, sms, tiles, rounded_up, whole):
    """``split_k=-1``: at most one program per slot (16 warps per SM at 4 warps: 4 slots); the default rounds up."""
    monkeypatch.setattr(quant, "num_sms", lambda device: sms)
    dev = torch.device("cpu")
    assert quant._auto_split(tiles, 64, dev, 4, 1, 4096) == rounded_up
    assert quant._auto_split(tiles, 64, dev, 4, 1, 4096, whole_waves=True) == whole
    assert tiles * whole <= sms * 4 < tiles * rounded_up or rounded_up == whole
    cfg = GemmConfig(16, 128, 64, 4, 3, -1, 1)
    assert quant._split_count(None, cfg, tiles, 64, dev, 1, 4096) == whole
    assert quant._split_count(3, cfg, tiles, 64, dev, 1, 4096) == 3  # the caller's count wins
    assert quant._auto_split(tiles, 4, dev, 4, 1, 4096, whole_waves=True) == min(whole, 2)  # >= 2 K steps each


@pytest.mark.parametrize(("M", "K", "N"), [(65, 4096, 14336), (128, 4096, 14336), (96, 14336, 4096),
                                          (65, 14336, 4096), (17, 4096, 14336), (64, 4096, 14336), (64, 14336, 4096)])
def test_table_split_counts_fill_the_programs_that_fit_an_sm(monkeypatch, M, K, N):
    """The W4A16 table rows whose builds hold fewer programs per SM than 16 warps' worth count their own
    (``programs_per_sm``): the split launch is one whole wave on an H200's 132 SMs, and no fewer programs than
    half of it (the K-step and partial-size bounds aside). Counted at 4 per SM, M 65 at 4096x14336 ran 336
    programs on 264 slots."""
    monkeypatch.setattr(quant, "num_sms", lambda device: 132)
    cfg = configs.pick_config(configs.W4A16_TABLE, M)
    assert cfg.programs_per_sm > 0 and cfg.split_k == -1, cfg  # the value itself: test_w4a16_sm90_compile.py
    tiles = -(-M // cfg.block_m) * -(-N // cfg.block_n)
    k_iters = K // cfg.block_k
    split = quant._split_count(None, cfg, tiles, k_iters, torch.device("cpu"), M, K)
    slots = 132 * cfg.programs_per_sm
    assert tiles * split <= slots, (split, tiles)  # one wave
    bound = min(k_iters // 2, K // (16 * M))
    assert split == bound or tiles * (split + 1) > slots, (split, bound)  # no whole wave left unused
    legacy = quant._split_count(None, cfg._replace(split_k=0, programs_per_sm=0), tiles, k_iters,
                                torch.device("cpu"), M, K)
    assert split <= legacy


def test_programs_per_sm_is_validated_and_counted(monkeypatch):
    monkeypatch.setattr(quant, "num_sms", lambda device: 10)
    dev = torch.device("cpu")
    assert quant._auto_split(7, 64, dev, 4, 1, 4096, whole_waves=True, programs_per_sm=3) == 4  # 30 // 7
    assert quant._auto_split(7, 64, dev, 4, 1, 4096, programs_per_sm=3) == 5  # rounded up: cdiv(30, 7)
    assert quant._auto_split(7, 64, dev, 8, 1, 4096, whole_waves=True) == 2  # 0: 16 // 8 warps -> 20 // 7
    with pytest.raises(ValueError, match="programs_per_sm must be >= 0"):
        quant._split_count(None, GemmConfig(64, 128, 128, 4, 2, -1, programs_per_sm=-1), 7, 64, dev, 1, 4096)


def test_options_a_kernel_cannot_honour_are_refused():
    with pytest.raises(ValueError, match="gemv kernel has no join / unpack / even_k"):
        _run_w4(1, 128, 128, 64, torch.float16, GemmConfig(1, 128, 32, 4, 2, 0, 1, 2, 8, 0, gemv=True))
    for stages, pipelined in ((1, False), (5, False), (1, True), (9, True)):
        with pytest.raises(ValueError, match="2 to 4 weight tiles in flight by hand, or pipelines 2 to 8"):
            _run_w4(1, 128, 128, 64, torch.float16,
                    GemmConfig(1, 128, 32, 4, stages, 0, 1, 0, 8, 0, gemv=True, pipelined=pipelined))
    for fold in (0, 3, 32):  # not a power of two / leaves one row of the 32-row step
        with pytest.raises(ValueError, match="gemv fold must be a power of two"):
            _run_w4(1, 128, 128, 64, torch.float16, GemmConfig(1, 128, 32, 4, 2, 0, 1, 0, 8, 0, gemv=True, fold=fold))
    for option in ({"fold": 2}, {"pipelined": True}, {"column_threads": True}):
        with pytest.raises(ValueError, match="fold, pipelined and column_threads apply to the gemv kernel only"):
            _run_w4(1, 128, 128, 64, torch.float16, BASE._replace(**option))
    with pytest.raises(ValueError, match="split_k must be"):
        _run_w4(1, 128, 128, 64, torch.float16, BASE._replace(split_k=-2))
    with pytest.raises(ValueError, match="split_k must be"):
        _run_w4(1, 128, 128, 64, torch.float16, BASE, split_k=-1)


def test_w4_unpack_runs_inline_ptx_only_where_available():
    """``unpack=2`` is inline PTX: off an NVIDIA GPU a launch runs the plain-Triton magic unpack (1) instead."""
    f16, bf16, f32 = torch.float16, torch.bfloat16, torch.float32
    assert quant.w4_unpack(2, f16, ptx=True, interpreter=False) == 2
    assert quant.w4_unpack(2, bf16, ptx=False, interpreter=False) == 1
    assert quant.w4_unpack(2, f16, ptx=False, interpreter=False) == 1
    assert quant.w4_unpack(1, f16, ptx=False, interpreter=False) == 1
    assert quant.w4_unpack(2, f16, ptx=False, interpreter=True) == 2  # integer ops for the PTX
    assert quant.w4_unpack(2, bf16, ptx=False, interpreter=True) == 0
    assert quant.w4_unpack(2, f32, ptx=True, interpreter=False) == 0


@pytest.mark.parametrize(("name", "want"),
                         [("NVIDIA H200", True), ("MetaX C500", False), ("AMD Instinct MI300X", False)])
def test_inline_ptx_only_on_nvidia_devices(monkeypatch, name, want):
    monkeypatch.setattr(_utils, "interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
    _utils._nvidia.cache_clear()
    try:
        assert _utils.inline_ptx(torch.device("cuda", 0)) is want
        assert _utils.inline_ptx(torch.device("cpu")) is False
    finally:
        _utils._nvidia.cache_clear()


def test_w4a16_fp32_and_default_config():
    out, ref = _run_w4(3, 128, 40, 128, torch.float32, None)  # the table / interpreter default
    assert_close(out, ref, torch.float32, factor=2)
    out, ref = _run_w4(2, 128, 40, 32, torch.float16, None, split_k=2)
    assert_close(out, ref, torch.float16, factor=2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M", sorted({m for m in configs.bucket_ends(quant.W4A16_TABLE)
                                      if m < configs.W4A16_DEQUANT_MIN_M} | {configs.W4A16_DEQUANT_MIN_M}))
@pytest.mark.parametrize("N", [200, configs.W4A16_GEMV_MIN_N + 72], ids=["narrow", "wide"])
def test_w4a16_default_path_at_every_table_bucket(M, N, dtype):
    """What a call without config or split runs (on a GPU: each table row, the CUDA-core kernel for one row against
    a wide weight, and the dequantise path), with a bias and an OUT tail."""
    if N > 200 and not ON_GPU:
        pytest.skip("the interpreter runs one small config at every M and N; the wide case checks the GPU's choice")
    out, ref = _run_w4(M, 256, N, 128, dtype, None, bias=True)
    assert_close(out, ref, dtype, factor=2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_w4a16_dequant_exact(dtype):
    """Each dequantised weight is the exact (q - z) * s rounded once to the dtype: equal to an fp64 oracle's."""
    K, N, g = 64, 264, 16
    q = torch.randint(0, 16, (K, N))
    z = torch.randint(0, 16, (K // g, N))
    s = (torch.rand(K // g, N) * 0.02 + 0.005).to(dtype)
    qw, sc, qz = quant.awq_prepare(awq_pack(q).to(DEVICE), s.to(DEVICE), awq_pack(z).to(DEVICE), g)
    ref = ((q - z.repeat_interleave(g, 0)).double() * s.double().repeat_interleave(g, 0)).to(dtype)
    assert torch.equal(quant.w4a16_dequant(qw, sc, qz, g, dtype).cpu(), ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_w4a16_large_m_dequant_path(dtype, monkeypatch):
    """From W4A16_DEQUANT_MIN_M rows on, the default call dequantises and multiplies (no fused kernel launch)."""
    monkeypatch.setattr(quant.configs, "W4A16_DEQUANT_MIN_M", 6)
    monkeypatch.setattr(quant, "_w4a16_kernel", None)
    monkeypatch.setattr(quant, "_w4a16_join_kernel", None)
    out, ref = _run_w4(7, 192, 264, 32, dtype, None, bias=True)
    assert_close(out, ref, dtype, factor=2)


def test_w4a16_split_counters_reset():
    """The in-kernel split-K reduction leaves its per-tile counters at zero, so a second call is right too."""
    (qw, sc, qz), (x, _), ref = _w4_case(4, 256, 136, 64, torch.float16)
    cfg = BASE._replace(split_k=4, reduce=1)
    first = quant.w4a16_fwd(x, qw, sc, qz, None, 64, config=cfg)
    second = quant.w4a16_fwd(x, qw, sc, qz, None, 64, config=cfg)
    assert_close(first, ref, torch.float16, factor=2)
    assert torch.equal(first, second)
    assert all(int(buf.abs().sum()) == 0 for buf in _utils._COUNTERS.values())


def test_awq_prepare_layout():
    """Decode the prepared words with the documented formula (nibble i of word 16t + c = column 128t + 16i + c)
    and compare with the values that went into the canonical AWQ packing."""
    K, N = 16, 200
    q = torch.randint(0, 16, (K, N))
    qw, _, qz = quant.awq_prepare(awq_pack(q), torch.ones(1, N), awq_pack(q[:1]), 16)
    assert qw.shape == (K, 2 * 16) and qw.dtype == torch.int32 and qz.shape == (1, 32)
    dec = torch.zeros(K, 256, dtype=torch.int64)
    w = qw.to(torch.int64) & 0xFFFFFFFF
    for t in range(2):
        for c in range(16):
            for i in range(8):
                dec[:, 128 * t + 16 * i + c] = (w[:, 16 * t + c] >> (4 * i)) & 0xF
    assert torch.equal(dec[:, :N], q) and int(dec[:, N:].abs().sum()) == 0
    assert AWQ_ORDER == quant.AWQ_ORDER


def test_w4a16_rejects_unprepared_weights():
    x = torch.randn(1, 64, device=DEVICE, dtype=torch.float16)
    qw = torch.zeros(64, 4, dtype=torch.int32, device=DEVICE)  # canonical AWQ [IN, OUT/8], not prepared
    with pytest.raises(ValueError, match=r"weight_quant_matmul: .*weight_quant_prepare"):
        quant.w4a16_fwd(x, qw, torch.ones(2, 32, device=DEVICE, dtype=torch.float16),
                        torch.zeros(2, 4, dtype=torch.int32, device=DEVICE), None, 32)


@pytest.mark.parametrize("M", [1, 5, 33])
@pytest.mark.parametrize("path", ["no-split", "split-in-kernel", "split-torch-sum"])
def test_w8a8_sizes_and_split_paths(M, path):
    split, reduce = {"no-split": (1, 1), "split-in-kernel": (3, 1), "split-torch-sum": (2, 0)}[path]
    K, N = 320, 136
    xq = torch.randint(-127, 128, (M, K), dtype=torch.int8, device=DEVICE)
    wq = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=DEVICE)
    xs, ws = torch.rand(M, device=DEVICE) / 100 + 1e-3, torch.rand(N, device=DEVICE) / 100 + 1e-3
    b = torch.randn(N, device=DEVICE).to(torch.bfloat16)
    cfg = GemmConfig(16 if M <= 16 else 32, 64, 64, 4, 1 if not ON_GPU else 3, split, reduce)
    out = quant.linear_w8a8_fwd(xq, wq, xs, ws, b, torch.bfloat16, config=cfg)
    ref = (xq.double() @ wq.double().T) * xs.double()[:, None] * ws.double() + b.double()
    assert out.dtype == torch.bfloat16
    assert_close(out, ref, torch.bfloat16)


def test_config_tables_cover_every_m():
    for table in (quant.W4A16_TABLE, quant.W8A8_TABLE):
        assert [b for b, _ in table] == sorted(b for b, _ in table)
        for M in (1, 16, 17, 64, 65, 256, 257, 1 << 20):
            cfg = quant.pick_config(table, M)
            assert isinstance(cfg, GemmConfig) and cfg.block_k % 16 == 0
    assert all(c.block_n % quant.NCHUNK == 0 for _, c in quant.W4A16_TABLE)


def test_w4a16_config_choice_by_rows_and_width():
    """One row against OUT >= W4A16_GEMV_MIN_N: the CUDA-core config; narrower or more rows: the table; from
    W4A16_DEQUANT_MIN_M rows: None (dequantise + GEMM)."""
    wide, narrow = configs.W4A16_GEMV_MIN_N, configs.W4A16_GEMV_MIN_N - 1
    assert configs.w4a16_config(1, wide) == configs.W4A16_DECODE_GEMV and configs.W4A16_DECODE_GEMV.gemv
    assert configs.w4a16_config(1, narrow) == quant.pick_config(quant.W4A16_TABLE, 1)
    assert configs.w4a16_config(2, wide) == quant.pick_config(quant.W4A16_TABLE, 2)
    assert not configs.w4a16_config(2, wide).gemv
    m = configs.W4A16_DEQUANT_MIN_M
    assert configs.w4a16_config(m - 1, wide) is not None and configs.w4a16_config(m, wide) is None
