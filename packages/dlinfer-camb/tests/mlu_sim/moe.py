"""Simulated tmo MoE kernels: moe_softmax_topk (§3.7), moe_gen_idx (§3.8), moe_expand_input (§3.9),
group_gemm (§3.10), moe_combine_result (§3.12) (docs/vendor-semantics.md; TMO-1.3.2, TMO-NEW, VMLU)."""

from __future__ import annotations

import torch

from ._contract import HALF, NotModelled, fail, shape, tensor


def moe_softmax_topk(
    input: torch.Tensor,  # noqa: A002
    topk: int,
    *,
    normalize: bool = False,
    num_expert_group: int = -1,
    topk_group: int = 0,
    mask: torch.Tensor | None = None,
    normed_by: str = "topk_logit",
) -> tuple[torch.Tensor, torch.Tensor]:
    """§3.7: input [N, E] -> (reduce_weight fp32 [N, topk], expert_id int32 [N, topk]); softmax in fp32,
    top-k, optional renormalisation by the top-k sum. Optional args are keyword-only here (their
    positional order differs between TMO-1.3.2 and newer docs)."""
    fn = "moe_softmax_topk"
    tensor(fn, "input", input, ndim=2, dtypes=(*HALF, torch.float32))
    if not isinstance(topk, int) or not 0 < topk <= input.shape[1]:
        raise fail(fn, "topk", f"expected an int in 1..{input.shape[1]}, got {topk!r}")
    if num_expert_group != -1 or mask is not None or normed_by != "topk_logit":
        raise NotModelled(f"torch_mlu_ops.{fn}: grouped routing / mask / normed_by are not modelled")
    probs = torch.softmax(input.float(), dim=-1)
    weights, ids = torch.topk(probs, topk, dim=-1)
    if normalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights, ids.to(torch.int32)


