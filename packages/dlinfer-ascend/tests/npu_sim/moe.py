"""Simulated MoE kernels: gating top-k softmax, init_routing_v2, grouped_matmul, token_unpermute."""

from __future__ import annotations

from typing import Any

import torch

from ._contract import FLOAT_DTYPES, HALF_DTYPES, NotModelled, check, device_tensor
from .graphs import one_kernel


def npu_moe_gating_top_k_softmax(x: torch.Tensor, finished: torch.Tensor | None = None, k: int = 1
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """docs/vendor-semantics.md §2.16 (OP-DOC:npu_moe_gating_top_k_softmax; OP-TEST golden).

    p = softmax(x) in fp32; stable top-k (ties -> lower expert id); y in x dtype (no renorm);
    expert_idx int32; row_idx[i,j] = j*N + i; finished rows get expert id E. k <= 1024.
    """
    fn = "npu_moe_gating_top_k_softmax"
    device_tensor(fn, "x", x, dtypes=FLOAT_DTYPES)
    check(x.dim() in (2, 3), fn, f"x must be 2-D or 3-D, got {x.dim()}-D")
    e = x.shape[-1]
    check(1 <= k <= min(1024, e), fn, f"k={k} must be in [1, min(1024, E={e})]")
    x2 = x.reshape(-1, e)
    n = x2.shape[0]
    p = torch.softmax(x2.float(), dim=-1)
    order = torch.sort(p, dim=-1, descending=True, stable=True).indices[:, :k]
    y = p.gather(1, order).to(x.dtype)
    idx = order.to(torch.int32)
    if finished is not None:
        device_tensor(fn, "finished", finished, dtypes=(torch.bool,))
        idx[finished.reshape(-1)] = e
    row = (torch.arange(k, dtype=torch.int32).unsqueeze(0) * n
           + torch.arange(n, dtype=torch.int32).unsqueeze(1))
    shape = (*x.shape[:-1], k)
    return y.reshape(shape), idx.reshape(shape), row.reshape(shape)


@one_kernel  # reads the routing on the host (valid rows): one graph node, run at replay
def npu_moe_init_routing_v2(
    x: torch.Tensor, expert_idx: torch.Tensor, *, scale: torch.Tensor | None = None,
    offset: torch.Tensor | None = None, active_num: int = -1, expert_capacity: int = -1,
    expert_num: int = -1, drop_pad_mode: int = 0, expert_tokens_num_type: int = 0,
    expert_tokens_num_flag: bool = False, quant_mode: int = -1,
    active_expert_range: list[int] | None = None, row_idx_type: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """docs/vendor-semantics.md §2.18 (OP-DOC:npu_moe_init_routing_v2), dropless mode.

    Flatten ids row-major (f = n*K + k), stable-sort by expert; ids outside [start, end) dropped.
    expanded_x[p] = x[sorted_f[p] // K]; expanded_row_idx (type 0) [f] = destination p (-1 dropped);
    expert tokens int64 over [start, end): type 0 cumsum, 1 counts.
    """
    fn = "npu_moe_init_routing_v2"
    device_tensor(fn, "x", x, dtypes=FLOAT_DTYPES, dim=2)
    device_tensor(fn, "expert_idx", expert_idx, dtypes=(torch.int32,), dim=2)
    check(expert_idx.shape[0] == x.shape[0], fn, "expert_idx rows != x rows")
    if drop_pad_mode != 0 or quant_mode != -1 or scale is not None or offset is not None:
        raise NotModelled(f"{fn}: only dropless (drop_pad_mode=0) without quant is modelled")
    check(expert_tokens_num_type in (0, 1), fn, f"expert_tokens_num_type {expert_tokens_num_type} not modelled")
    check(row_idx_type in (0, 1), fn, f"row_idx_type {row_idx_type} invalid")
    start, end = (active_expert_range or [0, expert_num])
    check(0 <= start < end, fn, f"active_expert_range [{start}, {end}) invalid (expert_num={expert_num})")
    n, k = expert_idx.shape
    flat = expert_idx.reshape(-1).long()
    key = torch.where((flat >= start) & (flat < end), flat, torch.full_like(flat, end))
    sorted_key, order = torch.sort(key, stable=True)
    valid = int((sorted_key < end).sum())
    if active_num > 0:
        valid = min(valid, active_num)
    order_v = order[:valid]
    expanded_x = x[order_v // k]
    if row_idx_type == 0:
        row_idx = torch.full((n * k,), -1, dtype=torch.int32)
        row_idx[order_v] = torch.arange(valid, dtype=torch.int32)
    else:
        row_idx = order.to(torch.int32)
    counts = torch.bincount(key[order_v] - start, minlength=end - start).to(torch.int64)
    tokens = counts if expert_tokens_num_type == 1 else counts.cumsum(0)
    if not expert_tokens_num_flag:
        tokens = torch.full_like(tokens, -1)  # not produced meaningfully without the flag
    return expanded_x, row_idx, tokens, torch.empty(0)


@one_kernel  # reads group_list (a device tensor) on the host: one graph node, run at replay
def npu_grouped_matmul(x: list[torch.Tensor], weight: list[torch.Tensor], *,
                       bias: list[torch.Tensor] | None = None, group_list: torch.Tensor | None = None,
                       split_item: int = 0, group_type: int | None = None, group_list_type: int = 0,
                       act_type: int = 0, **not_modelled: Any) -> list[torch.Tensor]:
    """docs/vendor-semantics.md §2.19 (OP-DOC:npu_grouped_matmul), M-split (group_type 0) float form.

    x=[ (M,K) ], weight=[ (E,K,N) ]: rows [start_g, end_g) get x @ W_g. group_list int64, <= 1024
    entries: type 0 cumulative ends, type 1 counts. split_item 2/3 -> one concatenated output.
    Rows not covered by a group are undefined (NaN here).
    """
    fn = "npu_grouped_matmul"
    for name, val in not_modelled.items():
        if val is not None:
            raise NotModelled(f"{fn}: {name} is not modelled")
    check(isinstance(x, (list, tuple)) and isinstance(weight, (list, tuple)), fn,
          "x and weight must be lists of tensors")
    check(group_type == 0, fn, f"only group_type=0 (split M) is modelled, got {group_type}")
    check(len(x) == 1 and len(weight) == 1 and split_item in (2, 3), fn,
          "modelled form: one x, one stacked (E,K,N) weight, split_item 2/3")
    check(bias is None and act_type == 0, fn, "bias / act_type are not modelled")
    a, w = x[0], weight[0]
    device_tensor(fn, "x[0]", a, dtypes=HALF_DTYPES, dim=2)
    device_tensor(fn, "weight[0]", w, dtypes=(a.dtype,), dim=3)
    check(w.shape[1] == a.shape[1], fn, f"weight K {w.shape[1]} != x K {a.shape[1]}")
    check(group_list is not None, fn, "group_list is required for group_type=0")
    assert group_list is not None
    device_tensor(fn, "group_list", group_list, dtypes=(torch.int64,), dim=1)
    g = group_list.shape[0]
    check(g <= 1024, fn, f"group_list has {g} entries (> 1024)")
    check(g == w.shape[0], fn, f"group_list has {g} entries for {w.shape[0]} weights")
    m = a.shape[0]
    gl = group_list.tolist()
    if group_list_type == 1:
        check(all(c >= 0 for c in gl), fn, "group_list counts must be >= 0")
        ends = torch.tensor(gl).cumsum(0).tolist()
    elif group_list_type == 0:
        check(all(p <= q for p, q in zip([0, *gl], gl, strict=False)), fn,
              "group_list_type 0 needs cumulative (non-decreasing) ends")
        ends = gl
    else:
        raise NotModelled(f"{fn}: group_list_type {group_list_type} not modelled")
    check(not ends or ends[-1] <= m, fn, f"groups cover {ends[-1] if ends else 0} rows > M={m}")
    out = torch.full((m, w.shape[2]), float("nan"), dtype=torch.float32)
    start = 0
    for i, end in enumerate(ends):
        if end > start:
            out[start:end] = a[start:end].float() @ w[i].float()
        start = end
    return [out.to(a.dtype)]


def npu_moe_token_unpermute(permuted_tokens: torch.Tensor, sorted_indices: torch.Tensor,
                            probs: torch.Tensor | None = None, padded_mode: bool = False,
                            restore_shape: list[int] | None = None) -> torch.Tensor:
    """docs/vendor-semantics.md §2.21 (OP-TEST:npu_moe_token_permute_and_unpermute).

    out[n] = sum_j probs[n,j] * permuted_tokens[sorted_indices[n*topk + j]]; (N, H), tokens dtype.
    """
    fn = "npu_moe_token_unpermute"
    check(not padded_mode, fn, "padded_mode=True is unsupported")
    device_tensor(fn, "permuted_tokens", permuted_tokens, dtypes=FLOAT_DTYPES, dim=2)
    device_tensor(fn, "sorted_indices", sorted_indices, dtypes=(torch.int32,), dim=1)
    topk = 1
    if probs is not None:
        device_tensor(fn, "probs", probs, dtypes=FLOAT_DTYPES, dim=2)
        topk = probs.shape[1]
    total = sorted_indices.numel()
    check(total % topk == 0, fn, "sorted_indices size not a multiple of topk")
    n = total // topk
    idx = sorted_indices.long()
    check(bool(((idx >= 0) & (idx < permuted_tokens.shape[0])).all()), fn, "sorted_indices out of range")
    gathered = permuted_tokens.float()[idx].view(n, topk, -1)
    w = probs.float().view(n, topk, 1) if probs is not None else torch.ones(n, topk, 1)
    return (gathered * w).sum(1).to(permuted_tokens.dtype)


def npu_moe_finalize_routing(expanded_permuted_rows: torch.Tensor, skip1: torch.Tensor | None,
                             skip2: torch.Tensor | None, bias: torch.Tensor | None, scales: torch.Tensor | None,
                             expanded_src_to_dst_row: torch.Tensor, export_for_source_row: torch.Tensor | None,
                             drop_pad_mode: int | None = 0, k: int | None = 1) -> torch.Tensor:
    """torch_npu 2.13.0 ``_op_plugin_docs.py:npu_moe_finalize_routing`` (GE MoeFinalizeRouting).

    out[i] = skip1[i] + skip2[i] + sum_k scales[i,k] * (rows[expanded_src_to_dst_row[i + k*N]] + bias[e_ik]),
    e_ik = export_for_source_row[i,k]; rows (N*K, H), scales (N, K) of the rows' dtype, index int32 (N*K)
    (k-major: entry i + k*N, unlike npu_moe_token_unpermute's n*topk + j), in [0, N*K-1] for drop_pad_mode 0
    (the only documented value). skip2 None requires skip1 None. Accumulated in fp32, output in the rows'
    dtype (the doc does not state the accumulation precision; the same assumption as npu_moe_token_unpermute).
    """
    fn = "npu_moe_finalize_routing"
    check(drop_pad_mode in (None, 0), fn, f"drop_pad_mode {drop_pad_mode}: only 0 is documented")
    device_tensor(fn, "expanded_permuted_rows", expanded_permuted_rows, dtypes=FLOAT_DTYPES, dim=2)
    dt = expanded_permuted_rows.dtype
    device_tensor(fn, "expanded_src_to_dst_row", expanded_src_to_dst_row, dtypes=(torch.int32,), dim=1)
    check(skip1 is None or skip2 is not None, fn, "skip2 is None but skip1 is given")
    if scales is not None:
        device_tensor(fn, "scales", scales, dtypes=(dt,), dim=2)
        kk = scales.shape[1]
    else:
        check(k is not None and k >= 1, fn, "scales is None: k must be given")
        kk = int(k)  # type: ignore[arg-type]
    total, h = expanded_permuted_rows.shape
    check(expanded_src_to_dst_row.numel() == total and total % kk == 0, fn,
          f"expanded_src_to_dst_row {tuple(expanded_src_to_dst_row.shape)} is not (N*K,) for rows {total}, K {kk}")
    n = total // kk
    idx = expanded_src_to_dst_row.long()
    check(bool(((idx >= 0) & (idx < total)).all()), fn, "expanded_src_to_dst_row out of [0, N*K-1]")
    rows = expanded_permuted_rows.float()[idx].view(kk, n, h).transpose(0, 1)  # [N, K, H]
    if bias is not None:
        device_tensor(fn, "bias", bias, dtypes=(dt,), dim=2)
        check(export_for_source_row is not None, fn, "bias needs export_for_source_row")
        device_tensor(fn, "export_for_source_row", export_for_source_row, dtypes=(torch.int32,), dim=2)
        rows = rows + bias.float()[export_for_source_row.long()]
    w = scales.float().view(n, kk, 1) if scales is not None else torch.ones(n, kk, 1)
    out = (rows * w).sum(1)
    for name, skip in (("skip1", skip1), ("skip2", skip2)):
        if skip is not None:
            device_tensor(fn, name, skip, dtypes=(dt,), dim=2)
            check(tuple(skip.shape) == (n, h), fn, f"{name} {tuple(skip.shape)} is not ({n},{h})")
            out = out + skip.float()
    return out.to(dt)
