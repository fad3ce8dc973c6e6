"""Comparing a backend's outputs with the reference's, and poisoning memory before a call."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlinfer.testing.tolerances import INT8_ATOL, Tolerance

POISON = float("nan")


@dataclass
class Diff:
    ok: bool
    max_abs: float
    max_rel: float
    detail: str = ""


def compare_tensor(name: str, got: object, want: torch.Tensor, tol: Tolerance,
                   allowance: torch.Tensor | None = None) -> Diff:
    """Element-wise |got - want| <= atol + rtol * |want| (+ ``allowance``, an error bound per element of a
    rounding the op's contract permits, broadcast to ``want``); NaN anywhere in ``got`` fails."""
    if not isinstance(got, torch.Tensor):
        return Diff(False, float("inf"), float("inf"), f"{name}: expected a tensor, got {type(got).__name__}")
    if tuple(got.shape) != tuple(want.shape):
        return Diff(False, float("inf"), float("inf"), f"{name}: shape {list(got.shape)} != {list(want.shape)}")
    if got.dtype != want.dtype:
        return Diff(False, float("inf"), float("inf"), f"{name}: dtype {got.dtype} != {want.dtype}")
    if got.numel() == 0:
        return Diff(True, 0.0, 0.0)
    g = got.detach().to("cpu", torch.float64)
    w = want.detach().to("cpu", torch.float64)
    err = (g - w).abs()
    if torch.isnan(g).any() != torch.isnan(w).any() or (torch.isnan(g) != torch.isnan(w)).any():
        return Diff(False, float("nan"), float("nan"), f"{name}: NaN where the reference has none")
    err = torch.nan_to_num(err, nan=0.0)
    max_abs = float(err.max())
    max_rel = float((err / w.abs().clamp_min(1e-6)).max())
    if want.dtype == torch.int8:
        ok = max_abs <= INT8_ATOL
        bound = f"|diff| <= {INT8_ATOL}"
    elif not want.dtype.is_floating_point:
        ok = max_abs == 0
        bound = "exact"
    else:
        limit = tol.atol + tol.rtol * w.abs()
        bound = f"atol {tol.atol:g} + rtol {tol.rtol:g}"
        if allowance is not None:
            limit = limit + allowance.detach().to("cpu", torch.float64)
            bound += f" + the permitted rounding's bound (up to {float(allowance.max()):.3g})"
        ok = bool((err <= limit).all())
    detail = "" if ok else f"{name}: max abs err {max_abs:.3g}, max rel err {max_rel:.3g} (allowed {bound})"
    return Diff(ok, max_abs, max_rel, detail)


def merge(diffs: list[Diff]) -> Diff:
    ok = all(d.ok for d in diffs)
    return Diff(ok, max((d.max_abs for d in diffs), default=0.0), max((d.max_rel for d in diffs), default=0.0),
                "; ".join(d.detail for d in diffs if d.detail))


def poison_allocator(device: torch.device, nbytes: int | None = None) -> None:
    """Fill and free a block of memory so that a kernel reading uninitialised output memory sees NaNs.

    With a caching allocator (CUDA and its look-alikes) the next allocations reuse this block.
    """
    if nbytes is None:  # CPU malloc hands large blocks back to the OS; only small ones get reused
        nbytes = (2 << 20) if device.type == "cpu" else (64 << 20)
    try:
        block = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
        block.fill_(POISON)
        del block
    except RuntimeError:
        pass
