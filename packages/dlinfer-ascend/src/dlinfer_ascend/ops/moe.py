"""MoE ops.

moe_gating_topk_softmax -> npu_moe_gating_top_k_softmax (§2.16) on fp32 logits, so the
    weights come back in fp32 as the spec wants (the kernel returns x's dtype).
fused_moe -> npu_moe_init_routing_v2 (§2.18) + npu_grouped_matmul (§2.19) + npu_swiglu (§2.5)
    + npu_grouped_matmul + npu_moe_token_unpermute (§2.21). A group list holds at most 1024
    groups (aclnnGroupedMatmulV5), so more experts are split into chunks of consecutive experts
    whose rows are contiguous after routing (one host read of the per-expert counts).
"""

from __future__ import annotations

import torch

from dlinfer_ascend.ops._common import unsupported
from dlinfer_ascend.ops._kernels import K

MAX_GROUP_LIST = 1024
MAX_TOPK = 1024


def moe_gating_topk_softmax(logits: torch.Tensor, *, topk: int, renormalize: bool = False
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [T,E] -> (weights fp32 [T,k], ids int32 [T,k])."""
    if topk > MAX_TOPK:
        raise unsupported("moe_gating_topk_softmax", "topk", f"{topk} > {MAX_TOPK}, the kernel limit")
    weights, ids, _row = K.npu.npu_moe_gating_top_k_softmax(logits.float().contiguous(), None, topk)
    if renormalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights, ids


def _mlp(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, counts: torch.Tensor
         ) -> torch.Tensor:
    """Rows of x grouped by expert (counts int64 [E]) through gate_up [E,2I,H] and down [E,H,I]."""
    h = K.npu.npu_grouped_matmul([x], [gate_up.transpose(1, 2)], group_list=counts, split_item=2,
                                 group_type=0, group_list_type=1)[0]
    a = K.npu.npu_swiglu(h, -1)
    return K.npu.npu_grouped_matmul([a], [down.transpose(1, 2)], group_list=counts, split_item=2,
                                    group_type=0, group_list_type=1)[0]


def fused_moe(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor,
              topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    """x [T,H] -> sum_j w[t,j] * down_e(silu(gate_e x) * up_e x), e = ids[t,j] -> [T,H]."""
    t, h = x.shape
    e, k = gate_up.shape[0], topk_ids.shape[1]
    if t == 0:
        return x.new_empty(0, h)
    ids = topk_ids if topk_ids.dtype == torch.int32 else topk_ids.to(torch.int32)
    expanded, row_idx, counts, _ = K.npu.npu_moe_init_routing_v2(
        x.contiguous(), ids.contiguous(), active_num=t * k, expert_num=e, expert_tokens_num_type=1,
        expert_tokens_num_flag=True, active_expert_range=[0, e], quant_mode=-1)
    if e <= MAX_GROUP_LIST:
        y = _mlp(expanded, gate_up, down, counts)
    else:
        ends = [0, *counts.cumsum(0).tolist()]  # host read: row ranges per expert chunk
        parts = []
        for lo in range(0, e, MAX_GROUP_LIST):
            hi = min(lo + MAX_GROUP_LIST, e)
            rows = expanded[ends[lo]:ends[hi]]
            if rows.shape[0]:
                parts.append(_mlp(rows, gate_up[lo:hi], down[lo:hi], counts[lo:hi]))
        y = torch.cat(parts, dim=0)
    # probs in the token dtype, the form upstream dlinfer runs (the doc does not state the probs dtype)
    probs = topk_weights if topk_weights.dtype == x.dtype else topk_weights.to(x.dtype)
    return K.npu.npu_moe_token_unpermute(y, row_idx, probs=probs)
