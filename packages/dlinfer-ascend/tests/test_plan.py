"""The once-per-step plan (Backend.prepare_metadata): every layer of a step reuses the token index and the window
masks instead of rebuilding them; outputs are identical with and without the plan; graph replay refreshes it."""

from __future__ import annotations

import pytest
import torch
from dlinfer.registry import REGISTRY
from dlinfer.testing.inputs import PagedSetup, paged_inputs
from dlinfer.testing.runner import step_metadata
from dlinfer.testing.spies import count_calls

from dlinfer_ascend.ops import attention, plan

LAYERS = 4


@pytest.fixture(autouse=True)
def _kernels() -> None:
    REGISTRY.load_ops("ascend")  # binds the (simulated) vendor kernels


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    return count_calls(monkeypatch, plan, ("token_index", "window_mask"))


def _args(op: str, setup: PagedSetup) -> dict:
    a = paged_inputs(torch.Generator().manual_seed(3), setup, torch.float16, "NHD")
    args = {"q": a["q"], "key_cache": a["key_cache"], "value_cache": a["value_cache"],
            "block_table": a["block_table"], "seqlens_kv": a["seqlens_kv"], "max_seqlen_kv": max(setup.kv_lens),
            "window": 5, "kv_layout": "NHD", "seqlens_kv_cpu": a["seqlens_kv"].clone()}
    if op == "paged_prefill_attention":
        args.update(cu_seqlens_q=a["cu_seqlens_q"], max_seqlen_q=max(setup.q_lens),
                    cu_seqlens_q_cpu=a["cu_seqlens_q"].clone())
    return args


CASES = {  # op, geometry whose route builds a token index and/or window masks
    "per-token-prefill": ("paged_prefill_attention", PagedSetup((4, 2), (70, 2), 4, 2, 64, 64, 32), 1, 1),
    "padded-bsnd-prefill": ("paged_prefill_attention", PagedSetup((5, 9), (200, 9), 4, 2, 64, 64, 128), 1, 0),
    "decode-window": ("paged_decode_attention", PagedSetup((1, 1, 1), (40, 5, 17), 4, 2, 64, 64, 16), 0, 1),
}


@pytest.mark.parametrize("name", list(CASES))
def test_builders_run_once_per_step_with_a_plan(name: str, counts: dict[str, int]) -> None:
    op, setup, index_builds, mask_builds = CASES[name]
    fn = getattr(attention, op)
    args = _args(op, setup)
    without = [fn(**args) for _ in range(LAYERS)]
    assert counts == {"token_index": LAYERS * index_builds, "window_mask": LAYERS * mask_builds}  # per layer
    counts.update(token_index=0, window_mask=0)
    step_plan = REGISTRY.records["ascend"].backend.prepare_metadata(step_metadata(op, args, "NHD"))
    with_plan = [fn(**args, plan=step_plan) for _ in range(LAYERS)]
    assert counts == {"token_index": index_builds, "window_mask": mask_builds}  # once per step
    for a, b in zip(without, with_plan, strict=True):
        assert torch.equal(a, b)


def test_a_plan_of_other_lengths_is_not_used(counts: dict[str, int]) -> None:
    op, setup, _, _ = CASES["decode-window"]
    args = _args(op, setup)
    other = dict(args, seqlens_kv=args["seqlens_kv"].clone())
    stale = REGISTRY.records["ascend"].backend.prepare_metadata(step_metadata(op, other, "NHD"))
    assert torch.equal(attention.paged_decode_attention(**args, plan=stale), attention.paged_decode_attention(**args))


def test_refresh_rewrites_the_masks_in_place() -> None:
    """Graph replay: the fixed length buffer is refilled, then plan.refresh() must rebuild the captured mask."""
    op, setup, _, _ = CASES["decode-window"]
    args = _args(op, setup)
    step_plan = REGISTRY.records["ascend"].backend.prepare_metadata(step_metadata(op, args, "NHD"))
    attention.paged_decode_attention(**args, plan=step_plan)
    (kv_dev, window, mask), = step_plan._masks.values()
    storage = mask.data_ptr()
    args["seqlens_kv"].copy_(torch.tensor([9, 33, 2], dtype=torch.int32))
    args["seqlens_kv_cpu"].copy_(args["seqlens_kv"])
    step_plan.refresh()
    assert mask.data_ptr() == storage
    assert torch.equal(mask, plan.window_mask(kv_dev, window, mask.shape[1]))
    assert torch.equal(attention.paged_decode_attention(**args, plan=step_plan),
                       attention.paged_decode_attention(**{**args, "seqlens_kv": args["seqlens_kv"].clone()}))
