"""Simulated torch_npu (tests only). Importing it registers torch.npu and torch.ops.npu, as the real one does."""

import sys

import torch
from npu_sim import device, ops_tables

__version__ = ops_tables.SIM_VERSION["torch_npu"]
npu = device.make_module()
sys.modules["torch_npu.npu"] = npu
torch.npu = npu
torch.ops.npu = ops_tables.npu_namespace()
