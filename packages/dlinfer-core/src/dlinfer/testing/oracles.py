"""Float64 oracles written from the op spec's text, independent of the reference backend's code.

The conformance kit compares a backend with the reference backend; for the reference itself that comparison
would prove nothing, so ``dlinfer check`` on the reference compares it with these instead. Each oracle takes the
op's arguments (same signature as the op), computes in float64 with plain loops over sequences and heads
(no shared helper with :mod:`dlinfer.reference`) and returns the op's outputs in their declared dtypes; in-place
ops write into their mutated arguments. Ops without an oracle here are listed by :func:`uncovered`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from dlinfer.spec import SPECS

F64 = torch.float64


def _d(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", F64)


def _back(t: torch.Tensor, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return t.to(device=like.device, dtype=dtype or like.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    xd = _d(x)
    return _back(xd / torch.sqrt((xd * xd).mean(-1, keepdim=True) + eps) * _d(weight), x)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, *, eps: float = 1e-6
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    added = (_d(x) + _d(residual)).to(x.dtype)  # the spec rounds the sum to x.dtype before the norm
    return rms_norm(added, weight, eps=eps), _back(added.to(F64), x)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    xd = _d(x)
    gate, up = xd.chunk(2, dim=-1)
    return _back(gate / (1.0 + torch.exp(-gate)) * up, x)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """``x`` [T, H, D] float64; the first R = cos.shape[-1] dims become x*cos + rot(x)*sin."""
    r = cos.shape[-1]
    out = x.clone()
    part = x[..., :r]
    rot = torch.empty_like(part)
    if interleaved:  # GPT-J: pairs (2i, 2i+1) -> (-x[2i+1], x[2i])
        rot[..., 0::2], rot[..., 1::2] = -part[..., 1::2], part[..., 0::2]
    else:  # NeoX rotate-half: (x1, x2) -> (-x2, x1)
        half = r // 2
        rot[..., :half], rot[..., half:] = -part[..., half:], part[..., :half]
    out[..., :r] = part * cos[:, None, :] + rot * sin[:, None, :]
    return out


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
                         interleaved: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    c, s = _d(cos), _d(sin)
    return _back(_rotate(_d(q), c, s, interleaved), q), _back(_rotate(_d(k), c, s, interleaved), k)


def apply_rotary_pos_emb_inplace(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
                                 interleaved: bool = False) -> None:
    q_out, k_out = apply_rotary_pos_emb(q, k, cos, sin, interleaved=interleaved)
    q.copy_(q_out)
    k.copy_(k_out)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    out = _d(x) @ _d(weight).T
    return _back(out + _d(bias) if bias is not None else out, x)


def moe_gating_topk_softmax(logits: torch.Tensor, *, topk: int, renormalize: bool = False
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.softmax(_d(logits), dim=-1)
    weights, ids = probs.topk(topk, dim=-1)
    if renormalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return _back(weights, logits, torch.float32), _back(ids, logits, torch.int32)


def fused_moe(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor) -> torch.Tensor:
    xd, gu, dn, w = _d(x), _d(gate_up), _d(down), _d(topk_weights)
    inter = gu.shape[1] // 2
    out = torch.zeros(xd.shape[0], dn.shape[1], dtype=F64)
    for t in range(xd.shape[0]):
        for j in range(topk_ids.shape[1]):
            e = int(topk_ids[t, j])
            gate, up = gu[e, :inter] @ xd[t], gu[e, inter:] @ xd[t]
            out[t] += w[t, j] * (dn[e] @ (gate / (1.0 + torch.exp(-gate)) * up))
    return _back(out, x)


def _slot(cache: torch.Tensor, block: int, offset: int, layout: str) -> tuple[Any, ...]:
    """Index of one token's [H, D] in a paged cache: NHD [NB, BS, H, D], HND [NB, H, BS, D]."""
    return (block, offset) if layout == "NHD" else (block, slice(None), offset)


def _layout(kv_layout: str | None) -> str:
    return kv_layout or "NHD"  # the reference backend's layout


