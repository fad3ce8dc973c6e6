"""Dense linear on tmo.matmul (docs/vendor-semantics.md §3.13)."""

from __future__ import annotations

import torch

from dlinfer_camb.ops._common import K, require_half


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [..., IN] @ weight [OUT, IN].T + bias [OUT] -> [..., OUT]; tmo.matmul is 2-D only."""
    require_half("linear", x)
    y = K.tmo.matmul(x.reshape(-1, x.shape[-1]), weight, bias)
    return y.view(*x.shape[:-1], weight.shape[0])
