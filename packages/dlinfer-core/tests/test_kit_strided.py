"""The conformance kit on read-only inputs that are strided views of one fused qkv buffer.

LMDeploy hands the attention Impl q, k and v as head slices of the fused qkv projection output
(``qkv.view(T, Hq + 2*Hkv, D).split((Hq, Hkv, Hkv), dim=1)``): token stride (Hq + 2*Hkv)*D, not H*D. The kit's
``-qkv`` cases pass exactly such views to fill_kv_cache and the attention ops; a kernel that reads them as if they
were dense must fail them.
"""

from __future__ import annotations

import pytest
import torch

import dlinfer
from dlinfer.reference.ops import OPS as REF
from dlinfer.spec import SPECS
from dlinfer.testing import cases_for, run_case
from dlinfer.testing.oracles import ORACLES
from dlinfer.testing.runner import _clone, _to

STRIDED = {  # op -> the arguments sliced out of the fused qkv buffer
    "fill_kv_cache": ("key", "value"),
    "prefill_attention": ("q", "k", "v"),
    "paged_prefill_attention": ("q",),
    "paged_decode_attention": ("q",),
}
CASES = [c for op in STRIDED for c in cases_for(op) if c.name.endswith("-qkv")]


@pytest.fixture(scope="module", autouse=True)
def _reference_backend():
    dlinfer.activate("reference")
    yield


def _dense_strides(shape: torch.Size) -> tuple[int, ...]:
    return torch.empty(shape, device="meta").stride()


def test_every_op_has_strided_cases_and_few_of_them() -> None:
    for op in STRIDED:
        mine = [c for c in CASES if c.op == op]
        assert 1 <= len(mine) <= 2, op
        assert all(c.option is None and c.size == "small" and c.requires is None for c in mine)
    assert not [c for c in cases_for(size="large") if c.name.endswith("-qkv") and c.op in STRIDED]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.op}-{c.name}")
def test_views_are_lmdeploys_and_survive_the_kit_copies(case) -> None:  # noqa: ANN001
    args = case.build(torch.Generator().manual_seed(0), torch.float16, "NHD")
    names = STRIDED[case.op]
    views = [args[n] for n in names]
    base = views[0]._base
    assert base is not None and base.is_contiguous() and all(v._base is base for v in views)
    d = views[0].shape[-1]
    row = base.shape[-1]  # (Hq + 2*Hkv) * D
    assert row % d == 0
    for name, v in zip(names, views):
        assert v.stride() == (row, d, 1) and not v.is_contiguous()
        hkv = v.shape[1]  # the q | k | v column order of the fused projection
        want = {"q": 0, "k": row - 2 * hkv * d, "key": row - 2 * hkv * d}.get(name, row - hkv * d)
        assert v.storage_offset() == want, name
    for copy, fresh in ((_clone(args), True), (_to(args, torch.device("cpu")), False)):
        copied = [copy[n] for n in names]
        assert all(c.stride() == v.stride() for c, v in zip(copied, views))
        assert all(c._base is copied[0]._base for c in copied) and (copied[0]._base is not base) == fresh
        assert all(torch.equal(c, v) for c, v in zip(copied, views))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_reference_passes(dtype: torch.dtype) -> None:
    layouts = ("NHD", "HND")
    assert {run_case(c, dtype, REF, REF, layout=lay, seed=7).status for c in CASES for lay in layouts} == {"pass"}


def test_reference_agrees_with_the_oracles() -> None:
    res = [run_case(c, torch.float32, REF, ORACLES, layout=lay, seed=9) for c in CASES for lay in ("NHD", "HND")]
    assert [(r.op, r.case, r.layout, r.detail) for r in res if not r.ok] == []


def _reads_as_dense(op: str):  # noqa: ANN202
    """The reference op, but every strided argument read as if it were dense from its first element: what a
    kernel that takes the data pointer and assumes token stride H*D computes."""
    names = STRIDED[op]

    def impl(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        pos = [p.name for p in SPECS[op].params if not p.keyword_only]
        args = list(args)
        for name in names:
            i = pos.index(name)
            x = args[i]
            args[i] = x.as_strided(x.shape, _dense_strides(x.shape), x.storage_offset())
        return REF[op](*args, **kwargs)

    return impl


@pytest.mark.parametrize("op", sorted(STRIDED))
def test_a_kernel_ignoring_the_strides_is_caught(op: str) -> None:
    cases = [c for c in CASES if c.op == op]
    assert {run_case(c, torch.float16, {op: _reads_as_dense(op)}, REF, seed=5).status for c in cases} == {"fail"}
    dense = [c for c in cases_for(op) if c.option is None and not c.name.endswith("-qkv") and c.requires is None]
    assert {run_case(dense[0], torch.float16, {op: _reads_as_dense(op)}, REF, seed=5).status} == {"pass"}


def test_a_contiguous_copy_first_passes() -> None:
    """The fix an adaptor applies when its kernel's stride support is undocumented."""
    for case in CASES:
        names = STRIDED[case.op]

        def copy_first(*args, _op=case.op, _names=names, **kwargs):  # noqa: ANN002, ANN003, ANN202
            pos = [p.name for p in SPECS[_op].params if not p.keyword_only]
            args = [a.contiguous() if n in _names else a for n, a in zip(pos, args)]
            return REF[_op](*args, **kwargs)

        assert run_case(case, torch.float16, {case.op: copy_first}, REF, seed=5).status == "pass", case.name
