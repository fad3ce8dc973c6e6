"""Type stubs for dlinfer.ops, generated from dlinfer.spec by `python -m dlinfer.docs --stub`."""
# ruff: noqa: E501

import torch

__all__ = [
    'add_rms_norm',
    'add_rms_norm_w8a8',
    'apply_rotary_pos_emb',
    'apply_rotary_pos_emb_inplace',
    'dynamic_quant',
    'fill_kv_cache',
    'fused_moe',
    'linear',
    'linear_w8a8',
    'moe_gating_topk_softmax',
    'paged_decode_attention',
    'paged_prefill_attention',
    'prefill_attention',
    'rms_norm',
    'rms_norm_w8a8',
    'silu_and_mul',
    'weight_quant_matmul',
    'weight_quant_prepare',
]


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    eps: float = ...,
) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) * weight, computed in fp32, returned in x.dtype.

    Args:
        x: tensor [..., H] float16/bfloat16/float32
        weight: tensor [H] same:x
        eps: float variance epsilon

    Returns:
        out: [..., H] same:x
    """
    ...

def add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    *,
    eps: float = ...,
) -> tuple[torch.Tensor, torch.Tensor]:
    """added = x + residual (rounded to x.dtype); normed = rms_norm(added).

    Args:
        x: tensor [..., H] float16/bfloat16/float32
        residual: tensor [..., H] same:x
        weight: tensor [H] same:x
        eps: float variance epsilon

    Returns:
        normed: [..., H] same:x
        added: [..., H] same:x
    """
    ...

def apply_rotary_pos_emb(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    interleaved: bool = ...,
) -> tuple[torch.Tensor, torch.Tensor]:
    """out = x*cos + rot(x)*sin on the first R (even, <= D) dims; dims >= R pass through. rot is rotate-half (NeoX) or pairwise (GPT-J, interleaved=True).

    Args:
        q: tensor [T, Hq, D] float16/bfloat16/float32
        k: tensor [T, Hkv, D] same:q
        cos: tensor [T, R] float16/bfloat16/float32
        sin: tensor [T, R] same:cos
        interleaved: bool GPT-J pairwise rotation instead of NeoX rotate-half

    Returns:
        q_out: [T, Hq, D] same:q
        k_out: [T, Hkv, D] same:k
    """
    ...

def apply_rotary_pos_emb_inplace(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    interleaved: bool = ...,
) -> None:
    """apply_rotary_pos_emb written into q and k (dims >= R untouched); nothing is returned. q and k may be strided views that do not overlap, e.g. column slices of a fused [T, (Hq+2*Hkv)*D] qkv buffer (token stride > heads*D), with unit stride in the last dim; only their elements may be written. A backend whose kernel needs dense rows rotates a contiguous copy and writes it back; one that cannot serve a last-dim stride != 1 raises ValueError naming the op, the argument, the expected and the actual strides.

    Args:
        q: tensor [T, Hq, D] float16/bfloat16/float32 (mutated)
        k: tensor [T, Hkv, D] same:q (mutated)
        cos: tensor [T, R] float16/bfloat16/float32
        sin: tensor [T, R] same:cos
        interleaved: bool GPT-J pairwise rotation instead of NeoX rotate-half
    """
    ...

def silu_and_mul(
    x: torch.Tensor,
) -> torch.Tensor:
    """silu(x[..., :I]) * x[..., I:].

    Args:
        x: tensor [..., 2I] float16/bfloat16/float32

    Returns:
        out: [..., I] same:x
    """
    ...

def fill_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    kv_layout: str | None = ...,
) -> None:
    """Writes token t of key/value to slot slot_mapping[t] (block * BS + offset); -1 slots are skipped.

    Args:
        key: tensor [T, Hkv, D] float16/bfloat16/float32
        value: tensor [T, Hkv, Dv] same:key
        key_cache: tensor kv_cache_k same:key (mutated)
        value_cache: tensor kv_cache_v same:key (mutated)
        slot_mapping: tensor [T] int32/int64
        kv_layout: str (optional) "NHD" or "HND"; None means the active backend's layout
    """
    ...

def prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    *,
    max_seqlen_q: int,
    causal: bool = ...,
    scale: float | None = ...,
    window: int | None = ...,
    softcap: float | None = ...,
    alibi_slopes: torch.Tensor | None = ...,
    cu_seqlens_q_cpu: torch.Tensor | None = ...,
    plan: object | None = ...,
) -> torch.Tensor:
    """Varlen attention over the given k/v only (no cache): prefill without history and vision towers (causal=False). Scores are scale * q.k, then softcap, then ALiBi, then the mask; softmax in fp32. Causal alignment is bottom-right.

    Args:
        q: tensor [T, Hq, D] float16/bfloat16/float32
        k: tensor [T, Hkv, D] same:q
        v: tensor [T, Hkv, Dv] same:q
        cu_seqlens_q: tensor [B+1] int32
        max_seqlen_q: int
        causal: bool
        scale: float (optional) softmax scale; None means 1/sqrt(D)
        window: int (optional) left window size (> 0): key j is visible to query position p iff p - window < j (and j <= p when causal)
        softcap: float (optional) scores become softcap * tanh(scores / softcap), > 0
        alibi_slopes: tensor (optional) [Hq] float32 per-head ALiBi slopes; adds slope * (j - p) to the scores
        cu_seqlens_q_cpu: tensor (optional) [B+1] int32 host mirror of cu_seqlens_q, for backends that declare host_seqlens
        plan: plan (optional) the step's plan from the active backend's Backend.prepare_metadata (built once per step); None: the op derives what it needs from the other arguments. Same result either way

    Returns:
        out: [T, Hq, Dv] same:q
    """
    ...

def paged_prefill_attention(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seqlens_kv: torch.Tensor,
    *,
    max_seqlen_q: int,
    max_seqlen_kv: int,
    causal: bool = ...,
    scale: float | None = ...,
    window: int | None = ...,
    softcap: float | None = ...,
    alibi_slopes: torch.Tensor | None = ...,
    kv_layout: str | None = ...,
    cu_seqlens_q_cpu: torch.Tensor | None = ...,
    seqlens_kv_cpu: torch.Tensor | None = ...,
    plan: object | None = ...,
) -> torch.Tensor:
    """New tokens are already in the cache; query i of sequence b sits at position seqlens_kv[b] - q_len[b] + i. Scores are scale * q.k, then softcap, then ALiBi, then the mask; softmax in fp32. Causal alignment is bottom-right.

    Args:
        q: tensor [T, Hq, D] float16/bfloat16/float32
        key_cache: tensor kv_cache_k same:q
        value_cache: tensor kv_cache_v same:q
        block_table: tensor [B, MB] int32
        cu_seqlens_q: tensor [B+1] int32
        seqlens_kv: tensor [B] int32
        max_seqlen_q: int
        max_seqlen_kv: int
        causal: bool
        scale: float (optional) softmax scale; None means 1/sqrt(D)
        window: int (optional) left window size (> 0): key j is visible to query position p iff p - window < j (and j <= p when causal)
        softcap: float (optional) scores become softcap * tanh(scores / softcap), > 0
        alibi_slopes: tensor (optional) [Hq] float32 per-head ALiBi slopes; adds slope * (j - p) to the scores
        kv_layout: str (optional) "NHD" or "HND"; None means the active backend's layout
        cu_seqlens_q_cpu: tensor (optional) [B+1] int32
        seqlens_kv_cpu: tensor (optional) [B] int32
        plan: plan (optional) the step's plan from the active backend's Backend.prepare_metadata (built once per step); None: the op derives what it needs from the other arguments. Same result either way

    Returns:
        out: [T, Hq, Dv] same:q
    """
    ...

def paged_decode_attention(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    seqlens_kv: torch.Tensor,
    *,
    max_seqlen_kv: int,
    scale: float | None = ...,
    window: int | None = ...,
    softcap: float | None = ...,
    alibi_slopes: torch.Tensor | None = ...,
    kv_layout: str | None = ...,
    seqlens_kv_cpu: torch.Tensor | None = ...,
    plan: object | None = ...,
) -> torch.Tensor:
    """One new token per sequence attending to its whole cached context. Scores are scale * q.k, then softcap, then ALiBi, then the mask; softmax in fp32. Causal alignment is bottom-right.

    Args:
        q: tensor [B, Hq, D] float16/bfloat16/float32
        key_cache: tensor kv_cache_k same:q
        value_cache: tensor kv_cache_v same:q
        block_table: tensor [B, MB] int32
        seqlens_kv: tensor [B] int32
        max_seqlen_kv: int
        scale: float (optional) softmax scale; None means 1/sqrt(D)
        window: int (optional) left window size (> 0): key j is visible to query position p iff p - window < j (and j <= p when causal)
        softcap: float (optional) scores become softcap * tanh(scores / softcap), > 0
        alibi_slopes: tensor (optional) [Hq] float32 per-head ALiBi slopes; adds slope * (j - p) to the scores
        kv_layout: str (optional) "NHD" or "HND"; None means the active backend's layout
        seqlens_kv_cpu: tensor (optional) [B] int32
        plan: plan (optional) the step's plan from the active backend's Backend.prepare_metadata (built once per step); None: the op derives what it needs from the other arguments. Same result either way

    Returns:
        out: [B, Hq, Dv] same:q
    """
    ...

def moe_gating_topk_softmax(
    logits: torch.Tensor,
    *,
    topk: int,
    renormalize: bool = ...,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(logits) in fp32, then the top-k weights and expert ids; renormalize divides by their sum.

    Args:
        logits: tensor [T, E] float16/bfloat16/float32
        topk: int
        renormalize: bool

    Returns:
        weights: [T, topk] float32
        ids: [T, topk] int32
    """
    ...