def fill_kv_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                  slot_mapping: torch.Tensor, *, kv_layout: str | None = None) -> None:
    layout = _layout(kv_layout)
    bs = key_cache.shape[1] if layout == "NHD" else key_cache.shape[2]
    for t, slot in enumerate(slot_mapping.tolist()):
        if slot < 0:
            continue
        key_cache[_slot(key_cache, slot // bs, slot % bs, layout)] = key[t]
        value_cache[_slot(value_cache, slot // bs, slot % bs, layout)] = value[t]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: list[int], *, causal: bool,
            scale: float | None, window: int | None, softcap: float | None, alibi: torch.Tensor | None
            ) -> torch.Tensor:
    """One sequence: q [Lq, Hq, D] at ``positions``, k [Lk, Hkv, D], v [Lk, Hkv, Dv], float64 -> [Lq, Hq, Dv]."""
    hq, hkv = q.shape[1], k.shape[1]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out = torch.zeros(q.shape[0], hq, v.shape[-1], dtype=F64)
    for h in range(hq):
        kv = h // (hq // hkv)
        for i, p in enumerate(positions):
            scores = []
            for j in range(k.shape[0]):
                visible = (not causal or j <= p) and (window is None or j > p - window)
                if not visible:
                    scores.append(-math.inf)
                    continue
                s = scale * float(q[i, h] @ k[j, kv])
                if softcap is not None:
                    s = softcap * math.tanh(s / softcap)
                if alibi is not None:
                    s += float(alibi[h]) * (j - p)
                scores.append(s)
            weights = torch.softmax(torch.tensor(scores, dtype=F64), dim=0)
            out[i, h] = weights @ v[:, kv]
    return out


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor, *,
                      max_seqlen_q: int, causal: bool = True, scale: float | None = None, window: int | None = None,
                      softcap: float | None = None, alibi_slopes: torch.Tensor | None = None,
                      cu_seqlens_q_cpu: torch.Tensor | None = None) -> torch.Tensor:
    qd, kd, vd = _d(q), _d(k), _d(v)
    out = torch.zeros(q.shape[0], q.shape[1], v.shape[-1], dtype=F64)
    cu = cu_seqlens_q.tolist()
    for b in range(len(cu) - 1):
        lo, hi = cu[b], cu[b + 1]
        out[lo:hi] = _attend(qd[lo:hi], kd[lo:hi], vd[lo:hi], list(range(hi - lo)), causal=causal, scale=scale,
                             window=window, softcap=softcap, alibi=alibi_slopes)
    return _back(out, q)


def _gather(cache: torch.Tensor, blocks: list[int], n: int, layout: str) -> torch.Tensor:
    """The first ``n`` tokens of one sequence from a paged cache, [n, H, D] float64."""
    bs = cache.shape[1] if layout == "NHD" else cache.shape[2]
    return torch.stack([_d(cache[_slot(cache, blocks[j // bs], j % bs, layout)]) for j in range(n)])


def paged_prefill_attention(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                            block_table: torch.Tensor, cu_seqlens_q: torch.Tensor, seqlens_kv: torch.Tensor, *,
                            max_seqlen_q: int, max_seqlen_kv: int, causal: bool = True, scale: float | None = None,
                            window: int | None = None, softcap: float | None = None,
                            alibi_slopes: torch.Tensor | None = None, kv_layout: str | None = None,
                            cu_seqlens_q_cpu: torch.Tensor | None = None,
                            seqlens_kv_cpu: torch.Tensor | None = None) -> torch.Tensor:
    layout = _layout(kv_layout)
    qd = _d(q)
    out = torch.zeros(q.shape[0], q.shape[1], value_cache.shape[-1], dtype=F64)
    cu, kv_lens = cu_seqlens_q.tolist(), seqlens_kv.tolist()
    for b in range(len(cu) - 1):
        lo, hi, n = cu[b], cu[b + 1], kv_lens[b]
        blocks = block_table[b].tolist()
        k, v = _gather(key_cache, blocks, n, layout), _gather(value_cache, blocks, n, layout)
        positions = [n - (hi - lo) + i for i in range(hi - lo)]
        out[lo:hi] = _attend(qd[lo:hi], k, v, positions, causal=causal, scale=scale, window=window,
                             softcap=softcap, alibi=alibi_slopes)
    return _back(out, q)


def paged_decode_attention(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                           block_table: torch.Tensor, seqlens_kv: torch.Tensor, *, max_seqlen_kv: int,
                           scale: float | None = None, window: int | None = None, softcap: float | None = None,
                           alibi_slopes: torch.Tensor | None = None, kv_layout: str | None = None,
                           seqlens_kv_cpu: torch.Tensor | None = None) -> torch.Tensor:
    layout = _layout(kv_layout)
    qd = _d(q)
    out = torch.zeros(q.shape[0], q.shape[1], value_cache.shape[-1], dtype=F64)
    for b, n in enumerate(seqlens_kv.tolist()):
        blocks = block_table[b].tolist()
        k, v = _gather(key_cache, blocks, n, layout), _gather(value_cache, blocks, n, layout)
        out[b] = _attend(qd[b : b + 1], k, v, [n - 1], causal=True, scale=scale, window=window, softcap=softcap,
                         alibi=alibi_slopes)[0]
    return _back(out, q)


ORACLES: dict[str, Callable[..., Any]] = {
    f.__name__: f
    for f in (rms_norm, add_rms_norm, silu_and_mul, apply_rotary_pos_emb, apply_rotary_pos_emb_inplace, linear,
              moe_gating_topk_softmax, fused_moe, fill_kv_cache, prefill_attention, paged_prefill_attention,
              paged_decode_attention)
}
"""op name -> float64 oracle (same signature as the op)."""


def uncovered(ops: Iterable[str] | None = None) -> list[str]:
    """Ops (of ``ops``, default every op) that have no oracle here."""
    return [op for op in (ops if ops is not None else SPECS) if op not in ORACLES]


def run_against_oracles(*, ops: Iterable[str] | None = None, dtypes: Iterable[torch.dtype] | None = None,
                        size: str = "small", device: str | None = None, seed: int | None = None,
                        progress: Callable[[int, int, Any], None] | None = None) -> list[Any]:
    """The conformance kit's cases for the reference backend, compared with :data:`ORACLES` instead of itself."""
    from dlinfer.registry import REFERENCE, REGISTRY
    from dlinfer.testing.runner import plan, run_case

    wanted = [op for op in (ops if ops is not None else SPECS) if op in ORACLES]
    runs = plan(REFERENCE, ops=wanted, dtypes=dtypes, size=size)
    impl = REGISTRY.load_ops(REFERENCE)
    results = []
    for i, (case, dt, lay) in enumerate(runs):
        r = run_case(case, dt, impl, ORACLES, device=device or "cpu", layout=lay,
                     seed=None if seed is None else seed + i)
        results.append(r)
        if progress is not None:
            progress(i + 1, len(runs), r)
    return results
