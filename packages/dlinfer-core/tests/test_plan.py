"""The per-step plan (``Backend.prepare_metadata``): the spec's ``plan`` keyword, dispatch and the kit's check."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dlinfer._codegen import schema
from dlinfer.registry import REFERENCE, REGISTRY, drops_plan, signature_mismatch
from dlinfer.spec import SPECS
from dlinfer.testing.cases import cases_for
from dlinfer.testing.runner import run_case, step_metadata

ATTENTION = ("prefill_attention", "paged_prefill_attention", "paged_decode_attention")


def test_attention_ops_declare_an_eager_only_plan() -> None:
    for name in ATTENTION:
        p = SPECS[name].param("plan")
        assert p.kind == "plan" and p.optional and p.keyword_only
        assert "plan" not in schema(SPECS[name])  # never part of a traced graph
    assert all(p.kind != "plan" for s in SPECS.values() if s.name not in ATTENTION for p in s.params)


def test_an_implementation_without_plan_registers_and_never_receives_it() -> None:
    seen: list[dict[str, Any]] = []

    def old(q, key_cache, value_cache, block_table, seqlens_kv, *, max_seqlen_kv, scale, window,  # noqa: ANN001, ANN202
            softcap, alibi_slopes, kv_layout, seqlens_kv_cpu):
        seen.append({"window": window})
        return q

    def new(q, key_cache, value_cache, block_table, seqlens_kv, *, max_seqlen_kv, scale, window,  # noqa: ANN001, ANN202
            softcap, alibi_slopes, kv_layout, seqlens_kv_cpu, plan=None):
        seen.append({"plan": plan})
        return q

    op = "paged_decode_attention"
    assert signature_mismatch(op, old) is None and signature_mismatch(op, new) is None
    assert drops_plan(op, new) is new
    wrapped = drops_plan(op, old)
    q = torch.zeros(1)
    wrapped(q, None, None, None, None, max_seqlen_kv=1, scale=None, window=3, softcap=None, alibi_slopes=None,
            kv_layout="NHD", seqlens_kv_cpu=None, plan=object())
    token = object()
    new(q, None, None, None, None, max_seqlen_kv=1, scale=None, window=3, softcap=None, alibi_slopes=None,
        kv_layout="NHD", seqlens_kv_cpu=None, plan=token)
    assert seen == [{"window": 3}, {"plan": token}]
    assert drops_plan("rms_norm", old) is old  # ops without a plan keyword are untouched


def test_public_op_passes_the_plan_to_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    import dlinfer
    from dlinfer import dispatch

    dlinfer.activate(REFERENCE)
    got: list[object] = []
    ref = dispatch.TABLE.paged_decode_attention

    def spy(*args: Any, plan: object = None, **kwargs: Any) -> torch.Tensor:
        got.append(plan)
        return ref(*args, plan=plan, **kwargs)

    monkeypatch.setattr(dispatch.TABLE, "paged_decode_attention", spy)
    case = next(c for c in cases_for("paged_decode_attention") if c.option is None)
    args = case.build(torch.Generator().manual_seed(0), torch.float32, "NHD")
    token = object()
    out = dlinfer.ops.paged_decode_attention(**args, plan=token)
    assert got == [token] and out.shape[0] == args["q"].shape[0]


@pytest.mark.parametrize("op", ATTENTION)
def test_kit_fails_an_op_whose_plan_changes_the_output(op: str) -> None:
    reference = REGISTRY.load_ops(REFERENCE)
    built: list[Any] = []

    def prepare(step: Any) -> str:
        built.append(step)
        return "plan"

    def faithful(*args: Any, plan: object = None, **kwargs: Any) -> torch.Tensor:
        return reference[op](*args, **kwargs)

    def drifting(*args: Any, plan: object = None, **kwargs: Any) -> torch.Tensor:
        out = reference[op](*args, **kwargs)
        return out * 1.001 if plan is not None else out

    case = next(c for c in cases_for(op) if c.option is None)
    ok = run_case(case, torch.float32, {op: faithful}, reference, prepare_metadata=prepare)
    assert ok.status == "pass", ok.detail
    assert built and built[-1].cu_seqlens_q.dtype == torch.int32
    bad = run_case(case, torch.float32, {op: drifting}, reference, prepare_metadata=prepare)
    assert bad.status == "fail" and "with the backend's plan" in bad.detail


def test_step_metadata_of_kit_arguments_keeps_the_call_tensors() -> None:
    case = next(c for c in cases_for("paged_prefill_attention") if c.option is None)
    args = case.build(torch.Generator().manual_seed(1), torch.float32, "HND")
    step = step_metadata("paged_prefill_attention", args, "HND")
    assert step.cu_seqlens_q is args["cu_seqlens_q"] and step.seqlens_kv is args["seqlens_kv"]
    assert step.block_size == args["key_cache"].shape[2] and not step.decode
