"""Benchmarks of the maca backend against its peers on the same GPU, in one run.

    python -m dlinfer_maca.bench [--quick] [--out DIR] [--no-compile] [--no-lmdeploy]

Measures the device ceilings first (device-to-device copy bandwidth counting bytes read
plus written; bf16 and int8 matmul throughput), then for each op at realistic sizes its
time (median of CUDA-graph replays, so Python launch cost is excluded for every candidate
alike), achieved GB/s or TFLOP/s as a fraction of the ceiling, and the ratio against the
best available peer: torch eager, ``torch.compile``, ``F.scaled_dot_product_attention``
and LMDeploy's Triton kernels when ``lmdeploy`` is importable. A peer's output is checked
against ours (relative error) so that a mismatched comparison is visible.
"""

# The closures below are timed and called inside the loop iteration that defines them.
# ruff: noqa: B023
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

Fn = Callable[[], Any]


@dataclass
class Row:
    op: str
    shape: str
    ms: float
    metric: str  # "GB/s" or "TFLOP/s"
    value: float
    frac: float
    ceiling: str = "copy"  # "copy", "bf16" or "int8": which measured ceiling frac refers to
    peers: dict[str, float] = field(default_factory=dict)  # peer -> ms
    peer_err: dict[str, float] = field(default_factory=dict)  # peer -> rel err vs ours

    @property
    def best_peer(self) -> tuple[str, float] | None:
        if not self.peers:
            return None
        name = min(self.peers, key=self.peers.__getitem__)
        return name, self.peers[name]


def time_ms(fn: Fn, reps: int = 20) -> float:
    """Median ms of one call, timed over CUDA-graph replays (falls back to do_bench if capture fails)."""
    import triton.testing

    fn()
    torch.cuda.synchronize()
    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=reps, return_mode="median"))
    except Exception:  # noqa: BLE001 - e.g. an op that synchronises
        torch.cuda.synchronize()
        return float(triton.testing.do_bench(fn, warmup=5, rep=reps, return_mode="median"))


def rel_err(a: Any, b: Any) -> float:
    a = a[0] if isinstance(a, (tuple, list)) else a
    b = b[0] if isinstance(b, (tuple, list)) else b
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


