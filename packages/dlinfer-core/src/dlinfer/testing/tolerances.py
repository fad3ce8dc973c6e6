"""Per-dtype comparison tolerances of the conformance kit."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


DEFAULT: dict[torch.dtype, Tolerance] = {
    torch.float32: Tolerance(atol=1e-5, rtol=1e-5),
    torch.float16: Tolerance(atol=1e-3, rtol=1e-3),
    torch.bfloat16: Tolerance(atol=1e-2, rtol=1e-2),
}

ACCUMULATING: dict[torch.dtype, Tolerance] = {
    torch.float32: Tolerance(atol=2e-5, rtol=2e-5),
    torch.float16: Tolerance(atol=2e-3, rtol=2e-3),
    torch.bfloat16: Tolerance(atol=2e-2, rtol=2e-2),
}
"""Ops that reduce over long dimensions in a different order than the reference (attention, GEMMs, MoE)."""

UNIT_ROUNDOFF: dict[torch.dtype, float] = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
"""Half the gap between 1 and the next number of the dtype: the largest relative error of one rounding."""

INT8_ATOL = 1
"""Quantised outputs may differ by one step where rounding ties land differently."""


def tolerance(dtype: torch.dtype, accumulating: bool = False) -> Tolerance:
    table = ACCUMULATING if accumulating else DEFAULT
    return table.get(dtype, table[torch.float32])