def moe_gen_idx(expert_id: torch.Tensor, expert_num: int) -> tuple[torch.Tensor, ...]:
    """§3.8: expert_id int32 [N, topk] -> (expand_idx [N*topk] source token of each expert-sorted row,
    combine_idx [N*topk] sorted position of each flat assignment, token_count [E], cusum_token_count [E+1]
    = [0, cumsum]); all int32. A stable sort is used (stability UNCONFIRMED)."""
    fn = "moe_gen_idx"
    tensor(fn, "expert_id", expert_id, ndim=2, dtypes=(torch.int32,))
    if not isinstance(expert_num, int) or expert_num <= 0:
        raise fail(fn, "expert_num", f"expected a positive int, got {expert_num!r}")
    flat = expert_id.reshape(-1).long()
    if flat.numel() and (flat.min() < 0 or flat.max() >= expert_num):
        raise fail(fn, "expert_id", f"ids must lie in 0..{expert_num - 1}")
    order = torch.argsort(flat, stable=True)
    expand_idx = (order // expert_id.shape[1]).to(torch.int32)
    combine_idx = torch.empty_like(order)
    combine_idx[order] = torch.arange(order.numel())
    counts = torch.bincount(flat, minlength=expert_num)
    cusum = torch.cat((counts.new_zeros(1), counts.cumsum(0)))
    return expand_idx, combine_idx.to(torch.int32), counts.to(torch.int32), cusum.to(torch.int32)


def moe_expand_input(
    input: torch.Tensor,  # noqa: A002
    gather_idx: torch.Tensor,
    cusum_token_count: torch.Tensor | None = None,
    start_expert_id: int = 0,
    expert_size: int = 0,
) -> torch.Tensor:
    """§3.9: out = input[gather_idx] -> [len(gather_idx), H]. With cusum_token_count and an expert window only
    rows of experts [start, start + size) are produced; the rest is left unwritten (NaN here)."""
    fn = "moe_expand_input"
    tensor(fn, "input", input, ndim=2, dtypes=HALF)
    tensor(fn, "gather_idx", gather_idx, ndim=1, dtypes=(torch.int32,))
    idx = gather_idx.long()
    if idx.numel() and (idx.min() < 0 or idx.max() >= input.shape[0]):
        raise fail(fn, "gather_idx", f"indices must lie in 0..{input.shape[0] - 1}")
    out = input[idx]
    if cusum_token_count is not None:
        tensor(fn, "cusum_token_count", cusum_token_count, ndim=1, dtypes=(torch.int32,))
        cs = cusum_token_count.tolist()
        if cs[0] != 0 or cs[-1] != idx.numel():
            raise fail(fn, "cusum_token_count", f"expected [0, ..., {idx.numel()}] cumulative counts, got {cs[:8]}")
        size = expert_size if expert_size > 0 else len(cs) - 1 - start_expert_id
        lo, hi = cs[start_expert_id], cs[start_expert_id + size]
        out[:lo] = float("nan")
        out[hi:] = float("nan")
    return out


def group_gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    m_list: torch.Tensor,
    expand_idx: torch.Tensor | None,
    c: torch.Tensor | None,
    alpha: torch.Tensor | None,
    beta: torch.Tensor | None,
    max_m: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """§3.10: a [total_m, k] rows in expert order, b [E, n, k] (nn.Linear layout), m_list int32 [E] per-expert
    row counts (NOT cumulative) -> d [total_m, n] in a's dtype, d_e = a_e @ b_e^T (fp32 accumulation)."""
    fn = "group_gemm"
    tensor(fn, "a", a, ndim=2, dtypes=HALF)
    tensor(fn, "b", b, ndim=3, dtypes=(a.dtype,))
    tensor(fn, "m_list", m_list, ndim=1, dtypes=(torch.int32,))
    if c is not None or alpha is not None or beta is not None or bias is not None or expand_idx is not None:
        raise NotModelled(f"torch_mlu_ops.{fn}: c / alpha / beta / bias / expand_idx are not modelled")
    experts, n, k = b.shape
    shape(fn, "m_list", m_list, (experts,))
    if a.shape[1] != k:
        raise fail(fn, "a", f"inner dim {a.shape[1]} != b's k {k} (b is [E, n, k])")
    counts = m_list.tolist()
    if min(counts) < 0 or sum(counts) != a.shape[0]:
        raise fail(fn, "m_list", f"per-expert row counts must be >= 0 and sum to {a.shape[0]} rows, got {counts[:8]}")
    if not isinstance(max_m, int) or max_m < max(counts):
        raise fail(fn, "max_m", f"expected an int upper bound >= {max(counts)}, got {max_m!r}")
    out = torch.empty(a.shape[0], n, dtype=a.dtype)
    start = 0
    for e, m in enumerate(counts):
        out[start : start + m] = (a[start : start + m].float() @ b[e].float().t()).to(a.dtype)
        start += m
    return out


def moe_combine_result(
    input: torch.Tensor,  # noqa: A002
    reduce_weight: torch.Tensor,
    gather_ids: torch.Tensor,
    residual: torch.Tensor | None,
    cusum_token_count: torch.Tensor | None,
    start_expert_id: int,
    expert_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """§3.12: out[t] = sum_j reduce_weight[t, j] * input[gather_ids[t*topk + j]] (+ residual[t]);
    reduce_weight fp32 [N, topk]; rows of experts outside [start, start + size) contribute 0. -> [N, H]."""
    fn = "moe_combine_result"
    tensor(fn, "input", input, ndim=2, dtypes=HALF)
    tensor(fn, "reduce_weight", reduce_weight, ndim=2, dtypes=(torch.float32,))
    tensor(fn, "gather_ids", gather_ids, ndim=1, dtypes=(torch.int32,))
    if bias is not None:
        raise NotModelled(f"torch_mlu_ops.{fn}: per-expert bias is not modelled")
    tokens, topk = reduce_weight.shape
    shape(fn, "gather_ids", gather_ids, (tokens * topk,))
    idx = gather_ids.long()
    if idx.numel() and (idx.min() < 0 or idx.max() >= input.shape[0]):
        raise fail(fn, "gather_ids", f"indices must lie in 0..{input.shape[0] - 1}")
    rows = input.float()
    if cusum_token_count is not None:
        tensor(fn, "cusum_token_count", cusum_token_count, ndim=1, dtypes=(torch.int32,))
        cs = cusum_token_count.tolist()
        size = expert_size if expert_size > 0 else len(cs) - 1 - start_expert_id
        keep = torch.zeros(input.shape[0], dtype=torch.bool)
        keep[cs[start_expert_id] : cs[start_expert_id + size]] = True
        rows = torch.where(keep[:, None], rows.nan_to_num(0.0), torch.zeros_like(rows))
    picked = rows[idx].view(tokens, topk, -1)
    out = (picked * reduce_weight[..., None]).sum(1)
    if residual is not None:
        tensor(fn, "residual", residual, ndim=2, dtypes=(input.dtype,))
        shape(fn, "residual", residual, (tokens, input.shape[1]))
        out = out + residual.float()
    return out.to(input.dtype)
