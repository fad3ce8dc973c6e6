"""Features served or refused when the engine is built: typed backend capabilities, MLA, speculative decoding;
and the multi-token decode step metadata (speculative decoding's ``num_spec_tokens + 1`` query tokens)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import dlinfer_lmdeploy  # noqa: F401 - applies the inventory

_SPEC = dict(
    num_heads=4,
    head_dim=64,
    scale=None,
    num_kv_heads=2,
    v_head_dim=64,
    alibi=False,
    sliding_window=None,
    logit_softcapping=0.0,
    causal=True,
    use_flash_mla=False,
    mla_index_topk=None,
    learnable_sink=False,
    block_sparse_size=1,
)


def _paged(**overrides: Any) -> Any:
    from lmdeploy.pytorch.backends.attention import PagedAttentionBuildSpec

    return PagedAttentionBuildSpec(**{**_SPEC, **overrides})


def _backend(device: str) -> Any:
    from lmdeploy.pytorch.backends.selector import get_backend

    return get_backend(device)


# -- capabilities checked by build_op ----------------------------------------------------------------------------
def test_reference_device_builds_every_attention_option() -> None:
    cpu = _backend("cpu")
    for overrides in ({}, {"logit_softcapping": 50.0}, {"alibi": True}, {"sliding_window": 4}, {"head_dim": 72,
                                                                                                  "v_head_dim": 72}):
        cpu.build_op(_paged(**overrides))


@pytest.mark.parametrize(
    ("overrides", "needs"),
    [
        ({"logit_softcapping": 50.0}, "logit softcap"),  # Gemma-2
        ({"alibi": True}, "ALiBi"),  # Baichuan-13B, BLOOM
        ({"head_dim": 72, "v_head_dim": 72}, "head size 72 (a multiple of 16 is needed)"),
        ({"head_dim": 320, "v_head_dim": 320}, "head size 320 (at most 256)"),
    ],
)
def test_ascend_refuses_at_build_what_its_capabilities_exclude(
    monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any], needs: str
) -> None:
    """On the Ascend plugin's declaration: refused by build_op, before any forward, naming feature and device."""
    import dataclasses

    from dlinfer_ascend.plugin import dlinfer_backend

    from dlinfer_lmdeploy.ops_backend import DlinferOpsBackend

    ascend = type("AscendOps", (DlinferOpsBackend,), {"device_name": "ascend", "plugin": dlinfer_backend()})
    ascend.build_op(_paged())  # head 64, no options: served
    ascend.build_op(_paged(sliding_window=8))
    with pytest.raises(NotImplementedError) as err:
        ascend.build_op(_paged(**overrides))
    assert needs in str(err.value) and "'ascend'" in str(err.value) and "dlinfer info" in str(err.value)
    # the capability, not a hard-coded rule: a declaration that serves the feature builds it
    serving = dataclasses.replace(dlinfer_backend(), capabilities=dataclasses.replace(
        dlinfer_backend().capabilities, softcap=True, alibi=True, head_size_multiple=8, max_head_size=None))
    type("AscendServing", (DlinferOpsBackend,), {"device_name": "ascend", "plugin": serving}).build_op(
        _paged(**overrides))


def test_vision_flash_attention_is_checked_too() -> None:
    from dlinfer_ascend.plugin import dlinfer_backend
    from lmdeploy.pytorch.backends.flash_attention import FlashAttentionBuildSpec

    from dlinfer_lmdeploy.ops_backend import DlinferOpsBackend

    ascend = type("AscendOps", (DlinferOpsBackend,), {"device_name": "ascend", "plugin": dlinfer_backend()})
    spec = dict(num_heads=4, head_dim=80, scale=None, num_kv_heads=4, v_head_dim=80, causal=False,
                sliding_window=None, logit_softcapping=0.0)
    ascend.build_op(FlashAttentionBuildSpec(**spec))
    # unpaged (ATB SelfAttention): any head size up to 256, e.g. Qwen3-VL's vision head 72
    ascend.build_op(FlashAttentionBuildSpec(**{**spec, "head_dim": 72, "v_head_dim": 72}))
    with pytest.raises(NotImplementedError, match="head size 320"):
        ascend.build_op(FlashAttentionBuildSpec(**{**spec, "head_dim": 320, "v_head_dim": 320}))
    with pytest.raises(NotImplementedError, match="logit softcap"):
        ascend.build_op(FlashAttentionBuildSpec(**{**spec, "logit_softcapping": 30.0}))


