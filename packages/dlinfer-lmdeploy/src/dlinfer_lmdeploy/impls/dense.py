"""Norms, activation, rotary application and linear on ``dlinfer.ops``."""

from __future__ import annotations

import torch
import torch.distributed as dist
from dlinfer import ops
from lmdeploy.pytorch.backends.activation import SiluAndMulImpl
from lmdeploy.pytorch.backends.apply_rotary_emb import ApplyRotaryEmbImpl
from lmdeploy.pytorch.backends.linear import LinearImpl
from lmdeploy.pytorch.backends.norm import RMSNormImpl


class DlinferRMSNormImpl(RMSNormImpl):
    """RMSNorm; with a residual, the fused add + norm returning ``(normed, x + residual)``."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        self.hidden_size = hidden_size
        self.eps = eps

    def forward(
        self, x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            return ops.rms_norm(x, weight, eps=self.eps)
        return ops.add_rms_norm(x, residual, weight, eps=self.eps)


class DlinferSiluAndMulImpl(SiluAndMulImpl):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.silu_and_mul(x)


def _full_width(table: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Complex-mode (pairwise) tables: LMDeploy's contract is one entry per rotated pair (``half_size =
    cos.size(-1)`` in its CUDA kernel), also for a partial rotary over the first ``2 * width`` channels; the spec
    wants one entry per rotated channel. A table already ``head_dim`` wide (LMDeploy's default impl accepts it)
    is taken as full width."""
    if table.shape[-1] * 2 <= head_dim:
        return table.repeat_interleave(2, dim=-1)
    return table


def _tokens_heads_view(x: torch.Tensor) -> torch.Tensor | None:
    """``x`` as ``[T, H, D]`` sharing its storage (unit last stride), or None where no such view exists."""
    if x.stride(-1) != 1:
        return None
    if x.dim() == 3:
        return x
    try:
        return x.view(-1, x.shape[-2], x.shape[-1])
    except RuntimeError:
        return None


class DlinferApplyRotaryEmbImpl(ApplyRotaryEmbImpl):
    """Rotary embedding on q and k: rotate-half (NeoX) or, in ``complex_mode``, pairwise (GPT-J).

    ``inplace=True`` (what LMDeploy's models pass) rotates ``query``/``key`` where they lie with the in-place
    op, without write-back copies; they are usually column slices of the fused qkv output.
    """

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        inplace: bool = True,
        complex_mode: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # LMDeploy's models pass [T, R] tables and [T, H, D] unit-stride slices of the qkv output: no reshape or
        # view then (each is a dispatched op per layer, host time in eager decode).
        cos2 = cos if cos.dim() == 2 else cos.reshape(-1, cos.shape[-1])
        sin2 = sin if sin.dim() == 2 else sin.reshape(-1, sin.shape[-1])
        if complex_mode:
            head_dim = query.shape[-1]
            cos2, sin2 = _full_width(cos2, head_dim), _full_width(sin2, head_dim)
        if inplace:
            q, k = _tokens_heads_view(query), _tokens_heads_view(key)
            if q is not None and k is not None:
                ops.apply_rotary_pos_emb_inplace(q, k, cos2, sin2, interleaved=complex_mode)
                return query, key
        head_dim = query.shape[-1]
        q = query.reshape(-1, query.shape[-2], head_dim)
        k = key.reshape(-1, key.shape[-2], key.shape[-1])
        q_out, k_out = ops.apply_rotary_pos_emb(q, k, cos2, sin2, interleaved=complex_mode)
        q_out = q_out.view(query.shape)
        k_out = k_out.view(key.shape)
        if inplace:
            query.copy_(q_out)
            key.copy_(k_out)
            return query, key
        return q_out, k_out


def tp_reduce(
    out: torch.Tensor, all_reduce: bool, group: dist.ProcessGroup | None, rank: int, scatter_size: list[int] | None
) -> torch.Tensor:
    """The tensor-parallel reduction LMDeploy expects after a row-parallel linear."""
    if not all_reduce:
        return out
    if scatter_size is not None:
        from lmdeploy.pytorch.distributed import reduce_scatter_by_tp_sizes

        return reduce_scatter_by_tp_sizes(out, rank, scatter_size, group=group)
    dist.all_reduce(out, group=group)
    return out


class DlinferLinearImpl(LinearImpl):
    def forward(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        all_reduce: bool = False,
        group: dist.ProcessGroup | None = None,
        rank: int = 0,
        scatter_size: list[int] | None = None,
    ) -> torch.Tensor:
        out = ops.linear(x, weight, bias)
        if not all_reduce:  # tp=1 and column-parallel layers: no reduction call on the per-layer path
            return out
        return tp_reduce(out, all_reduce, group, rank, scatter_size)
