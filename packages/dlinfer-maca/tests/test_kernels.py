"""Kernel-level tests of dlinfer-maca against plain torch oracles.

Runs on CUDA when present; otherwise under TRITON_INTERPRET=1 on CPU with small shapes
(marked ``interpreter``). Inputs are random and non-zero, outputs are fresh ``torch.empty``
buffers from the kernels, checked elementwise for finiteness and by relative norm error.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from _ref import TOL, assert_close, attention_ref, fused_moe_ref, rel_err, rotary_ref
from conftest import DEVICE, ON_GPU, needs_ptxas, run_as_for_gpu

from dlinfer_maca.kernels import _utils, attention, elementwise, moe, norm, quant

pytestmark = pytest.mark.interpreter
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# attention / MoE in the interpreter are slow: fp32 for those runs on GPU only (the kit covers it there)
HEAVY_DTYPES = DTYPES if ON_GPU else [torch.float16, torch.bfloat16]


def rnd(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, device=DEVICE) * scale).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H", [48, 128])
def test_rms_norm_family(dtype, H):
    x, r, w = rnd(7, H, dtype=dtype), rnd(7, H, dtype=dtype), rnd(H, dtype=dtype)

    def ref(v):
        vf = v.float()
        return vf * torch.rsqrt(vf.pow(2).mean(-1, keepdim=True) + 1e-6) * w.float()

    (o,) = norm.rms_norm_fwd(x, w, 1e-6)
    assert_close(o, ref(x), dtype)
    o, added = norm.rms_norm_fwd(x, w, 1e-6, residual=r)
    s = (x.float() + r.float()).to(dtype)
    assert_close(added, s, dtype)
    assert_close(o, ref(s), dtype)
    q, sc = norm.rms_norm_fwd(x, w, 1e-6, quant=True)
    y = ref(x).to(dtype).float()
    assert torch.allclose(sc, y.abs().amax(-1) / 127, rtol=TOL[dtype])
    if dtype == torch.float32:
        assert (q.float() - y / sc[:, None]).abs().max() <= 0.5 + 1e-3
    else:  # int8 grid error (<= 0.5/127 per element) plus the low-precision rounding of y
        assert rel_err(q.float() * sc[:, None], y) < 2e-2


@pytest.mark.parametrize("dtype,magnitude", [(d, 1.0) for d in DTYPES] + [(torch.float32, 1e-38)],
                         ids=[str(d).split(".")[-1] for d in DTYPES] + ["float32-subnormal-scale"])
def test_dynamic_quant(dtype, magnitude):
    """Codes against x / scale in fp64; ``magnitude`` 1e-38 makes every scale subnormal (1/scale overflows)."""
    x = rnd(3, 5, 64, dtype=dtype) * magnitude
    q, sc = norm.dynamic_quant_fwd(x)
    assert q.dtype == torch.int8 and sc.shape == (3, 5)
    xf = x.float()
    assert torch.allclose(sc, xf.abs().amax(-1) / 127, rtol=1e-6)
    steps = xf.double() / sc.double()[..., None]
    want = torch.round(steps).clamp(-127, 127)
    diff = (q.double() - want).abs()
    # the kernel multiplies by 1/scale: only at a .5 tie of x / scale may it land one step away
    near_tie = ((steps - steps.floor()) - 0.5).abs() < 1e-4
    assert diff.max() <= 1 and not bool(((diff > 0) & ~near_tie).any())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("R", [32, 16])
def test_rotary(dtype, interleaved, R):
    T, Hq, Hkv, D = 5, 4, 2, 32
    q, k = rnd(T, Hq, D, dtype=dtype), rnd(T, Hkv, D, dtype=dtype)
    ang = torch.rand(T, R // 2, device=DEVICE) * 6
    ang = ang.repeat_interleave(2, -1) if interleaved else torch.cat((ang, ang), -1)
    cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)
    qo, ko = elementwise.rotary_fwd(q, k, cos, sin, interleaved)
    assert_close(qo, rotary_ref(q, cos, sin, interleaved), dtype)
    assert_close(ko, rotary_ref(k, cos, sin, interleaved), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("T,Hq,Hkv,D,R", [(5, 4, 2, 32, 32), (3, 6, 2, 48, 16), (1, 8, 1, 64, 64)])
def test_rotary_inplace_on_fused_qkv(dtype, interleaved, T, Hq, Hkv, D, R):
    """q / k sliced from one [T, (Hq + 2*Hkv)*D] buffer: rotated where they are, bit-identical to the
    out-of-place kernel; v and the dims >= R are left alone."""
    qkv = rnd(T, (Hq + 2 * Hkv) * D, dtype=dtype)
    before = qkv.clone()
    q, k = qkv[:, : Hq * D].view(T, Hq, D), qkv[:, Hq * D : (Hq + Hkv) * D].view(T, Hkv, D)
    ang = torch.rand(T, R // 2, device=DEVICE) * 6
    ang = ang.repeat_interleave(2, -1) if interleaved else torch.cat((ang, ang), -1)
    cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)
    qb, kb = before[:, : Hq * D].view(T, Hq, D), before[:, Hq * D : (Hq + Hkv) * D].view(T, Hkv, D)
    qo, ko = elementwise.rotary_fwd(qb, kb, cos, sin, interleaved)
    elementwise.rotary_inplace(q, k, cos, sin, interleaved)
    assert torch.equal(q, qo) and torch.equal(k, ko)
    assert_close(q, rotary_ref(qb, cos, sin, interleaved), dtype)
    assert torch.equal(qkv[:, (Hq + Hkv) * D :], before[:, (Hq + Hkv) * D :])
    assert torch.equal(q[..., R:], qb[..., R:]) and torch.equal(k[..., R:], kb[..., R:])


def test_rotary_inplace_refuses_a_strided_last_dim_and_serves_empty():
    from dlinfer_maca import ops

    cos, sin = rnd(3, 8), rnd(3, 8)
    q = rnd(3, 2, 16)[..., ::2]  # last-dim stride 2
    k = rnd(3, 1, 8)
    msg = r"apply_rotary_pos_emb_inplace: argument 'q': expected unit stride.*strides \[32, 16, 2\]"
    with pytest.raises(ValueError, match=msg):
        ops.apply_rotary_pos_emb_inplace(q, k, cos, sin)
    with pytest.raises(ValueError, match="argument 'k': expected unit stride"):
        ops.apply_rotary_pos_emb_inplace(k.clone(), rnd(3, 1, 16)[..., ::2], cos, sin)
    e = rnd(0, 2, 8)
    assert ops.apply_rotary_pos_emb_inplace(e, rnd(0, 1, 8), rnd(0, 8), rnd(0, 8)) is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(dtype):
    x = rnd(3, 2, 96, dtype=dtype)
    ref = torch.nn.functional.silu(x[..., :48].double()) * x[..., 48:].double()
    assert_close(elementwise.silu_and_mul_fwd(x), ref, dtype)


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
def test_fill_kv_cache(layout, slot_dtype):
    T, H, D, DV, BS, NB = 6, 2, 32, 16, 4, 5
    key, value = rnd(T, H, D), rnd(T, H, DV)
    shape_k = (NB, BS, H, D) if layout == "NHD" else (NB, H, BS, D)
    shape_v = (NB, BS, H, DV) if layout == "NHD" else (NB, H, BS, DV)
    kc, vc = torch.full(shape_k, 7.0, device=DEVICE), torch.full(shape_v, 7.0, device=DEVICE)
    slots = torch.tensor([3, 17, -1, 4, 0, 19], dtype=slot_dtype, device=DEVICE)
    ek, ev = kc.clone(), vc.clone()
    for t, s in enumerate(slots.tolist()):
        if s < 0:
            continue
        b, o = divmod(s, BS)
        if layout == "NHD":
            ek[b, o], ev[b, o] = key[t], value[t]
        else:
            ek[b, :, o], ev[b, :, o] = key[t], value[t]
    elementwise.fill_kv_cache_fwd(key, value, kc, vc, slots, layout)
    assert torch.equal(kc, ek) and torch.equal(vc, ev)


def _paged(k_seqs, v_seqs, BS, layout, extra_blocks=3):
    """Scatter per-sequence K/V [L, H, *] into a shuffled paged cache; returns caches and block table."""
    H, D, DV = k_seqs[0].shape[1], k_seqs[0].shape[2], v_seqs[0].shape[2]
    nblk = [math.ceil(k.shape[0] / BS) for k in k_seqs]
    NB = sum(nblk) + extra_blocks
    perm = torch.randperm(NB).tolist()
    kc = rnd(NB, BS, H, D, dtype=k_seqs[0].dtype) * 100  # garbage in unused slots
    vc = rnd(NB, BS, H, DV, dtype=k_seqs[0].dtype) * 100
    table = torch.zeros(len(k_seqs), max(nblk) + 1, dtype=torch.int32)
    i = 0
    for b, (k, v) in enumerate(zip(k_seqs, v_seqs)):
        for j in range(nblk[b]):
            blk = perm[i]
            i += 1
            table[b, j] = blk
            n = min(BS, k.shape[0] - j * BS)
            kc[blk, :n] = k[j * BS: j * BS + n]
            vc[blk, :n] = v[j * BS: j * BS + n]
    if layout == "HND":
        kc, vc = kc.transpose(1, 2).contiguous(), vc.transpose(1, 2).contiguous()
    return kc, vc, table.to(DEVICE)


DECODE_CASES = [
    # B, Hq, Hkv, D, DV, BS, lens, layout, splits, max_seqlen_kv passed
    (3, 4, 1, 32, 32, 16, [5, 40, 17], "NHD", None, None),
    (2, 8, 4, 64, 32, 8, [33, 1], "HND", None, None),
    (2, 2, 2, 16, 16, 16, [150, 9], "NHD", 3, None),  # multi-split merge
    (2, 4, 2, 32, 32, 16, [150, 70], "NHD", 2, 64),  # max_seqlen_kv too small: the splits still cover each length
    (3, 4, 2, 32, 32, 16, [150, 1, 33], "NHD", 8, 1024),  # graph capacity >> lengths: 8 splits of each own length
    (3, 4, 2, 32, 32, 16, [150, 1, 33], "NHD", None, 4096),  # the heuristic's split count for the capacity
    (2, 4, 4, 32, 32, 64, [150, 70], "HND", 2, None),  # one page per key block
    (2, 6, 2, 32, 32, 16, [150, 90], "NHD", 5, None),  # G = 3 (masked merge rows), 5 splits
]


@pytest.mark.parametrize("dtype", HEAVY_DTYPES)
@pytest.mark.parametrize("case", DECODE_CASES)
@pytest.mark.parametrize("merge_pass", [False, True], ids=["inline-merge", "merge-pass"])
@pytest.mark.parametrize("heads_first", [False, True], ids=["seq-major", "heads-first"])
def test_paged_decode(dtype, case, merge_pass, heads_first, monkeypatch):
    B, Hq, Hkv, D, DV, BS, lens, layout, splits, maxlen = case
    ks = [rnd(n, Hkv, D, dtype=dtype) for n in lens]
    vs = [rnd(n, Hkv, DV, dtype=dtype) for n in lens]
    kc, vc, table = _paged(ks, vs, BS, layout)
    q = rnd(B, Hq, D, dtype=dtype)
    seqlens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    if not merge_pass:  # the in-kernel merge, for every split count, must not fall back to the second launch
        monkeypatch.setattr(attention, "_decode_merge_kernel", None)
        monkeypatch.setattr(attention, "MERGE_INLINE_MAX_SPLITS", 64)
        monkeypatch.setattr(attention, "MERGE_TILE", 2 * DV)  # several merge tiles per (sequence, KV head)
    out = attention.paged_decode_fwd(q, kc, vc, table, seqlens, maxlen or max(lens), layout, num_splits=splits,
                                     merge_pass=merge_pass, heads_first=heads_first)
    if not merge_pass:
        assert all(int(buf.abs().sum()) == 0 for buf in _utils._COUNTERS.values())  # counters back at rest
    for b, n in enumerate(lens):
        ref = attention_ref(q[b:b + 1], ks[b], vs[b], q_pos=torch.tensor([n - 1], device=DEVICE),
                            causal=True, scale=1 / math.sqrt(D))
        assert_close(out[b:b + 1], ref, dtype, factor=2)


@pytest.mark.parametrize("merge_pass", [False, True], ids=["inline-merge", "merge-pass"])
def test_paged_decode_splits_past_the_end_store_nothing(merge_pass, monkeypatch):
    """A graph sized for long contexts runs many splits; on a short sequence the splits past its end store no
    partial and the merge reads only the used ones. The partial buffers are poisoned with NaN: a merge that read
    an unwritten split would return NaN; the unused rows must still hold the poison."""
    splits, bs, lens = 16, 16, [150, 1, 33, 64]
    block_n = 64  # the interpreter's key block (paged_decode_fwd)
    made: list[torch.Tensor] = []
    empty = torch.empty

    def poisoned(*args, **kwargs):  # noqa: ANN002, ANN003 - torch.empty's signature
        t = empty(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
            made.append(t)
        return t

    if not merge_pass:
        monkeypatch.setattr(attention, "_decode_merge_kernel", None)
        monkeypatch.setattr(attention, "MERGE_INLINE_MAX_SPLITS", splits)
    ks = [rnd(n, 2, 32, dtype=torch.float32) for n in lens]
    vs = [rnd(n, 2, 32, dtype=torch.float32) for n in lens]
    kc, vc, table = _paged(ks, vs, bs, "NHD")
    q = rnd(len(lens), 4, 32, dtype=torch.float32)
    seqlens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    monkeypatch.setattr(torch, "empty", poisoned)
    out = attention.paged_decode_fwd(q, kc, vc, table, seqlens, 4096, "NHD", num_splits=splits,
                                     merge_pass=merge_pass)
    monkeypatch.setattr(torch, "empty", empty)
    part_o = next(t for t in made if t.dim() == 4)  # [B, Hq, splits, Dv]
    for b, n in enumerate(lens):
        ref = attention_ref(q[b:b + 1], ks[b], vs[b], q_pos=torch.tensor([n - 1], device=DEVICE), causal=True,
                            scale=1 / math.sqrt(32))
        assert_close(out[b:b + 1], ref, torch.float32, factor=2)
        used = math.ceil(n / (math.ceil(math.ceil(n / block_n) / splits) * block_n))
        assert torch.isfinite(part_o[b, :, :used]).all() and torch.isnan(part_o[b, :, used:]).all(), (b, used)


@pytest.mark.parametrize("merge_pass", [False, True], ids=["inline-merge", "merge-pass"])
def test_paged_decode_window_with_splits_before_it_and_past_the_end(merge_pass, monkeypatch):
    """A sliding window with many splits: the splits before the window are used but see no key (they store an
    empty partial), the splits past the end store nothing; the merge of both kinds equals the windowed oracle."""
    if not merge_pass:
        monkeypatch.setattr(attention, "_decode_merge_kernel", None)
        monkeypatch.setattr(attention, "MERGE_INLINE_MAX_SPLITS", 16)
    lens, window = [300, 37, 130], 70
    ks = [rnd(n, 2, 32, dtype=torch.float32) for n in lens]
    vs = [rnd(n, 2, 32, dtype=torch.float32) for n in lens]
    kc, vc, table = _paged(ks, vs, 16, "NHD")
    q = rnd(len(lens), 4, 32, dtype=torch.float32, scale=3.0)
    seqlens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    out = attention.paged_decode_fwd(q, kc, vc, table, seqlens, 1024, "NHD", window=window, num_splits=16,
                                     merge_pass=merge_pass)
    for b, n in enumerate(lens):
        ref = attention_ref(q[b:b + 1], ks[b], vs[b], q_pos=torch.tensor([n - 1], device=DEVICE), causal=True,
                            scale=1 / math.sqrt(32), window=window)
        assert_close(out[b:b + 1], ref, torch.float32, factor=2)


def _poison_unused_slots(kc, vc, table, lens, bs, layout):
    """NaN in every cache slot that holds no token of its sequence (the tails of the last pages and the blocks no
    sequence owns): a kernel that reads past a sequence's end unmasked returns NaN."""
    owned = torch.zeros(kc.shape[0], bs, dtype=torch.bool, device=kc.device)
    for b, n in enumerate(lens):
        for j in range(math.ceil(n / bs)):
            owned[int(table[b, j]), : min(bs, n - j * bs)] = True
    for cache in (kc, vc):
        view = cache if layout == "NHD" else cache.transpose(1, 2)  # [NB, BS, H, D] either way
        view[~owned] = float("nan")


