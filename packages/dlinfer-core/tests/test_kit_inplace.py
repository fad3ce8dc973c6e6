"""The conformance kit on in-place ops whose mutated arguments are strided views of one buffer.

The kit must keep q and k as slices of a single fused qkv buffer through its copies, compare the mutated
views with the reference, and notice writes that land anywhere else (the v columns, cos/sin). Each broken
implementation below must be caught.
"""

from __future__ import annotations

import pytest
import torch

import dlinfer
from dlinfer.reference.ops import OPS as REF
from dlinfer.spec import SPECS
from dlinfer.testing import cases_for, run_case
from dlinfer.testing.runner import _clone, _to

OP = "apply_rotary_pos_emb_inplace"
CASES = cases_for(OP)
QKV_CASES = [c for c in CASES if c.name.endswith("-qkv")]


@pytest.fixture(scope="module", autouse=True)
def _reference_backend():
    dlinfer.activate("reference")
    yield


def _status(impl, cases=CASES, dtype=torch.float16) -> set[str]:  # noqa: ANN001
    return {run_case(c, dtype, {OP: impl}, REF, seed=11).status for c in cases}


def test_cases_cover_the_contract() -> None:
    names = [c.name for c in CASES]
    assert any(n.startswith("T1-") for n in names) and any(not n.startswith("T1-") for n in names)
    assert any("-interleaved" in n for n in names)
    assert any(n.split("-r")[1].split("-")[0] != n.split("-d")[1].split("-")[0] for n in names)  # R < D
    assert any(n.split("-h")[1].split("-")[0].split("/")[0] != n.split("/")[1].split("-")[0] for n in names)  # GQA
    assert len(QKV_CASES) == len(CASES) // 2
    assert {torch.float16, torch.bfloat16, torch.float32} <= set(CASES[0].dtypes)
    assert [c.name for c in cases_for(OP, size="large") if c.name.endswith("-qkv")]


@pytest.mark.parametrize("case", [c for c in QKV_CASES if not c.name.startswith("T1-")], ids=lambda c: c.name)
def test_fused_qkv_views_survive_the_kit_copies(case) -> None:  # noqa: ANN001
    args = case.build(torch.Generator().manual_seed(0), torch.float16, "NHD")
    q, k = args["q"], args["k"]
    hq, hkv, d = q.shape[1], k.shape[1], q.shape[2]
    assert q.stride() == ((hq + 2 * hkv) * d, d, 1) and k.stride() == q.stride()
    for copy, fresh in ((_clone(args), True), (_to(args, torch.device("cpu")), False)):
        cq, ck = copy["q"], copy["k"]
        assert cq.stride() == q.stride() and ck.stride() == k.stride()
        assert cq._base is ck._base and (cq._base is not q._base) == fresh
        assert ck.data_ptr() - cq.data_ptr() == hq * d * q.element_size()
        assert torch.equal(cq, q) and torch.equal(ck, k)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_reference_passes(dtype: torch.dtype) -> None:
    assert _status(REF[OP], dtype=dtype) == {"pass"}


def test_writing_only_q_is_caught() -> None:
    def only_q(q, k, cos, sin, *, interleaved):  # noqa: ANN001, ANN202
        q_out, _ = REF["apply_rotary_pos_emb"](q, k, cos, sin, interleaved=interleaved)
        q.copy_(q_out)

    assert _status(only_q) == {"fail"}


def test_rotating_a_contiguous_copy_is_caught() -> None:
    """The classic in-place bug: .contiguous() on a strided view, then rotate the copy."""

    def on_copy(q, k, cos, sin, *, interleaved):  # noqa: ANN001, ANN202
        REF[OP](q.contiguous(), k.contiguous(), cos, sin, interleaved=interleaved)

    strided = [c for c in QKV_CASES if not c.name.startswith("T1-")]  # one token: the slices are contiguous
    assert _status(on_copy, strided) == {"fail"}
    assert _status(on_copy, [c for c in CASES if c not in strided]) == {"pass"}  # there .contiguous() is a no-op


def test_write_into_the_v_columns_is_caught() -> None:
    def spills(q, k, cos, sin, *, interleaved):  # noqa: ANN001, ANN202
        REF[OP](q, k, cos, sin, interleaved=interleaved)
        if q._base is not None:
            q._base[:, -1] = 0.0  # the last column of v

    statuses = [run_case(c, torch.float16, {OP: spills}, REF, seed=3) for c in QKV_CASES]
    assert {r.status for r in statuses} == {"fail"}
    assert all("outside those views" in r.detail for r in statuses), statuses[0].detail


def test_pass_through_dims_are_checked() -> None:
    def zero_tail(q, k, cos, sin, *, interleaved):  # noqa: ANN001, ANN202
        REF[OP](q, k, cos, sin, interleaved=interleaved)
        r = cos.shape[-1]
        q[..., r:] = 0.0

    partial = [c for c in CASES if c.name.split("-r")[1].split("-")[0] != c.name.split("-d")[1].split("-")[0]]
    assert partial and _status(zero_tail, partial) == {"fail"}


def test_mutating_cos_is_caught() -> None:
    def scribbles(q, k, cos, sin, *, interleaved):  # noqa: ANN001, ANN202
        REF[OP](q, k, cos, sin, interleaved=interleaved)
        cos.zero_()

    assert _status(scribbles) == {"fail"}


def test_out_of_place_result_is_not_enough() -> None:
    def returns(q, k, cos, sin, *, interleaved):  # noqa: ANN001, ANN202
        return REF["apply_rotary_pos_emb"](q, k, cos, sin, interleaved=interleaved)

    assert _status(returns) == {"fail"}
    assert SPECS[OP].outputs == ()
