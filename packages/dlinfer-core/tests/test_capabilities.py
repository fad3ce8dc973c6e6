"""Typed backend capabilities: the refusals they produce, ``dlinfer info``, and the kit cases they gate."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dlinfer.plugin import Capabilities
from dlinfer.registry import REFERENCE, REGISTRY
from dlinfer.testing import cases_for
from dlinfer.testing.runner import plan, run_case


def test_attention_refusals_name_each_unserved_feature() -> None:
    ascend_like = Capabilities(head_size_multiple=16, max_head_size=256, softcap=False, alibi=False)
    assert ascend_like.attention_refusals(128) == []
    assert ascend_like.attention_refusals(128, window=True) == []
    assert ascend_like.attention_refusals(72) == ["head size 72 (a multiple of 16 is needed)"]
    assert ascend_like.attention_refusals(72, paged=False) == []  # unpaged: bound only by the maximum
    assert ascend_like.attention_refusals(320, paged=False) == ["head size 320 (at most 256)"]
    assert ascend_like.attention_refusals(576, 512) == ["head size 512/576 (at most 256)"]
    assert ascend_like.attention_refusals(256, softcap=True, alibi=True) == ["logit softcap", "ALiBi"]
    assert Capabilities(window=False).attention_refusals(64, window=True) == ["sliding window"]
    assert Capabilities().attention_refusals(576, 512, mla=True) == ["MLA"]
    assert Capabilities(mla=True).attention_refusals(576, 512, mla=True) == []


def test_every_plugin_declares_typed_capabilities() -> None:
    REGISTRY.discover()
    for name, rec in REGISTRY.records.items():
        assert rec.backend is not None
        assert isinstance(rec.backend.capabilities, Capabilities), name
        for key in ("bf16", "max_batch_size"):  # framework settings are typed fields, not extras
            assert key not in rec.backend.extras, (name, key)
    ascend = REGISTRY.records.get("ascend")
    if ascend is not None and ascend.backend is not None:
        caps = ascend.backend.capabilities
        assert (caps.head_size_multiple, caps.max_head_size, caps.softcap, caps.alibi) == (16, 256, False, False)
    camb = REGISTRY.records.get("camb")
    if camb is not None and camb.backend is not None:
        assert camb.backend.capabilities.softcap is False


def test_mla_kit_cases_run_only_where_declared(monkeypatch: pytest.MonkeyPatch) -> None:
    mla = [c for c in cases_for(size="small") if c.requires == "mla"]
    assert {c.op for c in mla} == {"paged_prefill_attention", "paged_decode_attention", "prefill_attention"}
    ref_runs = [case for case, _, _ in plan(REFERENCE, ops=["paged_decode_attention"])]
    assert any(c.requires == "mla" for c in ref_runs)
    rec = REGISTRY.records[REFERENCE]
    undeclared = dataclasses.replace(rec.backend, capabilities=Capabilities(mla=False))
    monkeypatch.setattr(rec, "backend", undeclared)
    assert not any(c.requires == "mla" for c, _, _ in plan(REFERENCE, ops=["paged_decode_attention"]))


def test_mla_kit_case_builds_a_value_cache_viewing_the_key_cache() -> None:
    case = next(c for c in cases_for("paged_decode_attention") if c.requires == "mla")
    args = case.build(torch.Generator().manual_seed(0), torch.float32, "NHD")
    kc, vc = args["key_cache"], args["value_cache"]
    assert (kc.shape[-1], vc.shape[-1]) == (576, 512)
    assert vc.data_ptr() == kc.data_ptr() and not vc.is_contiguous()
    ops = REGISTRY.load_ops(REFERENCE)
    assert run_case(case, torch.float32, ops, ops).status == "pass"


def test_framework_prefill_warmup_tokens_are_positive_ints() -> None:
    """``FrameworkSettings.prefill_warmup_tokens``: empty by default (the framework's own warm-up), refused at
    declaration when it is not a tuple of positive token counts."""
    from dlinfer.plugin import FrameworkSettings

    assert FrameworkSettings().prefill_warmup_tokens == ()
    assert FrameworkSettings(prefill_warmup_tokens=(1, 64, 1024)).prefill_warmup_tokens == (1, 64, 1024)
    for bad in ((0,), (16, -1), [16], (True,), (2.5,), ("64",)):
        with pytest.raises(ValueError, match=r"prefill_warmup_tokens must be a tuple of positive ints, got"):
            FrameworkSettings(prefill_warmup_tokens=bad)  # type: ignore[arg-type]
