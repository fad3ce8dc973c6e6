"""Argument-contract helpers shared by the simulated vendor functions.

The simulator runs on CPU: the simulated NPU device *is* the CPU device, so the
host-vs-device check below can only reject lists where tensors are required and
non-CPU tensors where host data is required. Value-level contracts (cumulative vs
per-sequence lengths, dtypes, shapes, mask contents) are enforced fully.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: torch device type that stands in for ``npu`` in the simulator.
SIM_DEVICE_TYPE = "cpu"


class NpuContractError(RuntimeError):
    """A call violates the documented argument contract of a vendor function."""


class NotModelled(NotImplementedError):
    """A documented feature of the vendor function that the simulator does not model."""


class Unconfirmed(RuntimeError):
    """The documentation leaves this behaviour open (docs/vendor-semantics.md §5); the simulator refuses to guess."""


def check(cond: bool, fn: str, msg: str) -> None:
    """Raise NpuContractError(``fn: msg``) unless ``cond``."""
    if not cond:
        raise NpuContractError(f"{fn}: {msg}")


def host_ints(fn: str, name: str, value: object, *, tensor_only: bool = False) -> list[int]:
    """Read a host-side integer array: a Python list/tuple or a 1-D integer CPU tensor.

    ``tensor_only`` is the ATB rule (docs/vendor-semantics.md §1.5): host data must be a CPU int32 tensor.
    """
    if isinstance(value, torch.Tensor):
        check(value.device.type == "cpu", fn, f"{name} must be host (CPU) data, got {value.device}")
        check(value.dim() == 1, fn, f"{name} must be 1-D, got shape {tuple(value.shape)}")
        check(not value.is_floating_point() and not value.is_complex() and value.dtype != torch.bool,
              fn, f"{name} must be integer, got {value.dtype}")
        if tensor_only:
            check(value.dtype == torch.int32, fn, f"{name} must be int32, got {value.dtype}")
        return [int(v) for v in value.tolist()]
    check(not tensor_only, fn, f"{name} must be a CPU int32 tensor, got {type(value).__name__}")
    check(isinstance(value, Sequence) and all(isinstance(v, int) for v in value), fn,
          f"{name} must be a list of ints or a 1-D integer CPU tensor, got {type(value).__name__}")
    return [int(v) for v in value]  # type: ignore[union-attr]


def device_tensor(fn: str, name: str, t: object, *, dtypes: Sequence[torch.dtype] | None = None,
                  dim: int | None = None) -> torch.Tensor:
    """Check that ``t`` is a tensor on the (simulated) device with an allowed dtype and rank."""
    check(isinstance(t, torch.Tensor), fn, f"{name} must be a device tensor, got {type(t).__name__}")
    assert isinstance(t, torch.Tensor)
    check(t.device.type == SIM_DEVICE_TYPE, fn, f"{name} must be on the device, got {t.device}")
    if dtypes is not None:
        check(t.dtype in dtypes, fn, f"{name} dtype must be one of {list(dtypes)}, got {t.dtype}")
    if dim is not None:
        check(t.dim() == dim, fn, f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    return t


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HALF_DTYPES = (torch.float16, torch.bfloat16)
