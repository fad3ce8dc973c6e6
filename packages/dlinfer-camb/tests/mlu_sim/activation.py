"""Simulated tmo.active (docs/vendor-semantics.md §3.3) and tmo.moe_active (§3.11)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._contract import HALF, NotModelled, fail, tensor

_ACTS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
}


def _act(fn: str, x: torch.Tensor, act_mode: str, is_gated: bool, coef: float = 1.0) -> torch.Tensor:
    """fp32 result; gated: act(x[..., :C/2]) * x[..., C/2:]."""
    if act_mode == "swish":
        f = lambda v: v * torch.sigmoid(coef * v)  # noqa: E731
    elif act_mode in _ACTS:
        f = _ACTS[act_mode]
    else:
        raise fail(fn, "act_mode", f"expected one of silu/gelu/quick_gelu/swish, got {act_mode!r}")
    x32 = x.float()
    if not is_gated:
        return f(x32)
    if x.shape[-1] % 2:
        raise fail(fn, "input", f"gated activation needs an even last dim, got {x.shape[-1]}")
    gate, up = x32.chunk(2, -1)
    return f(gate) * up


def active(input: torch.Tensor, act_mode: str, is_gated: bool, active_coef: float = 1.0) -> torch.Tensor:  # noqa: A002
    """§3.3: input [..., C] half/bf16 -> act(input) [..., C] or gated [..., C/2]; new tensor, dtype of input."""
    fn = "active"
    tensor(fn, "input", input, dtypes=HALF)
    if not isinstance(is_gated, bool):
        raise fail(fn, "is_gated", f"expected a bool, got {type(is_gated).__name__}")
    return _act(fn, input, act_mode, is_gated, active_coef).to(input.dtype)


def moe_active(
    input: torch.Tensor,  # noqa: A002
    act_mode: str,
    is_gated: bool,
    output: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    cusum_token_count: torch.Tensor | None = None,
    start_expert_id: int = 0,
    expert_size: int = 0,
) -> torch.Tensor:
    """§3.11: row-wise (gated) activation of input [rows, C] half/bf16.

    output None -> a new [rows, C/2] tensor. output given (dlinfer passes the input buffer): the result is
    computed first, written to output[:, :C/2] and output is returned (return shape UNCONFIRMED, §3.11).
    """
    fn = "moe_active"
    tensor(fn, "input", input, ndim=2, dtypes=HALF)
    if bias is not None:
        raise NotModelled(f"torch_mlu_ops.{fn}: per-expert bias is not modelled")
    if cusum_token_count is not None:
        tensor(fn, "cusum_token_count", cusum_token_count, ndim=1, dtypes=(torch.int32,))
    y = _act(fn, input, act_mode, is_gated).to(input.dtype)
    if output is None:
        return y
    tensor(fn, "output", output, ndim=2, dtypes=(input.dtype,))
    if output.shape[0] != input.shape[0] or output.shape[1] < y.shape[1]:
        raise fail(fn, "output", f"shape {list(output.shape)} cannot hold the result {list(y.shape)}")
    output[:, : y.shape[1]] = y
    return output
