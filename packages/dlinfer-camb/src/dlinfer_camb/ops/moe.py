"""MoE routing and experts on the tmo moe_* kernels and group_gemm (docs/vendor-semantics.md §3.7-3.12)."""

from __future__ import annotations

import torch

from dlinfer_camb.ops._common import K, require_half


def moe_gating_topk_softmax(
    logits: torch.Tensor, *, topk: int, renormalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [T, E] -> (weights fp32 [T, k], ids int32 [T, k]); softmax in fp32 (moe_softmax_topk, §3.7)."""
    weights, ids = K.tmo.moe_softmax_topk(logits.to(torch.float32), topk, normalize=renormalize)
    return weights, ids if ids.dtype == torch.int32 else ids.to(torch.int32)


def fused_moe(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    """x [T, H], gate_up [E, 2I, H], down [E, H, I], topk_weights [T, k], topk_ids [T, k] -> [T, H].

    gen_idx sorts the T*k assignments by expert; expand_input gathers the rows; two group GEMMs with
    per-expert row counts run the experts, moe_active applies the gated SiLU between them, and
    combine_result scatters back weighted by the fp32 routing weights.
    """
    require_half("fused_moe", x)
    tokens, experts, inter = x.shape[0], gate_up.shape[0], down.shape[-1]
    if tokens == 0:
        return x.new_empty(0, x.shape[1])
    ids = topk_ids if topk_ids.dtype == torch.int32 else topk_ids.to(torch.int32)
    expand_idx, combine_idx, token_count, cusum = K.tmo.moe_gen_idx(ids, experts)
    rows = K.tmo.moe_expand_input(x, expand_idx, cusum, 0, experts)
    # each token routes to distinct experts, so no expert gets more than `tokens` rows
    h = K.tmo.group_gemm(rows, gate_up, token_count, None, None, None, None, tokens)
    act = K.tmo.moe_active(h, "silu", True)
    if act.shape[-1] != inter:  # a kernel that writes into the input buffer returns [rows, 2I]
        act = act[:, :inter]
    y = K.tmo.group_gemm(act.contiguous(), down, token_count, None, None, None, None, tokens)
    return K.tmo.moe_combine_result(y, topk_weights.to(torch.float32), combine_idx, None, cusum, 0, experts)