class Bench:
    def __init__(self, compile_peers: bool, lmdeploy: bool, quick: bool, cold_l2_mb: int = 0) -> None:
        self.rows: list[Row] = []
        self.cold_l2_mb = cold_l2_mb
        self.compile_peers = compile_peers
        self.quick = quick
        self.lmd = _import_lmdeploy() if lmdeploy else None
        self.dev = torch.device("cuda")
        self.copy_gbs, self.bf16_tflops, self.int8_tops = _ceilings(self.dev)

    def ceiling(self, kind: str) -> float:
        return {"copy": self.copy_gbs, "bf16": self.bf16_tflops, "int8": self.int8_tops}[kind]

    def remeasure_ceilings(self) -> None:
        """Measure the ceilings again at the end (clocks warm) and keep the higher of the two readings."""
        c, b, i = _ceilings(self.dev)
        self.copy_gbs, self.bf16_tflops = max(c, self.copy_gbs), max(b, self.bf16_tflops)
        self.int8_tops = max(i, self.int8_tops) if not math.isnan(i) else self.int8_tops
        for r in self.rows:
            r.frac = r.value / self.ceiling(r.ceiling)

    def compiled(self, fn: Callable[..., Any]) -> Callable[..., Any] | None:
        if not self.compile_peers:
            return None
        try:
            return torch.compile(fn, dynamic=False)
        except Exception:  # noqa: BLE001
            return None

    def add(self, op: str, shape: str, ours: Fn, *, nbytes: float = 0.0, flops: float = 0.0,
            peers: dict[str, Fn | None] | None = None, tops_ceiling: float | None = None) -> Row:
        ms = time_ms(ours)
        ref_out = ours()
        if flops:
            value = flops / ms / 1e9
            kind = "int8" if tops_ceiling else "bf16"
            row = Row(op, shape, ms, "TFLOP/s", value, value / self.ceiling(kind), kind)
        else:
            value = nbytes / ms / 1e6
            row = Row(op, shape, ms, "GB/s", value, value / self.copy_gbs)
        for name, fn in (peers or {}).items():
            if fn is None:
                continue
            try:
                row.peers[name] = time_ms(fn)
                out = fn()
                if out is not None and ref_out is not None:
                    row.peer_err[name] = rel_err(out, ref_out)
            except Exception as exc:  # noqa: BLE001 - a peer that fails is reported, not fatal
                print(f"  peer {name} failed on {op} {shape}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        self.rows.append(row)
        bp = row.best_peer
        vs = f"  best peer {bp[0]} {bp[1]:.4f} ms -> x{bp[1] / ms:.2f}" if bp else ""
        print(f"{op:24} {shape:38} {ms:9.4f} ms {value:9.1f} {row.metric} ({row.frac:5.1%}){vs}", flush=True)
        return row


def _import_lmdeploy() -> Any:
    try:
        import lmdeploy.pytorch.kernels.cuda as k  # noqa: F401
        from lmdeploy.pytorch.kernels.cuda import activation

        k.silu_and_mul = activation.silu_and_mul
        return k
    except Exception as exc:  # noqa: BLE001
        print(f"lmdeploy kernels not importable ({type(exc).__name__}: {str(exc)[:200]}); LMDeploy peers skipped")
        return None


def _ceilings(dev: torch.device) -> tuple[float, float, float]:
    warm = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    t_end = time.time() + 2.0
    while time.time() < t_end:  # bring the clocks up before the first reading
        for _ in range(20):
            warm @ warm
        torch.cuda.synchronize()
    n = 1 << 30  # 1 GiB
    src = torch.randn(n // 4, device=dev)
    dst = torch.empty_like(src)
    ms_torch = time_ms(lambda: dst.copy_(src))
    ms_triton = time_ms(lambda: _triton_copy(src, dst))
    assert torch.equal(src, dst)
    copy_gbs = 2 * n / min(ms_torch, ms_triton) / 1e6
    print(f"copy 1 GiB: torch copy_ {2 * n / ms_torch / 1e6:.0f} GB/s, plain Triton copy "
          f"{2 * n / ms_triton / 1e6:.0f} GB/s (the faster is the ceiling)", flush=True)
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    ms = time_ms(lambda: a @ b)
    bf16 = 2 * 8192**3 / ms / 1e9
    ai = torch.randint(-127, 128, (8192, 8192), device=dev, dtype=torch.int8)
    bi = torch.randint(-127, 128, (8192, 8192), device=dev, dtype=torch.int8).t()
    try:
        ms = time_ms(lambda: torch._int_mm(ai, bi))
        int8 = 2 * 8192**3 / ms / 1e9
    except Exception:  # noqa: BLE001
        int8 = float("nan")
    torch.cuda.empty_cache()
    print(f"ceilings (this reading): D2D copy {copy_gbs:.0f} GB/s (read+write), bf16 matmul {bf16:.0f} TFLOP/s, "
          f"int8 matmul {int8:.0f} TOP/s", flush=True)
    return copy_gbs, bf16, int8


def _triton_copy(src: torch.Tensor, dst: torch.Tensor) -> None:
    import triton

    n = src.numel()
    _copy_kernel[(triton.cdiv(n, 8192),)](src, dst, n, BLOCK=8192, num_warps=8)


def _make_copy_kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(src, dst, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        tl.store(dst + offs, tl.load(src + offs, mask=offs < n), mask=offs < n)

    return kernel


_copy_kernel = _make_copy_kernel() if torch.cuda.is_available() else None


def explore_decode_splits(bm: Bench) -> None:
    """Side table: decode time against a forced split count (checks the split heuristic)."""
    from dlinfer_maca.kernels._utils import num_sms
    from dlinfer_maca.kernels.attention import decode_num_splits, paged_decode_fwd

    for B, ctx in ((1, 1024), (1, 8192), (8, 8192), (32, 1024)):
        p = _paged(bm, B, ctx, 8, 128, 64, torch.bfloat16)
        q = torch.randn(B, 32, 128, device=bm.dev, dtype=torch.bfloat16)
        picked = decode_num_splits(B, 8, ctx, 64, num_sms(bm.dev))
        cells = []
        for sp in (1, 4, 8, 16, 32, 64):
            if sp > math.ceil(ctx / 64):
                continue
            ms = time_ms(lambda: paged_decode_fwd(q, p["key_cache"], p["value_cache"], p["block_table"],
                                                  p["seqlens_kv"], ctx, "NHD", num_splits=sp))
            cells.append(f"{sp}:{ms * 1000:.1f}us")
        print(f"decode splits B{B} ctx{ctx} (heuristic picks {picked}): " + " ".join(cells), flush=True)


# ---------------------------------------------------------------------------------------------------
def bench_norms(bm: Bench, ops: Any) -> None:
    dt = torch.bfloat16
    eps = 1e-6

    def eager_rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)

    def eager_add_rms(x: torch.Tensor, r: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = (x.float() + r.float()).to(x.dtype)
        return eager_rms(s, w), s

    def eager_quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xf = x.float()
        s = xf.abs().amax(-1) / 127
        return torch.round(xf / s.clamp_min(1e-12)[..., None]).clamp(-127, 127).to(torch.int8), s

    c_rms, c_add, c_q = bm.compiled(eager_rms), bm.compiled(eager_add_rms), bm.compiled(eager_quant)
    for T, H in ((256, 4096), (4096, 8192), (16384, 8192)):
        x = torch.randn(T, H, device=bm.dev, dtype=dt)
        r = torch.randn(T, H, device=bm.dev, dtype=dt)
        w = torch.randn(H, device=bm.dev, dtype=dt)
        e = x.element_size()
        bm.add("rms_norm", f"T{T} H{H} bf16", lambda: ops.rms_norm(x, w, eps=eps), nbytes=2 * T * H * e,
               peers={"eager": lambda: eager_rms(x, w), "F.rms_norm": lambda: F.rms_norm(x, (H,), w, eps),
                      "compile": (lambda: c_rms(x, w)) if c_rms else None,
                      "lmdeploy": (lambda: bm.lmd.rms_norm(x, w, eps)) if bm.lmd else None})
        bm.add("add_rms_norm", f"T{T} H{H} bf16", lambda: ops.add_rms_norm(x, r, w, eps=eps), nbytes=4 * T * H * e,
               peers={"eager": lambda: eager_add_rms(x, r, w),
                      "compile": (lambda: c_add(x, r, w)) if c_add else None,
                      "lmdeploy": (lambda: bm.lmd.rms_norm(x, w, eps, residual=r.clone())) if bm.lmd else None})
        bm.add("dynamic_quant", f"T{T} H{H} bf16", lambda: ops.dynamic_quant(x), nbytes=T * H * (e + 1) + 4 * T,
               peers={"eager": lambda: eager_quant(x), "compile": (lambda: c_q(x)) if c_q else None,
                      "lmdeploy": (lambda: bm.lmd.per_token_quant_int8(x, 1e-7)) if bm.lmd else None})
        bm.add("rms_norm_w8a8", f"T{T} H{H} bf16", lambda: ops.rms_norm_w8a8(x, w, eps=eps),
               nbytes=T * H * (e + 1) + 4 * T,
               peers={"eager": lambda: eager_quant(eager_rms(x, w)),
                      "lmdeploy": (lambda: bm.lmd.rms_norm_dynamic_quant(x, w, eps)) if bm.lmd else None})


def bench_elementwise(bm: Bench, ops: Any) -> None:
    dt = torch.bfloat16

    def eager_silu(x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, -1)
        return F.silu(a) * b

    c_silu = bm.compiled(eager_silu)
    for T, inter in ((32, 14336), (512, 14336), (4096, 14336)):
        x = torch.randn(T, 2 * inter, device=bm.dev, dtype=dt)
        bm.add("silu_and_mul", f"T{T} I{inter} bf16", lambda: ops.silu_and_mul(x), nbytes=3 * T * inter * 2,
               peers={"eager": lambda: eager_silu(x), "compile": (lambda: c_silu(x)) if c_silu else None,
                      "lmdeploy": (lambda: bm.lmd.silu_and_mul(x)) if bm.lmd else None})

    def eager_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> Any:
        def one(t: torch.Tensor) -> torch.Tensor:
            h = t.shape[-1] // 2
            rot = torch.cat((-t[..., h:], t[..., :h]), -1)
            return (t.float() * cos[:, None].float() + rot.float() * sin[:, None].float()).to(t.dtype)

        return one(q), one(k)

    c_rope = bm.compiled(eager_rope)
    for T in (1, 32, 4096, 16384):
        Hq, Hkv, D = 32, 8, 128
        q = torch.randn(T, Hq, D, device=bm.dev, dtype=dt)
        k = torch.randn(T, Hkv, D, device=bm.dev, dtype=dt)
        ang = torch.rand(T, D // 2, device=bm.dev) * 100
        cos, sin = torch.cat((ang, ang), -1).cos().to(dt), torch.cat((ang, ang), -1).sin().to(dt)
        nbytes = 2 * T * (Hq + Hkv) * D * 2 + 2 * T * D * 2
        bm.add("apply_rotary_pos_emb", f"T{T} h32/8 d128 bf16", lambda: ops.apply_rotary_pos_emb(q, k, cos, sin),
               nbytes=nbytes,
               peers={"eager": lambda: eager_rope(q, k, cos, sin),
                      "compile": (lambda: c_rope(q, k, cos, sin)) if c_rope else None,
                      "lmdeploy": (lambda: bm.lmd.apply_rotary_pos_emb(q, k, cos, sin)) if bm.lmd else None})

    def copy_back_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
        """The adaptor's pattern before the in-place op: out-of-place rotary, then two write-back copies."""
        q_out, k_out = ops.apply_rotary_pos_emb(q, k, cos, sin)
        q.copy_(q_out)
        k.copy_(k_out)

    for T in (1, 32, 4096, 16384):  # LMDeploy's layout: q and k are column slices of one fused qkv output
        Hq, Hkv, D = 32, 8, 128
        qkv = torch.randn(T, Hq + 2 * Hkv, D, device=bm.dev, dtype=dt)
        q, k = qkv[:, :Hq], qkv[:, Hq : Hq + Hkv]
        ang = torch.rand(T, D // 2, device=bm.dev) * 100
        cos, sin = torch.cat((ang, ang), -1).cos().to(dt), torch.cat((ang, ang), -1).sin().to(dt)
        nbytes = 2 * T * (Hq + Hkv) * D * 2 + 2 * T * D * 2
        bm.add("apply_rotary_pos_emb_inplace", f"T{T} h32/8 d128 bf16 qkv slices",
               lambda: ops.apply_rotary_pos_emb_inplace(q, k, cos, sin), nbytes=nbytes,
               peers={"copy-back": lambda: copy_back_rope(q, k, cos, sin),
                      "lmdeploy": (lambda: bm.lmd.apply_rotary_pos_emb(q, k, cos, sin, q_embed=q, k_embed=k)
                                   and None) if bm.lmd else None})

    for T, bs in ((32, 64), (4096, 64), (16384, 16)):
        Hkv, D = 8, 128
        nb = T // bs + 8
        kc = torch.randn(nb, bs, Hkv, D, device=bm.dev, dtype=dt)
        vc = torch.randn(nb, bs, Hkv, D, device=bm.dev, dtype=dt)
        key = torch.randn(T, Hkv, D, device=bm.dev, dtype=dt)
        val = torch.randn(T, Hkv, D, device=bm.dev, dtype=dt)
        slots = torch.randperm(nb * bs, device=bm.dev)[:T]
        kf, vf = kc.view(-1, Hkv, D), vc.view(-1, Hkv, D)

        def eager_fill() -> None:
            kf.index_copy_(0, slots, key)
            vf.index_copy_(0, slots, val)

        bm.add("fill_kv_cache", f"T{T} hkv8 d128 bs{bs} bf16",
               lambda: ops.fill_kv_cache(key, val, kc, vc, slots, kv_layout="NHD"),
               nbytes=2 * 2 * T * Hkv * D * 2 + 8 * T, peers={"eager index_copy_": eager_fill})


def _paged(bm: Bench, B: int, ctx: int, hkv: int, d: int, bs: int, dt: torch.dtype) -> dict[str, torch.Tensor]:
    nblk = math.ceil(ctx / bs)
    total = B * nblk
    perm = torch.randperm(total, device=bm.dev).to(torch.int32)
    return {
        "key_cache": torch.randn(total, bs, hkv, d, device=bm.dev, dtype=dt),
        "value_cache": torch.randn(total, bs, hkv, d, device=bm.dev, dtype=dt),
        "block_table": perm.view(B, nblk).contiguous(),
        "seqlens_kv": torch.full((B,), ctx, dtype=torch.int32, device=bm.dev),
    }


def _dense_kv(p: dict[str, torch.Tensor], B: int, ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The paged cache gathered into dense [B, Hkv, ctx, D] (for SDPA peers; built outside timing)."""
    bt = p["block_table"].long()
    k = p["key_cache"][bt].flatten(1, 2)[:, :ctx].transpose(1, 2).contiguous()
    v = p["value_cache"][bt].flatten(1, 2)[:, :ctx].transpose(1, 2).contiguous()
    return k, v


class _Rotation:
    """Identical copies of a paged cache handed out in turn (``--cold-l2 MB``): the copies span MB more than one,
    so that the calls a CUDA graph replays back to back read their KV from DRAM, as a model's layers do once their
    caches outgrow the L2. One copy (MB 0): the plain warm-L2 timing."""

    def __init__(self, p: dict[str, torch.Tensor], cold_l2_mb: int) -> None:
        nbytes = p["key_cache"].nbytes + p["value_cache"].nbytes
        count = 1 if cold_l2_mb <= 0 else 1 + math.ceil(cold_l2_mb * 2**20 / nbytes)
        self.copies = [p] + [{k: v.clone() for k, v in p.items()} for _ in range(count - 1)]
        self.i = 0

    def __call__(self) -> dict[str, torch.Tensor]:
        self.i = (self.i + 1) % len(self.copies)
        return self.copies[self.i]


def bench_decode(bm: Bench, ops: Any) -> None:
    dt = torch.bfloat16
    hq, hkv, d, bs = 32, 8, 128, 64
    sizes = [(1, 1024), (1, 8192), (32, 1024), (32, 8192), (128, 2048), (256, 1024)]
    if bm.quick:
        sizes = sizes[:4]
    cold = f" cold-L2 {bm.cold_l2_mb}MB" if bm.cold_l2_mb > 0 else ""
    for B, ctx in sizes:
        p = _paged(bm, B, ctx, hkv, d, bs, dt)
        q = torch.randn(B, hq, d, device=bm.dev, dtype=dt)
        nbytes = 2 * B * ctx * hkv * d * 2 + 2 * B * hq * d * 2
        peers: dict[str, Fn | None] = {}
        if not cold:  # the dense peer reads one warm copy: it is left out of the cold-L2 rows
            kd, vd = _dense_kv(p, B, ctx)
            qd = q[:, :, None]
            peers["sdpa(dense,gqa)"] = lambda: F.scaled_dot_product_attention(qd, kd, vd, enable_gqa=True).squeeze(2)
        nxt = _Rotation(p, bm.cold_l2_mb)
        if bm.lmd:
            def lmd_decode() -> torch.Tensor:
                c = nxt()
                return bm.lmd.flash_attn_with_kvcache(q, c["key_cache"], c["value_cache"], c["seqlens_kv"],
                                                      c["block_table"], max_seqlen_q=1)
            peers["lmdeploy"] = lmd_decode

        def ours() -> torch.Tensor:
            c = nxt()
            return ops.paged_decode_attention(q, c["key_cache"], c["value_cache"], c["block_table"], c["seqlens_kv"],
                                              max_seqlen_kv=ctx)
        bm.add("paged_decode_attention", f"B{B} ctx{ctx} h32/8 d128 bs64 bf16{cold}", ours, nbytes=nbytes,
               peers=peers)
    torch.cuda.empty_cache()


def bench_prefill(bm: Bench, ops: Any) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dt = torch.bfloat16
    geos = [(4, 2048, 32, 32, 128), (4, 2048, 32, 8, 128), (1, 8192, 32, 8, 128), (8, 1024, 16, 16, 64)]
    if bm.quick:
        geos = geos[:2]
    for B, L, hq, hkv, d in geos:
        T = B * L
        q = torch.randn(T, hq, d, device=bm.dev, dtype=dt)
        k = torch.randn(T, hkv, d, device=bm.dev, dtype=dt)
        v = torch.randn(T, hkv, d, device=bm.dev, dtype=dt)
        cu = torch.arange(0, T + 1, L, dtype=torch.int32, device=bm.dev)
        flops = 4 * B * hq * L * L * d / 2  # causal
        qd = q.view(B, L, hq, d).transpose(1, 2)
        kd = k.view(B, L, hkv, d).transpose(1, 2).repeat_interleave(hq // hkv, 1)
        vd = v.view(B, L, hkv, d).transpose(1, 2).repeat_interleave(hq // hkv, 1)

        def sdpa_flash() -> torch.Tensor:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(qd, kd, vd, is_causal=True).transpose(1, 2).reshape(T, hq, d)

        peers: dict[str, Fn | None] = {"sdpa-flash": sdpa_flash}
        if bm.lmd:
            peers["lmdeploy"] = lambda: bm.lmd.flash_attn_varlen_func(
                q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=L, max_seqlen_k=L, causal=True,
                kv_layout="shd")
        shape = f"B{B} L{L} h{hq}/{hkv} d{d} causal bf16"
        bm.add("prefill_attention", shape,
               lambda: ops.prefill_attention(q, k, v, cu, max_seqlen_q=L, causal=True), flops=flops, peers=peers)
        # same tokens through the paged cache (no history): the extra cost is the block-table gather
        bs = 64
        p = _paged(bm, B, L, hkv, d, bs, dt)
        ops.fill_kv_cache(k, v, p["key_cache"], p["value_cache"],
                          (p["block_table"].long()[:, :, None] * bs + torch.arange(bs, device=bm.dev)).view(B, -1)[
                              :, :L].reshape(-1), kv_layout="NHD")
        bm.add("paged_prefill_attention", shape + " bs64",
               lambda: ops.paged_prefill_attention(q, p["key_cache"], p["value_cache"], p["block_table"], cu,
                                                   p["seqlens_kv"], max_seqlen_q=L, max_seqlen_kv=L),
               flops=flops, peers={"sdpa-flash": sdpa_flash})
    torch.cuda.empty_cache()


def bench_moe(bm: Bench, ops: Any) -> None:
    dt = torch.bfloat16

    def eager_moe(x: torch.Tensor, gu: torch.Tensor, dn: torch.Tensor, w: torch.Tensor, ids: torch.Tensor) -> Any:
        out = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
        flat = ids.view(-1)
        for e in flat.unique().tolist():
            rows = (flat == e).nonzero().squeeze(1)
            tok = rows // ids.shape[1]
            h = x[tok] @ gu[e].t()
            a = F.silu(h[:, : h.shape[1] // 2]) * h[:, h.shape[1] // 2:]
            out.index_add_(0, tok, (a @ dn[e].t()).float() * w.view(-1)[rows, None])
        return out.to(x.dtype)

    for name, E, k, H, inter in (("Qwen2-57B-A14B", 64, 8, 3584, 2560), ("Mixtral-8x7B", 8, 2, 4096, 14336)):
        gu = torch.randn(E, 2 * inter, H, device=bm.dev, dtype=dt) * H**-0.5
        dn = torch.randn(E, H, inter, device=bm.dev, dtype=dt) * inter**-0.5
        for T in (1, 32, 512) if not bm.quick else (1, 512):
            x = torch.randn(T, H, device=bm.dev, dtype=dt)
            logits = torch.randn(T, E, device=bm.dev)
            w, ids = ops.moe_gating_topk_softmax(logits, topk=k, renormalize=True)
            touched = int(ids.unique().numel())
            flops = 6 * T * k * H * inter
            nbytes = touched * 3 * H * inter * 2
            peers: dict[str, Fn | None] = {}
            if T <= 32:
                peers["eager(loop, syncs)"] = lambda: eager_moe(x, gu, dn, w, ids)
            if bm.lmd:
                peers["lmdeploy"] = lambda: bm.lmd.fused_moe(x, gu, dn, w, ids, topk=k)
            fn = lambda: ops.fused_moe(x, gu, dn, w, ids)  # noqa: E731
            row = bm.add("fused_moe", f"{name} T{T} E{E} top{k}", fn, flops=flops, peers=peers)
            ms = row.ms
            print(f"{'':24} {'':38} weights touched {touched}/{E}: {nbytes / ms / 1e6:9.1f} GB/s "
                  f"({nbytes / ms / 1e6 / bm.copy_gbs:5.1%} of copy)", flush=True)
    torch.cuda.empty_cache()

    def eager_gate(lg: torch.Tensor, k: int) -> Any:
        w, i = torch.softmax(lg.float(), -1).topk(k, -1)
        return w / w.sum(-1, keepdim=True), i.to(torch.int32)

    c_gate = bm.compiled(eager_gate)
    for T, E, k in ((32, 64, 8), (4096, 64, 8), (4096, 8, 2)):
        lg = torch.randn(T, E, device=bm.dev, dtype=dt)
        bm.add("moe_gating_topk_softmax", f"T{T} E{E} top{k}",
               lambda: ops.moe_gating_topk_softmax(lg, topk=k, renormalize=True), nbytes=T * E * 2 + T * k * 8,
               peers={"eager": lambda: eager_gate(lg, k), "compile": (lambda: c_gate(lg, k)) if c_gate else None})


def bench_quant_gemm(bm: Bench, ops: Any) -> None:
    """W8A8 and W4A16 (AWQ, fp16: LMDeploy's AWQ kernel is fp16-only) at decode and prefill sizes. Our output is
    checked against an fp64 oracle (a miss is printed as CHECK FAILED); peers against ours (peer_err)."""
    dt = torch.float16

    def check(op: str, shape: str, out: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
        err = rel_err(out, ref)
        if not err <= tol:
            print(f"  CHECK FAILED {op} {shape}: rel err {err:.2e} against the fp64 oracle (tolerance {tol:.0e})",
                  flush=True)

    awq_linear = None
    if bm.lmd:
        try:
            from lmdeploy.pytorch.kernels.cuda.awq_kernels import awq_linear
        except Exception as exc:  # noqa: BLE001
            print(f"  LMDeploy awq_linear not importable: {type(exc).__name__}: {exc}")

    for M, K, N in ((1, 4096, 14336), (16, 4096, 14336), (256, 4096, 14336), (4096, 4096, 14336)):
        xq = torch.randint(-127, 128, (M, K), device=bm.dev, dtype=torch.int8)
        wq = torch.randint(-127, 128, (N, K), device=bm.dev, dtype=torch.int8)
        xs = torch.rand(M, device=bm.dev) / 100 + 1e-3
        ws = torch.rand(N, device=bm.dev) / 100 + 1e-3
        xb = torch.randn(M, K, device=bm.dev, dtype=dt)
        wb = torch.randn(N, K, device=bm.dev, dtype=dt)
        shape = f"M{M} K{K} N{N} ->fp16"
        fn = lambda: ops.linear_w8a8(xq, wq, xs, ws, out_dtype=dt)  # noqa: E731
        check("linear_w8a8", shape, fn(), (xq.double() @ wq.double().t()) * xs.double()[:, None] * ws.double(), 2e-3)
        xp = xq if M > 16 else F.pad(xq, (0, 0, 0, 32 - M))  # torch._int_mm needs M > 16

        def int_mm() -> torch.Tensor:
            return (torch._int_mm(xp, wq.t())[:M].float() * xs[:, None] * ws).to(dt)

        peers: dict[str, Fn | None] = {
            "torch._int_mm+scale" + (" (M padded to 32)" if M <= 16 else ""): int_mm,
            "fp16 F.linear (cuBLAS)": lambda: F.linear(xb, wb)}
        if bm.lmd:
            peers["lmdeploy"] = lambda: bm.lmd.matmul_kernel_dynamic_quant(xq, wq, xs[:, None], ws[:, None],
                                                                            output_dtype=dt)
        if M <= 16:
            bm.add("linear_w8a8", shape, fn, nbytes=N * K + M * K + M * N * 2, peers=peers)
        else:
            bm.add("linear_w8a8", shape, fn, flops=2 * M * N * K, tops_ceiling=bm.int8_tops, peers=peers)
    torch.cuda.empty_cache()

    g = 128
    for M, K, N in ((1, 4096, 14336), (16, 4096, 14336), (1, 14336, 4096), (16, 14336, 4096),
                    (256, 4096, 14336), (1024, 4096, 14336)):
        q = torch.randint(0, 16, (K, N), device=bm.dev, dtype=torch.int32)
        z = torch.randint(0, 16, (K // g, N), device=bm.dev, dtype=torch.int32)
        s = (torch.rand(K // g, N, device=bm.dev) * 0.02 + 0.005).to(dt)
        qw = _awq_pack(q)
        qz = _awq_pack(z)
        pw, ps, pz = ops.weight_quant_prepare(qw, s, qz, group_size=g)
        x = torch.randn(M, K, device=bm.dev, dtype=dt)
        wdq = (q - z.repeat_interleave(g, 0)).double() * s.double().repeat_interleave(g, 0)  # [K, N]
        wdq_t = wdq.t().to(dt).contiguous()
        shape = f"W4A16 M{M} K{K} N{N} g{g} fp16"
        fn = lambda: ops.weight_quant_matmul(x, pw, ps, pz, group_size=g)  # noqa: E731
        check("weight_quant_matmul", shape, fn(), x.double() @ wdq, 2e-3)
        del wdq
        peers = {"fp16 F.linear (dequantised W, cuBLAS)": lambda: F.linear(x, wdq_t)}
        if awq_linear is not None:
            peers["lmdeploy awq_linear"] = lambda: awq_linear(x, qw, s, qz)
        if M <= 16:  # int4 weight-bandwidth floor: packed weights, scales, zeros, activations in and out
            nbytes = K * N // 2 + (K // g) * N * (2 + 0.5) + M * (K + N) * 2
            bm.add("weight_quant_matmul", shape, fn, nbytes=nbytes, peers=peers)
        else:
            bm.add("weight_quant_matmul", shape, fn, flops=2 * M * N * K, peers=peers)
    torch.cuda.empty_cache()


def _awq_pack(q: torch.Tensor) -> torch.Tensor:
    """int values [R, C] in 0..15 -> canonical AWQ int32 [R, C/8] (nibble i holds column 8c + AWQ_ORDER[i])."""
    from dlinfer.spec import AWQ_ORDER

    r, c = q.shape
    cols = q.view(r, c // 8, 8).long()
    packed = torch.zeros(r, c // 8, dtype=torch.int64, device=q.device)
    for i, col in enumerate(AWQ_ORDER):
        packed |= cols[..., col] << (4 * i)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


# ---------------------------------------------------------------------------------------------------
def markdown(bm: Bench, meta: dict[str, Any]) -> str:
    lines = [
        f"Device: {meta['device']}; torch {meta['torch']}, triton {meta['triton']}"
        + (f", lmdeploy {meta['lmdeploy']}" if meta.get("lmdeploy") else ", LMDeploy not installed"),
        "",
        "Ceilings measured in the same run (the higher of a reading before and after the ops; the copy is the "
        "faster of torch `copy_` and a plain Triton copy kernel over 1 GiB): "
        f"device-to-device copy **{bm.copy_gbs:.0f} GB/s** (read + write), "
        f"bf16 matmul 8192³ **{bm.bf16_tflops:.0f} TFLOP/s**, "
        f"int8 `torch._int_mm` 8192³ **{bm.int8_tops:.0f} TOP/s**.",
        "",
        "| op | shape | ours ms | achieved | of ceiling | best peer | peer ms | vs best peer | all peers (ms) |",
        "|---|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in bm.rows:
        bp = r.best_peer
        allp = "; ".join(f"{n} {v:.4f}" + (f" (err {r.peer_err[n]:.1e})" if n in r.peer_err else "")
                         for n, v in r.peers.items())
        lines.append(
            f"| {r.op} | {r.shape} | {r.ms:.4f} | {r.value:.1f} {r.metric} | {r.frac:.1%} | "
            f"{bp[0] if bp else '-'} | {bp[1]:.4f} | {bp[1] / r.ms:.2f}× | {allp} |" if bp else
            f"| {r.op} | {r.shape} | {r.ms:.4f} | {r.value:.1f} {r.metric} | {r.frac:.1%} | - | - | - | |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for bench.json / bench.md")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile peers")
    ap.add_argument("--no-lmdeploy", action="store_true", help="skip LMDeploy peers")
    ap.add_argument("--only", default="", help="comma-separated groups: norms,elementwise,decode,prefill,moe,quant")
    ap.add_argument("--cold-l2", type=int, default=0, metavar="MB",
                    help="decode: rotate identical copies of each paged cache spanning MB more than one, so that "
                         "replayed calls read KV from DRAM (ours and LMDeploy's alike; no dense SDPA peer)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark")
        return 1
    import triton

    from dlinfer_maca import ops

    t0 = time.time()
    bm = Bench(not args.no_compile, not args.no_lmdeploy, args.quick, args.cold_l2)
    groups = {"splits": explore_decode_splits, "norms": bench_norms, "elementwise": bench_elementwise,
              "decode": bench_decode, "prefill": bench_prefill, "moe": bench_moe, "quant": bench_quant_gemm}
    only = [g for g in args.only.split(",") if g] or list(groups)
    lmd_version = None
    if bm.lmd is not None:
        import lmdeploy

        lmd_version = getattr(lmdeploy, "__version__", "?")
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "lmdeploy": lmd_version, "argv": sys.argv}
    os.makedirs(args.out, exist_ok=True)
    md = ""
    for g in only:
        try:
            groups[g](bm) if g == "splits" else groups[g](bm, ops)
        except Exception as exc:  # noqa: BLE001 - keep the other groups' figures
            import traceback

            traceback.print_exc()
            print(f"group {g} failed: {type(exc).__name__}: {exc}", flush=True)
        meta["seconds"] = time.time() - t0
        md = markdown(bm, meta)  # written after every group, so a cut-off run keeps what it measured
        with open(os.path.join(args.out, "bench.md"), "w") as f:
            f.write(md)
        with open(os.path.join(args.out, "bench.json"), "w") as f:
            json.dump({"meta": meta, "ceilings": {"copy_GBps": bm.copy_gbs, "bf16_TFLOPs": bm.bf16_tflops,
                                                  "int8_TOPs": bm.int8_tops},
                       "rows": [asdict(r) for r in bm.rows]}, f, indent=1)
    bm.remeasure_ceilings()
    md = markdown(bm, meta)
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump({"meta": meta, "ceilings": {"copy_GBps": bm.copy_gbs, "bf16_TFLOPs": bm.bf16_tflops,
                                              "int8_TOPs": bm.int8_tops},
                   "rows": [asdict(r) for r in bm.rows]}, f, indent=1)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