PAGE_LOOP_CASES = [
    # B, Hq, Hkv, D, DV, BS, lens, layout, splits, max_seqlen_kv passed
    (3, 4, 1, 32, 32, 64, [5, 200, 64], "NHD", None, None),  # a sequence ending on a block boundary
    (2, 8, 2, 48, 32, 64, [150, 1], "HND", 3, None),  # D below its tile (masked head dims), 3 splits
    (3, 4, 2, 32, 32, 128, [300, 129, 70], "NHD", 2, None),  # two key blocks per page: the in-page offset
    (3, 4, 2, 32, 32, 128, [300, 1, 33], "NHD", 16, 4096),  # a graph's capacity: splits past the end
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", PAGE_LOOP_CASES)
@pytest.mark.parametrize("window", [None, 37, 200], ids=["no-window", "window-37", "window-200"])
@pytest.mark.parametrize("merge_pass", [False, True], ids=["inline-merge", "merge-pass"])
def test_paged_decode_page_loop(dtype, case, window, merge_pass, monkeypatch):
    """``page_loop``: key blocks read whole at one scalar page base, scores masked per key, values past the end
    not loaded. Every slot past a sequence's end (and every unowned block) holds NaN, so a last block whose scores
    or values are not masked fails; a window that starts mid-block must still hide the keys before it.
    ``merge_pdl`` launches the merge pass as a programmatic dependent where the device allows it (sm_90+; on the
    CPU interpreter it is a plain launch)."""
    B, Hq, Hkv, D, DV, BS, lens, layout, splits, maxlen = case
    if not merge_pass:
        monkeypatch.setattr(attention, "_decode_merge_kernel", None)
        monkeypatch.setattr(attention, "MERGE_INLINE_MAX_SPLITS", 64)
    ks = [rnd(n, Hkv, D, dtype=dtype) for n in lens]
    vs = [rnd(n, Hkv, DV, dtype=dtype) for n in lens]
    kc, vc, table = _paged(ks, vs, BS, layout)
    _poison_unused_slots(kc, vc, table, lens, BS, layout)
    q = rnd(B, Hq, D, dtype=dtype, scale=2.0)
    seqlens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    out = attention.paged_decode_fwd(q, kc, vc, table, seqlens, maxlen or max(lens), layout, window=window,
                                     num_splits=splits, merge_pass=merge_pass, page_loop=True, merge_pdl=True)
    for b, n in enumerate(lens):
        ref = attention_ref(q[b:b + 1], ks[b], vs[b], q_pos=torch.tensor([n - 1], device=DEVICE),
                            causal=True, scale=1 / math.sqrt(D), window=window)
        assert_close(out[b:b + 1], ref, dtype, factor=2)


def test_paged_decode_page_loop_only_on_whole_blocks_per_page(monkeypatch):
    """Pages smaller than the key block keep the per-key loop (a block would span pages the table may not hold)."""
    seen: list[bool] = []
    split = attention._decode_split_kernel

    class Recording:
        def __getitem__(self, grid):  # noqa: ANN001 - Triton's launch syntax
            def launch(*args, **kwargs):  # noqa: ANN002, ANN003
                seen.append(kwargs["PAGE_LOOP"])
                return split[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(attention, "_decode_split_kernel", Recording())
    for bs in (16, 64):
        ks = [rnd(90, 2, 32)]
        vs = [rnd(90, 2, 32)]
        kc, vc, table = _paged(ks, vs, bs, "NHD")
        q = rnd(1, 4, 32)
        out = attention.paged_decode_fwd(q, kc, vc, table, torch.tensor([90], dtype=torch.int32, device=DEVICE), 90,
                                         "NHD", page_loop=True)
        ref = attention_ref(q, ks[0], vs[0], q_pos=torch.tensor([89], device=DEVICE), causal=True,
                            scale=1 / math.sqrt(32))
        assert_close(out, ref, torch.float32, factor=2)
    assert seen == [False, True]


_DECODE_COMPILE = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from dlinfer_maca.kernels import attention as A
target = GPUTarget("cuda", 90, 32)
ptrs = dict(q_ptr="*bf16", kc_ptr="*bf16", vc_ptr="*bf16", bt_ptr="*i32", seqlens_ptr="*i32", slopes_ptr="*fp32",
            o_ptr="*bf16", part_o_ptr="*fp32", part_lse_ptr="*fp32", cnt_ptr="*i32", scale="fp32", softcap="fp32")
for direct, merge, window, page_loop, pdl in ((True, False, False, False, False), (False, True, False, True, False),
                                             (False, False, True, False, True), (False, False, True, True, True)):
    const = dict(PAGE=64, D=128, DV=128, DIRECT=direct, MERGE=merge, HEADS_FIRST=True, BLOCK_G=16, BLOCK_N=64,
                 BLOCK_D=128, BLOCK_DV=128, MERGE_G=4, MERGE_S=4, USE_SOFTCAP=False, USE_ALIBI=False,
                 USE_WINDOW=window, DOT_PREC="ieee", PAGE_LOOP=page_loop, PDL_TRIGGER=pdl)
    sig = {n: "constexpr" if n in const else ptrs.get(n, "i32") for n in A._decode_split_kernel.arg_names}
    out = triton.compile(ASTSource(A._decode_split_kernel, sig, const), target=target,
                         options={"num_warps": 4, "num_stages": 2})
    assert out.asm["cubin"], (direct, merge, window, page_loop, pdl)
    assert ("griddepcontrol.launch_dependents" in out.asm["ptx"]) == pdl, pdl
for pdl in (False, True):
    const = dict(BLOCK_S=64, BLOCK_DV=128, BLOCK_N=64, PDL_WAIT=pdl)
    sig = {n: "constexpr" if n in const else ptrs.get(n, "*bf16" if n == "o_ptr" else "i32")
           for n in A._decode_merge_kernel.arg_names}
    merged = triton.compile(ASTSource(A._decode_merge_kernel, sig, const), target=target,
                            options={"num_warps": 4, "launch_pdl": pdl})
    assert merged.asm["cubin"] and ("griddepcontrol.wait" in merged.asm["ptx"]) == pdl, pdl
print("compiled")
"""


@needs_ptxas
def test_decode_kernels_compile_for_sm90(tmp_path):
    """The interpreter cannot catch a lowering error: the decode split kernel (one split, in-kernel merge, merge pass
    with a window; the page loop; the PDL trigger) and the merge kernel (with and without the PDL wait)
    built for sm_90 with Triton's bundled ptxas."""
    proc = run_as_for_gpu(["-c", _DECODE_COMPILE], tmp_path, timeout=300)
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize("splits", [3, 5])
def test_paged_decode_merge_choice(splits, monkeypatch):
    """Up to MERGE_INLINE_MAX_SPLITS splits merge in the split kernel, above it in the second launch."""
    launches: list[int] = []
    merge = attention._decode_merge_kernel

    class Counting:
        def __getitem__(self, grid):  # noqa: ANN001 - Triton's launch syntax
            launches.append(1)
            return merge[grid]

    monkeypatch.setattr(attention, "_decode_merge_kernel", Counting())
    monkeypatch.setattr(attention, "MERGE_INLINE_MAX_SPLITS", 4)
    lens = [150, 90]
    ks = [rnd(n, 2, 32, dtype=torch.float32) for n in lens]
    vs = [rnd(n, 2, 32, dtype=torch.float32) for n in lens]
    kc, vc, table = _paged(ks, vs, 16, "NHD")
    q = rnd(2, 4, 32, dtype=torch.float32)
    seqlens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    out = attention.paged_decode_fwd(q, kc, vc, table, seqlens, max(lens), "NHD", num_splits=splits)
    assert len(launches) == (splits > 4)
    for b, n in enumerate(lens):
        ref = attention_ref(q[b:b + 1], ks[b], vs[b], q_pos=torch.tensor([n - 1], device=DEVICE), causal=True,
                            scale=1 / math.sqrt(32))
        assert_close(out[b:b + 1], ref, torch.float32, factor=2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("opt", ["window", "softcap", "alibi"])
def test_paged_decode_options(dtype, opt):
    lens, Hq, Hkv, D = [37, 12], 4, 2, 32
    ks = [rnd(n, Hkv, D, dtype=dtype) for n in lens]
    vs = [rnd(n, Hkv, D, dtype=dtype) for n in lens]
    kc, vc, table = _paged(ks, vs, 16, "NHD")
    q = rnd(2, Hq, D, dtype=dtype, scale=3.0)
    kw = {"window": 10} if opt == "window" else {"softcap": 2.0} if opt == "softcap" else {
        "alibi_slopes": torch.rand(Hq, device=DEVICE)}
    seqlens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    out = attention.paged_decode_fwd(q, kc, vc, table, seqlens, 40, "NHD", scale=0.3, **kw)
    for b, n in enumerate(lens):
        ref = attention_ref(q[b:b + 1], ks[b], vs[b], q_pos=torch.tensor([n - 1], device=DEVICE), causal=True,
                            scale=0.3, window=kw.get("window"), softcap=kw.get("softcap"),
                            slopes=kw.get("alibi_slopes"))
        assert_close(out[b:b + 1], ref, dtype, factor=2)


PREFILL_CASES = [
    # qlens, Hq, Hkv, D, DV, causal
    ([7, 20, 1], 4, 2, 32, 32, True),
    ([18, 5], 2, 2, 16, 32, False),
    ([33], 4, 1, 64, 64, True),
]


@pytest.mark.parametrize("dtype", HEAVY_DTYPES)
@pytest.mark.parametrize("case", PREFILL_CASES)
def test_prefill(dtype, case):
    qlens, Hq, Hkv, D, DV, causal = case
    T = sum(qlens)
    q, k, v = rnd(T, Hq, D, dtype=dtype), rnd(T, Hkv, D, dtype=dtype), rnd(T, Hkv, DV, dtype=dtype)
    cu = torch.tensor([0] + list(torch.tensor(qlens).cumsum(0)), dtype=torch.int32, device=DEVICE)
    out = attention.prefill_fwd(q, k, v, cu, max(qlens), causal=causal)
    for b, n in enumerate(qlens):
        s = slice(int(cu[b]), int(cu[b + 1]))
        ref = attention_ref(q[s], k[s], v[s], q_pos=torch.arange(n, device=DEVICE), causal=causal,
                            scale=1 / math.sqrt(D))
        assert_close(out[s], ref, dtype, factor=2)


@pytest.mark.parametrize("dtype", HEAVY_DTYPES)
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("opt", [None, "window", "softcap", "alibi", "noncausal", "noncausal_window"])
@pytest.mark.parametrize("BS", [16, 64])
def test_paged_prefill(dtype, layout, opt, BS):
    qlens, kvlens, Hq, Hkv, D = [5, 17, 1], [21, 17, 140], 4, 2, 32
    ks = [rnd(n, Hkv, D, dtype=dtype) for n in kvlens]
    vs = [rnd(n, Hkv, D, dtype=dtype) for n in kvlens]
    kc, vc, table = _paged(ks, vs, BS, layout)
    T = sum(qlens)
    q = rnd(T, Hq, D, dtype=dtype, scale=2.0)
    cu = torch.tensor([0] + list(torch.tensor(qlens).cumsum(0)), dtype=torch.int32, device=DEVICE)
    kw = {"window": 9} if opt in ("window", "noncausal_window") else {"softcap": 3.0} if opt == "softcap" else {
        "alibi_slopes": torch.rand(Hq, device=DEVICE)} if opt == "alibi" else {}
    causal = not opt or not opt.startswith("noncausal")  # noncausal_window: only the left bound p - window < j
    seqlens = torch.tensor(kvlens, dtype=torch.int32, device=DEVICE)
    out = attention.prefill_fwd(q, kc, vc, cu, max(qlens), causal=causal, block_table=table, seqlens_kv=seqlens,
                                layout=layout, **kw)
    for b, (n, L) in enumerate(zip(qlens, kvlens)):
        s = slice(int(cu[b]), int(cu[b + 1]))
        ref = attention_ref(q[s], ks[b], vs[b], q_pos=torch.arange(L - n, L, device=DEVICE), causal=causal,
                            scale=1 / math.sqrt(D), window=kw.get("window"), softcap=kw.get("softcap"),
                            slopes=kw.get("alibi_slopes"))
        assert_close(out[s], ref, dtype, factor=2)


@pytest.mark.parametrize("renorm", [False, True])
@pytest.mark.parametrize("E,k", [(8, 2), (6, 3), (16, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_topk_softmax(renorm, E, k, dtype):
    logits = rnd(9, E, dtype=dtype)
    w, ids = moe.topk_softmax_fwd(logits, k, renorm)
    p = torch.softmax(logits.float(), -1)
    rw, rid = p.topk(k, dim=-1)
    if renorm:
        rw = rw / rw.sum(-1, keepdim=True)
    assert ids.dtype == torch.int32 and w.dtype == torch.float32
    assert torch.allclose(w, rw, rtol=1e-5, atol=1e-7)
    # ids must be an argmax set: ties (likely with bf16 logits) may come in any order
    assert torch.allclose(p.gather(1, ids.long()), p.gather(1, rid), rtol=1e-6)
    if dtype == torch.float32:
        assert torch.equal(ids.long(), rid)


@pytest.mark.parametrize("dtype", HEAVY_DTYPES)
@pytest.mark.parametrize("T,E,k", [(1, 8, 2), (11, 4, 2), (6, 8, 3), (5, 3, 1)])
def test_fused_moe(dtype, T, E, k):
    H, inter = 32, 48
    x = rnd(T, H, dtype=dtype)
    gate_up = rnd(E, 2 * inter, H, dtype=dtype, scale=0.2)
    down = rnd(E, H, inter, dtype=dtype, scale=0.2)
    w, ids = moe.topk_softmax_fwd(rnd(T, E), k, True)
    out = moe.fused_moe_fwd(x, gate_up, down, w, ids)
    assert_close(out, fused_moe_ref(x, gate_up, down, w, ids), dtype, factor=3)


@pytest.mark.parametrize("k", [1, 2])
def test_fused_moe_out_of_range_ids_add_nothing(k):
    """Expert ids outside [0, E) are invalid input (refused under DLINFER_VALIDATE=full). Unvalidated, the kernels
    must not index outside their buffers with them (an id of -1 made the scatter's atomic add and store land before
    its cursor array): such a route adds nothing, every other route is served exactly."""
    T, H, inter, E = 7, 32, 48, 4
    dtype = torch.float32
    x = rnd(T, H, dtype=dtype)
    gate_up = rnd(E, 2 * inter, H, dtype=dtype, scale=0.2)
    down = rnd(E, H, inter, dtype=dtype, scale=0.2)
    w, ids = moe.topk_softmax_fwd(rnd(T, E), k, True)
    bad = torch.tensor([-1, E, E + 5, -7], dtype=ids.dtype, device=ids.device)
    ids[1:5, 0] = bad
    out = moe.fused_moe_fwd(x, gate_up, down, w, ids)
    kept_w = torch.where((ids >= 0) & (ids < E), w, torch.zeros_like(w))
    assert_close(out, fused_moe_ref(x, gate_up, down, kept_w, ids.clamp(0, E - 1)), dtype, factor=3)
    assert torch.isfinite(out).all()
    if k == 1:
        assert torch.count_nonzero(out[1:5]) == 0


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_w8a8(out_dtype, bias):
    M, K, N = 5, 64, 40
    xq = torch.randint(-127, 128, (M, K), dtype=torch.int8, device=DEVICE)
    wq = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=DEVICE)
    xs, ws = torch.rand(M, device=DEVICE) / 100, torch.rand(N, device=DEVICE) / 100
    b = rnd(N, dtype=out_dtype) if bias else None
    out = quant.linear_w8a8_fwd(xq, wq, xs, ws, b, out_dtype)
    ref = (xq.double() @ wq.double().T) * xs.double()[:, None] * ws.double()
    if bias:
        ref = ref + b.double()
    assert out.dtype == out_dtype
    assert_close(out, ref, out_dtype)


def _awq_pack(q: torch.Tensor) -> torch.Tensor:
    """Pack int values [R, C] (0..15) to AWQ int32 [R, C/8]."""
    R, C = q.shape
    g = q.view(R, C // 8, 8).to(torch.int64)
    packed = torch.zeros(R, C // 8, dtype=torch.int64, device=q.device)
    for i, col in enumerate(quant.AWQ_ORDER):
        packed |= g[..., col] << (4 * i)
    return packed.to(torch.uint32).view(torch.int32) if hasattr(torch, "uint32") else packed.to(torch.int32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("split_k", [1, 3])
def test_w4a16(dtype, split_k):
    M, K, N, g = 3, 192, 72, 32
    q = torch.randint(0, 16, (K, N), device=DEVICE)
    z = torch.randint(0, 16, (K // g, N), device=DEVICE)
    s = (torch.rand(K // g, N, device=DEVICE) / 10 + 0.01).to(dtype)
    qw, sc, qz = quant.awq_prepare(_awq_pack(q), s, _awq_pack(z), g)
    x = rnd(M, K, dtype=dtype)
    out = quant.w4a16_fwd(x, qw, sc, qz, None, g, split_k=split_k)
    W = (q - z.repeat_interleave(g, 0)).double() * s.double().repeat_interleave(g, 0)
    assert_close(out, x.double() @ W, dtype, factor=2)


def test_tolerances_are_strict():
    assert TOL[torch.float32] == 1e-5 and TOL[torch.float16] == 1e-3 and TOL[torch.bfloat16] == 1e-2
    assert ON_GPU or DEVICE == "cpu"


@needs_ptxas
def test_decode_page_loop_has_less_address_arithmetic_in_its_sm90_loop(tmp_path):
    """``tools/decode_sass_compare.py`` (sm_90 build, no GPU): the page loop's body per key block holds fewer
    instructions, and fewer integer address instructions, than the per-key loop's; both have the two MMAs."""
    tool = Path(__file__).resolve().parents[1] / "tools" / "decode_sass_compare.py"
    proc = run_as_for_gpu([str(tool), "--no-peer", "--out", str(tmp_path / "sass")], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    header, rows = None, {}
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "kernel":
            header = cells
        elif header and cells[0].startswith("maca_split"):
            rows[cells[0]] = {k: int(v) for k, v in zip(header[1:], cells[1:], strict=True)}
    assert len(rows) == 4, proc.stdout
    for stages in (2, 3):
        per_key, paged = rows[f"maca_split_bn64_w4s{stages}_per_key"], rows[f"maca_split_bn64_w4s{stages}_page_loop"]
        address = ("IMAD", "IADD3", "LEA")
        assert paged["loop"] < per_key["loop"], (paged, per_key)
        assert sum(paged[op] for op in address) < sum(per_key[op] for op in address), (paged, per_key)
        assert paged["HMMA"] + paged["HGMMA"] > 0 and paged["stack"] == 0, paged


def test_programmatic_launch_needs_a_triton_with_pdl(monkeypatch):
    """PDL is used only with a Triton that has ``launch_pdl`` and ``gdc_wait`` (3.3+; the package accepts 3.0): an
    older one must get plain launches, not an unknown launch option. Triton 3.6 (this environment) has both."""
    import types

    import triton.language as tl

    _utils._triton_has_pdl.cache_clear()
    assert _utils._triton_has_pdl()
    monkeypatch.setattr(tl.extra, "cuda", types.SimpleNamespace(libdevice=None))
    _utils._triton_has_pdl.cache_clear()
    assert not _utils._triton_has_pdl()
    monkeypatch.undo()
    _utils._triton_has_pdl.cache_clear()
