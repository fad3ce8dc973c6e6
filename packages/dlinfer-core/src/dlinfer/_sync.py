"""Waiting for a device's queued work (timings and checks must not read a tensor before its kernel ran)."""

from __future__ import annotations

import torch


def synchronize(device: torch.device) -> None:
    """Block until every kernel queued on ``device`` finished; nothing to wait for on the CPU.

    ``torch.accelerator`` (torch >= 2.6) where it exists; before it, the device type's own module (``torch.cuda``,
    ``torch.npu`` of torch_npu, ``torch.mlu`` of torch_mlu), which every supported torch (>= 2.4) has. A device
    type with neither is an error: a timing or a check without a sync would measure launches or race the kernel.
    """
    if device.type == "cpu":
        return
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "synchronize"):
        accelerator.synchronize()
        return
    module = getattr(torch, device.type, None)
    if module is None or not hasattr(module, "synchronize"):
        raise RuntimeError(f"cannot synchronize device type '{device.type}': torch {torch.__version__} has no "
                           f"torch.accelerator and no torch.{device.type}.synchronize")
    module.synchronize()
