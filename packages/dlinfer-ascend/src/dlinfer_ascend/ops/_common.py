"""Small helpers shared by the op modules: refusals, host lengths, softmax scale."""

from __future__ import annotations

import math

import torch

BACKEND = "ascend"


def unsupported(op: str, option: str, why: str = "") -> NotImplementedError:
    """NotImplementedError naming the op, the option and the backend."""
    tail = f" ({why})" if why else ""
    return NotImplementedError(f"dlinfer.ops.{op}: option '{option}' is not supported by backend "
                               f"'{BACKEND}'{tail}")


def host(mirror: torch.Tensor | None, device_tensor: torch.Tensor) -> torch.Tensor:
    """The host copy of a length tensor: the framework's mirror, else a (synchronising) copy."""
    if mirror is not None:
        return mirror if mirror.dtype == torch.int32 else mirror.to(torch.int32)
    return device_tensor.to("cpu", torch.int32)


def softmax_scale(scale: float | None, head_dim: int) -> float:
    """FIA/ATB default the scale to 1.0, the spec to 1/sqrt(D): always pass it explicitly."""
    return float(scale) if scale is not None else 1.0 / math.sqrt(head_dim)


def check_layout(op: str, kv_layout: str | None) -> None:
    """This backend stores KV blocks as NHD only."""
    if kv_layout not in (None, "NHD"):
        raise unsupported(op, "kv_layout", f"'{kv_layout}'; the Ascend kernels here serve NHD caches")


def refuse_score_options(op: str, softcap: float | None, alibi_slopes: torch.Tensor | None) -> None:
    """FIA / ATB attention as used here take neither a logit softcap nor ALiBi slopes."""
    if softcap is not None:
        raise unsupported(op, "softcap", "no Ascend attention kernel applies tanh soft-capping")
    if alibi_slopes is not None:
        raise unsupported(op, "alibi_slopes", "ALiBi bias is not wired to the Ascend kernels")


def check_half(op: str, t: torch.Tensor) -> None:
    """Ascend attention kernels take fp16/bf16 only."""
    if t.dtype not in (torch.float16, torch.bfloat16):
        raise NotImplementedError(f"dlinfer.ops.{op}: dtype {t.dtype} is not supported by backend "
                                  f"'{BACKEND}' (the attention kernels take float16/bfloat16)")
