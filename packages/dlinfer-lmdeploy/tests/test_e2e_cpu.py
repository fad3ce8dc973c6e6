"""End to end on the CPU: lmdeploy.pipeline + dlinfer reference backend == HF transformers greedy (fp32)."""

from __future__ import annotations

import pytest

from dlinfer_lmdeploy.testing import runner

pytestmark = pytest.mark.e2e

PROMPTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "In a hole in the ground there lived a hobbit. Not a nasty, dirty, wet hole.",
]


def _check(pipe, path, hf_greedy, prompts, n):  # type: ignore[no-untyped-def]
    ids = [runner.encode(pipe, p) for p in prompts]
    got = runner.generate(pipe, prompts, n)
    want = hf_greedy(path, ids, n)
    assert got == want


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen2_moe", "mixtral"])
def test_concurrent_prompts_match_hf(kind, tiny_model, hf_greedy, op_calls):  # type: ignore[no-untyped-def]
    """Three prompts of different lengths batched together: varlen prefill without history, then decode."""
    path = tiny_model(kind)
    with runner.open_pipeline(path, runner.engine_config()) as pipe:
        op_calls.clear()
        _check(pipe, path, hf_greedy, PROMPTS, 12)
        # and one request alone (batch of one)
        _check(pipe, path, hf_greedy, PROMPTS[1:2], 6)
    assert op_calls["prefill_attention"] > 0
    assert op_calls["paged_decode_attention"] > 0
    assert op_calls["fill_kv_cache"] > 0
    assert op_calls["paged_prefill_attention"] == 0
    assert op_calls["rms_norm"] + op_calls["add_rms_norm"] > 0
    assert op_calls["apply_rotary_pos_emb"] > 0
    assert op_calls["linear"] > 0
    if kind in ("qwen2_moe", "mixtral"):
        assert op_calls["moe_gating_topk_softmax"] > 0
        assert op_calls["fused_moe"] > 0
    else:
        assert op_calls["silu_and_mul"] > 0


def test_prefix_caching_shared_prefix(tiny_model, hf_greedy, op_calls):  # type: ignore[no-untyped-def]
    """A second prompt sharing a 3-block prefix reuses cached blocks: paged prefill over history."""
    path = tiny_model("llama")
    prefix = "In a hole in the ground there lived a hobbit, not a nasty dirty wet hole. "  # > 3 blocks of 16
    with runner.open_pipeline(path, runner.engine_config(enable_prefix_caching=True)) as pipe:
        _check(pipe, path, hf_greedy, [prefix + "Filled with"], 8)
        op_calls.clear()
        _check(pipe, path, hf_greedy, [prefix + "It was a hobbit-hole"], 8)
    assert op_calls["paged_prefill_attention"] > 0, "the shared prefix was not served from the cache"


def test_chunked_prefill(tiny_model, hf_greedy, op_calls):  # type: ignore[no-untyped-def]
    """A long prompt prefilled in chunks of 16 tokens (max_prefill_token_num=16)."""
    path = tiny_model("qwen2")
    prompt = "Chunked prefill splits a long prompt into pieces that each attend to the earlier ones. " * 2
    with runner.open_pipeline(path, runner.engine_config(max_prefill_token_num=16)) as pipe:
        op_calls.clear()
        _check(pipe, path, hf_greedy, [prompt], 8)
    assert op_calls["paged_prefill_attention"] >= 5


def test_long_generation_crosses_many_blocks(tiny_model, hf_greedy):  # type: ignore[no-untyped-def]
    """Block size 16, 20-token prompt + 220 new tokens: 15 KV blocks per sequence, two sequences."""
    path = tiny_model("llama")
    with runner.open_pipeline(path, runner.engine_config()) as pipe:
        _check(pipe, path, hf_greedy, ["Once upon a time, a", "Far away"], 220)
