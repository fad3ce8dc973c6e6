"""The once-per-step plan (Backend.prepare_metadata): every layer of a step reuses the cumulative KV lengths and
the context packing index instead of rebuilding them (the packing index was built twice per layer, for K and V);
outputs are identical with and without the plan; graph replay refreshes it in place."""

from __future__ import annotations

import pytest
import torch

from dlinfer.registry import REGISTRY
from dlinfer.testing.inputs import PagedSetup, paged_inputs
from dlinfer.testing.runner import step_metadata
from dlinfer.testing.spies import count_calls
from dlinfer_camb.ops import attention, plan

LAYERS = 4


def _prepare():  # noqa: ANN202
    REGISTRY.discover()
    return REGISTRY.records["camb"].backend.prepare_metadata


@pytest.fixture
def counts(camb_ops: dict, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    return count_calls(monkeypatch, plan, ("packed_index", "cumulative"))


def _args(op: str, setup: PagedSetup) -> dict:
    a = paged_inputs(torch.Generator().manual_seed(5), setup, torch.float16, "HND")
    args = {"q": a["q"], "key_cache": a["key_cache"], "value_cache": a["value_cache"],
            "block_table": a["block_table"], "seqlens_kv": a["seqlens_kv"], "max_seqlen_kv": max(setup.kv_lens),
            "scale": None, "window": 5, "softcap": None, "alibi_slopes": None, "kv_layout": "HND",
            "seqlens_kv_cpu": None}
    if op == "paged_prefill_attention":
        args.update(cu_seqlens_q=a["cu_seqlens_q"], max_seqlen_q=max(setup.q_lens), causal=True,
                    cu_seqlens_q_cpu=None)
    return args


CASES = {  # op, geometry, (packing index, cumulative) builds per step
    "prefill-gathered": ("paged_prefill_attention", PagedSetup((5, 9), (70, 9), 8, 2, 64, 64, 32), 1, 1),
    "prefill-paged": ("paged_prefill_attention", PagedSetup((5, 9), (70, 9), 8, 2, 64, 64, 16), 0, 1),
    "decode-gathered": ("paged_decode_attention", PagedSetup((1, 1, 1), (70, 1, 129), 8, 2, 64, 64, 128), 1, 1),
}


@pytest.mark.parametrize("name", list(CASES))
def test_builders_run_once_per_step_with_a_plan(name: str, counts: dict[str, int]) -> None:
    op, setup, packs, cums = CASES[name]
    fn = getattr(attention, op)
    args = _args(op, setup)
    without = [fn(**args) for _ in range(LAYERS)]
    assert counts == {"packed_index": LAYERS * packs, "cumulative": LAYERS * cums}  # per layer
    counts.update(packed_index=0, cumulative=0)
    step_plan = _prepare()(step_metadata(op, args, "HND"))
    with_plan = [fn(**args, plan=step_plan) for _ in range(LAYERS)]
    assert counts == {"packed_index": packs, "cumulative": cums}  # once per step
    for a, b in zip(without, with_plan, strict=True):
        assert torch.equal(a, b)


def test_refresh_rewrites_the_cumulative_lengths_in_place(camb_ops: dict) -> None:
    op, setup, _, _ = CASES["prefill-paged"]
    args = _args(op, setup)
    step_plan = _prepare()(step_metadata(op, args, "HND"))
    cu = step_plan.cu_kv()
    args["seqlens_kv"].copy_(torch.tensor([40, 9], dtype=torch.int32))
    step_plan.refresh()
    assert step_plan.cu_kv() is cu and cu.tolist() == [0, 40, 49]
