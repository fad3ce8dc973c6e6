"""Ops a backend lacks, composed from ops it has (before any fallback to the reference).

A plugin written for an older API, or one that leaves out a fused op, still runs its own kernels:
``apply_rotary_pos_emb_inplace`` is its out-of-place rotary plus ``copy_``, ``rms_norm_w8a8`` and
``add_rms_norm_w8a8`` are its norm followed by its ``dynamic_quant``. Each composed op declares its
ingredients in the spec (``OpSpec.derived_from``); the activation warning says "composed".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from dlinfer.spec import SPECS

Op = Callable[..., Any]


def _rotary_inplace(ops: Mapping[str, Op]) -> Op:
    rotary = ops["apply_rotary_pos_emb"]

    def apply_rotary_pos_emb_inplace(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
                                     interleaved: bool) -> None:
        """The backend's out-of-place rotary on dense copies, written back into q and k (any strided view)."""
        q_out, k_out = rotary(q.contiguous(), k.contiguous(), cos, sin, interleaved=interleaved)
        q.copy_(q_out)
        k.copy_(k_out)

    return apply_rotary_pos_emb_inplace


def _rms_norm_w8a8(ops: Mapping[str, Op]) -> Op:
    norm, quant = ops["rms_norm"], ops["dynamic_quant"]

    def rms_norm_w8a8(x: torch.Tensor, weight: torch.Tensor, *, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """dynamic_quant(rms_norm(x)) with the backend's two ops."""
        return quant(norm(x, weight, eps=eps), dtype=torch.int8)

    return rms_norm_w8a8


def _add_rms_norm_w8a8(ops: Mapping[str, Op]) -> Op:
    add_norm, quant = ops["add_rms_norm"], ops["dynamic_quant"]

    def add_rms_norm_w8a8(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, *, eps: float,
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """dynamic_quant(add_rms_norm(x, residual)) with the backend's two ops; also returns the sum."""
        normed, added = add_norm(x, residual, weight, eps=eps)
        x_q, scale = quant(normed, dtype=torch.int8)
        return x_q, scale, added

    return add_rms_norm_w8a8


BUILDERS: dict[str, Callable[[Mapping[str, Op]], Op]] = {
    "apply_rotary_pos_emb_inplace": _rotary_inplace,
    "rms_norm_w8a8": _rms_norm_w8a8,
    "add_rms_norm_w8a8": _add_rms_norm_w8a8,
}
"""op -> builder of its composition; the ingredients are ``SPECS[op].derived_from``."""


def compose(ops: Mapping[str, Op]) -> dict[str, tuple[Op, tuple[str, ...]]]:
    """For each op missing from ``ops`` whose ingredients are all in ``ops``: (composed op, ingredients)."""
    out = {}
    for name, build in BUILDERS.items():
        parts = SPECS[name].derived_from
        if name not in ops and parts and all(p in ops for p in parts):
            out[name] = (build(ops), parts)
    return out
