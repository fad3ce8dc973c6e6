"""Simulated torch_npu.contrib.transfer_to_npu (docs/vendor-semantics.md §2.28,
PT:torch_npu/contrib/transfer_to_npu.py).

Imported for its side effects: torch.cuda -> torch.npu, Tensor.cuda -> the NPU, torch.distributed
backend nccl -> hccl, triton disabled, torch.compile replaced. ``_undo`` exists for tests only.
"""

import torch
import torch.distributed as dist
import torch.utils._triton as _triton

_ORIG = {
    "cuda": torch.cuda,
    "Tensor.cuda": torch.Tensor.cuda,
    "compile": torch.compile,
    "has_triton": _triton.has_triton,
    "init_process_group": dist.init_process_group,
}


def _tensor_cuda(self, device=None, non_blocking=False, **kwargs):
    return self.to("cpu", non_blocking=non_blocking)  # the simulated NPU is the CPU


def _init_process_group(backend=None, *args, **kwargs):
    if backend == "nccl":
        backend = "hccl"
    return _ORIG["init_process_group"](backend, *args, **kwargs)


def _npu_compile(*args, **kwargs):
    raise RuntimeError("transfer_to_npu replaced torch.compile (simulated)")


torch.cuda = torch.npu
torch.Tensor.cuda = _tensor_cuda
torch.compile = _npu_compile
_triton.has_triton = lambda: False
dist.init_process_group = _init_process_group


def _undo():
    torch.cuda = _ORIG["cuda"]
    torch.Tensor.cuda = _ORIG["Tensor.cuda"]
    torch.compile = _ORIG["compile"]
    _triton.has_triton = _ORIG["has_triton"]
    dist.init_process_group = _ORIG["init_process_group"]