def fused_moe(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    """sum_j w[t,j] * down_e(silu(gate_e x) * up_e x), e = ids[t,j]; gate_up[e] = [gate; up].

    Args:
        x: tensor [T, H] float16/bfloat16/float32
        gate_up: tensor [E, 2I, H] same:x
        down: tensor [E, H, I] same:x
        topk_weights: tensor [T, k] float16/bfloat16/float32
        topk_ids: tensor [T, k] int32/int64

    Returns:
        out: [T, H] same:x
    """
    ...

def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = ...,
) -> torch.Tensor:
    """x @ weight.T + bias.

    Args:
        x: tensor [..., IN] float16/bfloat16/float32
        weight: tensor [OUT, IN] same:x
        bias: tensor (optional) [OUT] same:x

    Returns:
        out: [..., OUT] same:x
    """
    ...

def dynamic_quant(
    x: torch.Tensor,
    *,
    dtype: torch.dtype = ...,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-token quantisation: scale = max|x| / 127, x_q = round(x / scale).

    Args:
        x: tensor [..., H] float16/bfloat16/float32
        dtype: dtype

    Returns:
        x_q: [..., H] param:dtype
        scale: [...] float32
    """
    ...

def linear_w8a8(
    x_q: torch.Tensor,
    w_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = ...,
    *,
    out_dtype: torch.dtype = ...,
) -> torch.Tensor:
    """(x_q @ w_q.T) * x_scale[..., None] * w_scale (+ bias), accumulated in int32/fp32.

    Args:
        x_q: tensor [..., IN] int8
        w_q: tensor [OUT, IN] int8
        x_scale: tensor [...] float32
        w_scale: tensor [OUT] float32
        bias: tensor (optional) [OUT] float16/bfloat16/float32
        out_dtype: dtype

    Returns:
        out: [..., OUT] param:out_dtype
    """
    ...

def rms_norm_w8a8(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    eps: float = ...,
) -> tuple[torch.Tensor, torch.Tensor]:
    """dynamic_quant(rms_norm(x)).

    Args:
        x: tensor [..., H] float16/bfloat16/float32
        weight: tensor [H] same:x
        eps: float variance epsilon

    Returns:
        x_q: [..., H] int8
        scale: [...] float32
    """
    ...

def add_rms_norm_w8a8(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    *,
    eps: float = ...,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """added = x + residual; (x_q, scale) = dynamic_quant(rms_norm(added)).

    Args:
        x: tensor [..., H] float16/bfloat16/float32
        residual: tensor [..., H] same:x
        weight: tensor [H] same:x
        eps: float variance epsilon

    Returns:
        x_q: [..., H] int8
        scale: [...] float32
        added: [..., H] same:x
    """
    ...

def weight_quant_prepare(
    qweight: torch.Tensor,
    scales: torch.Tensor,
    qzeros: torch.Tensor,
    *,
    group_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load time: converts a canonical AWQ checkpoint (qweight int32 [IN, OUT/8], scales [IN/g, OUT], qzeros int32 [IN/g, OUT/8]; nibble i of each int32 holds column 8c + AWQ_ORDER[i]) to the backend's layout.

    Args:
        qweight: tensor int32/int64
        scales: tensor float16/bfloat16/float32
        qzeros: tensor int32/int64
        group_size: int

    Returns:
        qweight: [] same:qweight
        scales: [] same:scales
        qzeros: [] same:qzeros
    """
    ...

def weight_quant_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    qzeros: torch.Tensor,
    bias: torch.Tensor | None = ...,
    *,
    group_size: int,
) -> torch.Tensor:
    """W4A16: x @ dequant(W) with W[i, o] = (q[i, o] - z[i // g, o]) * s[i // g, o]; takes the output of weight_quant_prepare of the same backend, which may repack qweight/qzeros but keeps scales as [IN/g, OUT]. dequant(W) may be rounded once to x's dtype before the product.

    Args:
        x: tensor [..., IN] float16/bfloat16/float32
        qweight: tensor
        scales: tensor [G, OUT] same:x
        qzeros: tensor
        bias: tensor (optional) [OUT] same:x
        group_size: int

    Returns:
        out: [..., OUT] same:x
    """
    ...