def test_mla_is_refused_at_build_naming_the_model_family() -> None:
    """DeepSeek-V2/V3 and Kimi-K2 build paged attention with head 576 and V head 512 (LMDeploy without FlashMLA)."""
    with pytest.raises(NotImplementedError) as err:
        _backend("cpu").build_op(_paged(num_heads=16, head_dim=576, num_kv_heads=1, v_head_dim=512))
    msg = str(err.value)
    assert "DeepSeek-V2/V3" in msg and "Kimi-K2" in msg and "576" in msg and "'cpu'" in msg


@pytest.mark.e2e
def test_deepseek_v2_engine_build_is_refused_naming_mla(tmp_path: Any) -> None:
    """A tiny DeepSeek-V2 checkpoint on the CPU device: refused when the engine is built, naming MLA (LMDeploy's
    FlashMLA probe exited the process on a CPU-only torch before: patch flash-mla-probe)."""
    import transformers as tf

    from dlinfer_lmdeploy.testing import runner, tiny_models

    config = tf.DeepseekV2Config(
        **{k: v for k, v in tiny_models._COMMON.items() if k != "num_key_value_heads"},
        num_key_value_heads=4, kv_lora_rank=32, q_lora_rank=None, qk_rope_head_dim=16, qk_nope_head_dim=16,
        v_head_dim=16, first_k_dense_replace=2, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
        moe_intermediate_size=32,
    )
    config.architectures = ["DeepseekV2ForCausalLM"]
    tiny_models._save(tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32), tmp_path, torch.float32)
    with pytest.raises(NotImplementedError) as err, runner.open_pipeline(tmp_path, runner.engine_config()):
        pass
    msg = str(err.value)
    assert "MLA" in msg and "DeepSeek-V2/V3" in msg and "head size 48, V head size 32" in msg and "'cpu'" in msg


@pytest.mark.parametrize(
    ("kwargs", "what"), [({"bias": True}, "expert biases"), ({"act_func": torch.relu}, "act_func")]
)
def test_moe_biases_and_custom_activation_are_refused_when_the_layer_is_built(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any], what: str
) -> None:
    """GPT-OSS builds LMDeploy's FusedMoE with expert biases (and its own gated activation): refused when the layer
    is built on a dlinfer device (was: at the first forward). (A GPT-OSS engine cannot be built here: LMDeploy's
    GPT-OSS tokenizer needs openai_harmony.)"""
    from lmdeploy.pytorch.nn.moe.default import FusedMoE

    from dlinfer_lmdeploy import devices

    monkeypatch.setattr(devices, "active", lambda: "cpu")
    with pytest.raises(NotImplementedError) as err:
        FusedMoE(hidden_dim=16, ffn_dim=8, num_experts=4, top_k=2, **kwargs)
    assert what in str(err.value) and "'cpu'" in str(err.value)


def test_bf16_and_max_batch_size_come_from_typed_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from lmdeploy.utils import get_max_batch_size, is_bf16_supported

    from dlinfer_lmdeploy import devices

    device = devices.get("cpu")
    assert is_bf16_supported("cpu") and get_max_batch_size("cpu") == 16
    narrowed = dataclasses.replace(device.backend, dtypes=(torch.float16, torch.float32), max_batch_size=3,
                                   extras={"bf16": True, "max_batch_size": 99})  # extras are display only
    original_get = devices.get
    monkeypatch.setattr(devices, "get", lambda name: dataclasses.replace(device, backend=narrowed) if name == "cpu"
                        else original_get(name))
    assert is_bf16_supported("cpu") is False
    assert get_max_batch_size("cpu") == 3


# -- speculative decoding ----------------------------------------------------------------------------------------
def test_speculative_decoding_is_refused_at_engine_build_off_the_host() -> None:
    """Served on the CPU device (tests/test_spec_decode.py); refused on an accelerator device, where it was never run
    end to end, before the executor builds anything."""
    from types import SimpleNamespace

    from lmdeploy.pytorch.engine import executor

    from dlinfer_lmdeploy import devices

    assert not devices.get("ascend").on_host
    with pytest.raises(NotImplementedError) as err:
        executor.build_executor("/nonexistent", device_type="ascend", specdecode_config=SimpleNamespace(method="eagle"))
    msg = str(err.value)
    assert "speculative decoding" in msg and "'ascend'" in msg and "speculative_config" in msg


