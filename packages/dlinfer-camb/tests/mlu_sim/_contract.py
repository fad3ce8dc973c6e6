"""Argument-contract checks of the simulated torch_mlu_ops (each failure names the function and argument)."""

from __future__ import annotations

import torch

HALF = (torch.float16, torch.bfloat16)
"""Activation dtypes of the tmo kernels (docs/vendor-semantics.md §3 intro: "half/bf16 (some fp32)")."""


class MluContractError(RuntimeError):
    """A simulated torch_mlu_ops function was called outside its documented argument contract."""


class NotModelled(MluContractError):
    """A documented feature the simulator does not model (the adaptor must not rely on it)."""


def fail(fn: str, arg: str, msg: str) -> MluContractError:
    return MluContractError(f"torch_mlu_ops.{fn}: argument '{arg}': {msg}")


def tensor(fn: str, arg: str, t: object, *, ndim: int | tuple[int, ...] | None = None,
           dtypes: tuple[torch.dtype, ...] | None = None) -> torch.Tensor:
    """Require a tensor with one of the given ranks and dtypes."""
    if not isinstance(t, torch.Tensor):
        raise fail(fn, arg, f"expected a tensor, got {type(t).__name__}")
    ranks = (ndim,) if isinstance(ndim, int) else ndim
    if ranks is not None and t.dim() not in ranks:
        raise fail(fn, arg, f"expected {' or '.join(map(str, ranks))}-D, got shape {list(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise fail(fn, arg, f"expected dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    return t


def shape(fn: str, arg: str, t: torch.Tensor, want: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(want):
        raise fail(fn, arg, f"expected shape {list(want)}, got {list(t.shape)}")


def same_dtype(fn: str, arg: str, t: torch.Tensor, ref: torch.Tensor, ref_name: str) -> None:
    if t.dtype != ref.dtype:
        raise fail(fn, arg, f"dtype {t.dtype} differs from {ref_name}'s {ref.dtype}")


def cu_seqlens(fn: str, arg: str, t: object, total: int | None = None) -> list[int]:
    """Cumulative int32 [B+1] lengths with a leading 0, non-decreasing, ending at ``total``.

    docs/vendor-semantics.md §1.6.
    """
    t = tensor(fn, arg, t, ndim=1, dtypes=(torch.int32,))
    vals = t.tolist()
    if len(vals) < 2 or vals[0] != 0:
        raise fail(fn, arg, f"expected cumulative lengths [B+1] starting at 0, got {vals[:8]}")
    if any(b < a for a, b in zip(vals, vals[1:], strict=False)):
        raise fail(fn, arg, f"cumulative lengths must not decrease, got {vals[:8]}")
    if total is not None and vals[-1] != total:
        raise fail(fn, arg, f"last offset {vals[-1]} != number of packed tokens {total}")
    return vals


def heads_divide(fn: str, hq: int, hkv: int) -> None:
    if hkv == 0 or hq % hkv:
        raise fail(fn, "k", f"query heads {hq} must be a multiple of kv heads {hkv}")
