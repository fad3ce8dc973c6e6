"""Strided activations (LMDeploy's q/k/v, head slices of the fused qkv projection output) reach the tmo kernels
only as dense tensors.

docs/vendor-semantics.md §3.4 (reshape_paged_cache), §3.5 (flash_attention) and §3.6 (single_query_cached_kv_attn) give
shapes and dtypes but say nothing about strides, so the adaptor copies strided inputs first (README UNCONFIRMED
13). The simulator computes through Python indexing and would serve any strides; this spy checks the adaptor side.
"""

from __future__ import annotations

import sys

import pytest
import torch

from dlinfer.registry import REFERENCE, REGISTRY
from dlinfer.testing import cases_for, run_case

KERNELS = ("reshape_paged_cache", "flash_attention", "single_query_cached_kv_attn")
OPS = ("fill_kv_cache", "prefill_attention", "paged_prefill_attention", "paged_decode_attention")
QKV_CASES = [c for op in OPS for c in cases_for(op) if c.name.endswith("-qkv")]


@pytest.fixture
def strided_args(camb_ops: dict) -> list:
    """(kernel, argument name or position, shape, strides) of every non-contiguous tensor a tmo kernel receives."""
    seen: list = []
    tmo = sys.modules["torch_mlu_ops"]
    for name in KERNELS:
        fn = getattr(tmo, name)

        def wrapped(*a, _fn=fn, _name=name, **k):
            for key, t in [*enumerate(a), *k.items()]:
                if isinstance(t, torch.Tensor) and not t.is_contiguous():
                    seen.append((_name, key, tuple(t.shape), t.stride()))
            return _fn(*a, **k)
        setattr(tmo, name, wrapped)
    return seen


def test_cases_are_strided() -> None:
    assert {c.op for c in QKV_CASES} == set(OPS)


@pytest.mark.parametrize("case", QKV_CASES, ids=lambda c: f"{c.op}-{c.name}")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_qkv_slices_reach_the_kernels_dense(camb_ops: dict, strided_args: list, case, dtype: torch.dtype
                                           ) -> None:  # noqa: ANN001
    REGISTRY.discover()
    res = run_case(case, dtype, camb_ops, REGISTRY.load_ops(REFERENCE), layout="HND", seed=3,
                   prepare_metadata=REGISTRY.records["camb"].backend.prepare_metadata)
    assert res.status == "pass", res.detail
    assert strided_args == []
