"""MoE routing and experts."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def moe_gating_topk_softmax(
    logits: torch.Tensor, *, topk: int, renormalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [T, E] -> (weights fp32 [T, k], ids int32 [T, k]) from softmax in fp32."""
    probs = torch.softmax(logits.float(), dim=-1)
    weights, ids = torch.topk(probs, topk, dim=-1)
    if renormalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights, ids.to(torch.int32)


def fused_moe(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    """x [T, H] through the chosen experts (gate_up [E, 2I, H], down [E, H, I]) -> [T, H].

    GEMMs accumulate in fp32; the activation is rounded to x.dtype between the two GEMMs,
    as a fused kernel storing its intermediate in the working dtype does.
    """
    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
    flat_ids = topk_ids.reshape(-1).long()
    flat_w = topk_weights.reshape(-1).float()
    token_of = torch.arange(x.shape[0], device=x.device).repeat_interleave(topk_ids.shape[1])
    order = torch.argsort(flat_ids, stable=True)
    counts = torch.bincount(flat_ids, minlength=gate_up.shape[0]).tolist()
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        rows = order[start : start + count]
        start += count
        tokens = token_of[rows]
        h = torch.matmul(x[tokens].float(), gate_up[expert].float().t())
        gate, up = h.chunk(2, dim=-1)
        act = (F.silu(gate) * up).to(x.dtype).float()
        y = torch.matmul(act, down[expert].float().t())
        out.index_add_(0, tokens, y * flat_w[rows, None])
    return out.to(x.dtype)
