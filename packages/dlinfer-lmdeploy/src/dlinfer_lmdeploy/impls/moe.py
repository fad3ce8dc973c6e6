"""MoE routing (softmax top-k) and fused experts on ``dlinfer.ops``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from dlinfer import ops
from lmdeploy.pytorch.backends.moe import FusedMoEImpl, SoftmaxTopKImpl

from dlinfer_lmdeploy.impls._errors import unsupported


class DlinferSoftmaxTopKImpl(SoftmaxTopKImpl):
    def __init__(self, top_k: int, dim: int = -1, n_groups: int = -1) -> None:
        if dim not in (-1, 1):
            raise unsupported("softmax_topk", "dim", f"dim={dim}")
        if n_groups not in (-1, 0, 1):
            raise unsupported("softmax_topk", "n_groups", f"group-limited routing with {n_groups} groups")
        self.top_k = top_k

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (fp32 weights [T, k], int32 expert ids [T, k]). The ids stay int32 (LMDeploy's hint is a LongTensor):
        on a dlinfer device they reach only this adaptor's FusedMoE, whose op takes int32 or int64 and whose vendor
        kernels want int32; a cast here cost one kernel per MoE layer and step, and ascend / camb cast back."""
        return ops.moe_gating_topk_softmax(x, topk=self.top_k, renormalize=False)


class DlinferFusedMoEImpl(FusedMoEImpl):
    def __init__(self, top_k: int, num_experts: int, renormalize: bool, ep_size: int) -> None:
        """No ``out_dtype``: LMDeploy's unquantised FusedMoE always builds with ``output_dtype=torch.bfloat16``,
        read only by its expert-parallel (DeepEP) path, which is refused here; the output keeps the activation
        dtype, as LMDeploy's CUDA default impl."""
        if ep_size > 1:
            raise unsupported("fused_moe", "ep_size", f"expert parallelism ep={ep_size}")
        self.top_k = top_k
        self.num_experts = num_experts
        self.renormalize = renormalize

    def forward(
        self,
        hidden_states: torch.Tensor,
        topk_weights: torch.Tensor,
        topk_ids: torch.LongTensor,
        gate_up_weights: torch.Tensor,
        down_weights: torch.Tensor,
        gate_up_bias: torch.Tensor | None = None,
        down_bias: torch.Tensor | None = None,
        expert_list: list[int] | None = None,
        act_func: Callable[..., torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if gate_up_bias is not None or down_bias is not None:
            raise unsupported("fused_moe", "bias")
        if expert_list is not None:
            raise unsupported("fused_moe", "expert_list")
        if act_func is not None:
            raise unsupported("fused_moe", "act_func", "only SiLU-gated experts")
        if self.renormalize:
            topk_weights = topk_weights / topk_weights.sum(dim=-1, keepdim=True)
        if hidden_states.dim() == 2:  # what LMDeploy's MoE blocks pass: no view op either way
            return ops.fused_moe(hidden_states, gate_up_weights, down_weights, topk_weights, topk_ids)
        shape = hidden_states.shape
        out = ops.fused_moe(hidden_states.reshape(-1, shape[-1]), gate_up_weights, down_weights, topk_weights, topk_ids)
        return out.view(shape)