def _step_context(q_lens: list[int], kv_lens: list[int], bs: int, is_decoding: bool, k_cache: torch.Tensor) -> Any:
    gen = torch.Generator().manual_seed(1)
    batch = len(q_lens)
    max_blocks = max(-(-kv // bs) for kv in kv_lens) + 1
    block_offsets = torch.randperm(k_cache.shape[0], generator=gen)[: batch * max_blocks].view(batch, max_blocks)
    q = torch.tensor(q_lens)
    return SimpleNamespace(
        kv_caches=[(k_cache, k_cache)],
        q_seqlens=q,
        kv_seqlens=torch.tensor(kv_lens),
        q_start_loc=torch.cumsum(q, 0) - q,
        block_offsets=block_offsets,
        input_ids=torch.zeros(1, sum(q_lens), dtype=torch.long),
        is_decoding=is_decoding,
        max_q_seqlen=max(q_lens),
        max_kv_seqlen=max(kv_lens),
        sum_kv_seqlen=sum(kv_lens),
        kv_quant_policy=0,
    )


def test_multi_token_decode_metadata_covers_every_new_token() -> None:
    """A decode step with 3 query tokens per sequence (2 speculative tokens): a slot per new token, max_q = 3,
    cumulative offsets of 3 tokens each (the old metadata built one slot per sequence and max_q = 1)."""
    from dlinfer_lmdeploy import devices, metadata

    bs = 4
    k_cache = torch.zeros(64, bs, 2, 8)
    q_lens, kv_lens = [3, 3, 3], [9, 17, 3]
    ctx = _step_context(q_lens, kv_lens, bs, True, k_cache)
    md = metadata.build(ctx, devices.get("cpu").backend)
    assert md.is_decoding and md.multi_token_decode and md.max_q_seqlen == 3
    assert md.cu_seqlens_q.tolist() == [0, 3, 6, 9]
    want = [int(ctx.block_offsets[b, p // bs]) * bs + p % bs for b, kv in enumerate(kv_lens) for p in range(kv - 3, kv)]
    assert md.slot_mapping.tolist() == want
    one = metadata.build(_step_context([1, 1, 1], kv_lens, bs, True, k_cache), devices.get("cpu").backend).finalize()
    assert not one.multi_token_decode and one.max_q_seqlen == 1 and one.slot_mapping.numel() == 3


def test_multi_token_decode_attention_matches_causal_attention_over_the_cache() -> None:
    """The attention layer on that metadata: K/V of the 2x3 new tokens land in their slots and each query sees
    the cache up to its own position (independent loop below, not dlinfer)."""
    import dlinfer

    from dlinfer_lmdeploy import devices, metadata
    from dlinfer_lmdeploy.impls.attention import DlinferPagedAttentionImpl

    dlinfer.activate("reference")
    bs, hq, hkv, d = 4, 4, 2, 8
    q_lens, kv_lens = [3, 3], [10, 5]
    gen = torch.Generator().manual_seed(7)
    k_cache = torch.randn(32, bs, hkv, d, generator=gen)
    v_cache = torch.randn(32, bs, hkv, d, generator=gen)
    ctx = _step_context(q_lens, kv_lens, bs, True, k_cache)
    md = metadata.build(ctx, devices.get("cpu").backend)
    t = sum(q_lens)
    q, k, v = (torch.randn(t, h, d, generator=gen) for h in (hq, hkv, hkv))
    impl = DlinferPagedAttentionImpl(num_heads=hq, head_size=d, scale=None, num_kv_heads=hkv, v_head_size=d)
    out = impl.forward(q, k, v, k_cache, v_cache, md)
    assert out.shape == (t, hq, d)
    start = 0
    for b, (n, kv) in enumerate(zip(q_lens, kv_lens, strict=True)):
        pos = torch.arange(kv)
        slots = ctx.block_offsets[b, pos // bs] * bs + pos % bs
        keys = k_cache.view(-1, hkv, d)[slots]
        vals = v_cache.view(-1, hkv, d)[slots]
        torch.testing.assert_close(keys[kv - n :], k[start : start + n])  # written into the right slots
        for i in range(n):
            p = kv - n + i
            for h in range(hq):
                s = (keys[: p + 1, h // 2] @ q[start + i, h]) / math.sqrt(d)
                want = torch.softmax(s, 0) @ vals[: p + 1, h // 2]
                torch.testing.assert_close(out[start + i, h], want, rtol=1e-5, atol=1e-5)
        start += n
