"""Speculative decoding (LMDeploy's ``ar_spec``, EAGLE draft) on the CPU device == greedy decoding without it.

Greedy speculative decoding must return exactly the target model's greedy tokens whatever the draft proposes. The
draft is a tiny random EAGLE head; every verification step is a decode step with ``num_speculative_tokens + 1``
query tokens per sequence (a multi-token decode: a KV slot per new token, paged prefill attention over the cache).
The target's LM head is restricted to four tokens (rows w1, -w1, w2, -w2, the others zero: greedy picks one of
the four, by what attention computed), and EAGLE scores its proposals with the target's head, so proposals are
often accepted and later steps attend over accepted draft positions too. Checked against HF greedy of the
target, in eager mode and in graph mode (hostgraph device: the runner runs the multi-token steps eagerly,
counted under ``tokens per sequence``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from dlinfer_lmdeploy.testing import runner, tiny_models
from dlinfer_lmdeploy.testing.scenarios import PROMPTS

pytestmark = pytest.mark.e2e

SPEC_TOKENS = 2
NEW_TOKENS = 24


FOUR_TOKENS = (10, 11, 12, 13)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny ``llama`` whose greedy continuation stays within :data:`FOUR_TOKENS`."""
    import transformers as tf

    path = tmp_path_factory.mktemp("spec_target")
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tiny_models._config("llama"))
    with torch.no_grad():
        tiny_models._fill_(model)
        head = model.lm_head.weight
        w1, w2 = head[FOUR_TOKENS[0]].clone(), head[FOUR_TOKENS[2]].clone()
        head.zero_()
        head[list(FOUR_TOKENS)] = torch.stack([w1, -w1, w2, -w2])
    tiny_models._save(model, path, torch.float32)
    return path


@pytest.fixture(scope="module")
def eagle_draft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random EAGLE draft for the tiny ``llama`` target: LMDeploy's ``EagleLlamaForCausalLM`` checkpoint
    layout (one Llama layer without its input norm, ``fc`` over [embedding, target hidden], no ``model.`` prefix)."""
    import transformers as tf
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("eagle_draft")
    config = tiny_models._config("llama", num_hidden_layers=1)
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(1)
    model = tf.LlamaForCausalLM(config)
    with torch.no_grad():
        tiny_models._fill_(model)
    state = {
        name.removeprefix("model."): t.contiguous()
        for name, t in model.state_dict().items()
        if name.startswith("model.") and "input_layernorm" not in name and not name.startswith("model.norm")
    }
    state["fc.weight"] = torch.randn(config.hidden_size, 2 * config.hidden_size) * 0.1
    save_file(state, str(path / "model.safetensors"))
    config.save_pretrained(str(path))
    tiny_models.build_tokenizer(path)
    return path


def _run(target: Path, draft: Path, device: str, eager: bool, prompts: list[str]) -> tuple[list[list[int]], Any]:
    """Tokens, and (prompt ids, multi-token decode steps, target forwards while generating)."""
    from lmdeploy import pipeline
    from lmdeploy.messages import SpeculativeConfig
    from lmdeploy.pytorch.models.llama import LlamaForCausalLM

    from dlinfer_lmdeploy import metadata

    steps = {"multi_token_decode": 0, "target": 0}
    build, forward = metadata.build, LlamaForCausalLM.forward

    def counted(step_context: Any, backend: Any) -> Any:
        md = build(step_context, backend)
        steps["multi_token_decode"] += int(md.multi_token_decode)
        return md

    def target_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        steps["target"] += 1
        return forward(self, *args, **kwargs)

    metadata.build, LlamaForCausalLM.forward = counted, target_forward
    try:
        spec = SpeculativeConfig(method="eagle", model=str(draft), num_speculative_tokens=SPEC_TOKENS)
        cfg = runner.engine_config(device, dtype="float32", eager_mode=eager)
        pipe = pipeline(str(target), backend_config=cfg, speculative_config=spec, log_level="ERROR")
        steps["target"] = 0  # not the warm-up forwards
        try:
            ids = [runner.encode(pipe, p) for p in prompts]
            got = runner.generate(pipe, prompts, NEW_TOKENS)
        finally:
            pipe.close()
    finally:
        metadata.build, LlamaForCausalLM.forward = build, forward
    return got, (ids, steps["multi_token_decode"], steps["target"])


def test_eagle_speculative_decoding_equals_greedy(target, hf_greedy, eagle_draft):  # type: ignore[no-untyped-def]
    prompts = list(PROMPTS[:2])
    got, (ids, multi, forwards) = _run(target, eagle_draft, "cpu", True, prompts)
    assert multi > 0, "no decode step with several query tokens per sequence ran"
    assert forwards < NEW_TOKENS - 1, f"{forwards} target forwards for {NEW_TOKENS} tokens: no proposal accepted"
    assert got == hf_greedy(target, ids, NEW_TOKENS)
    assert all(set(g) <= set(FOUR_TOKENS) for g in got)


def test_eagle_speculative_decoding_graph_mode(target, hf_greedy, eagle_draft):  # type: ignore[no-untyped-def]
    from dlinfer_lmdeploy import graph_runner
    from dlinfer_lmdeploy.testing import host_graph

    prompts = list(PROMPTS[:2])
    with host_graph.installed() as device, graph_runner.counting() as counts:
        got, (ids, multi, _) = _run(target, eagle_draft, device, False, prompts)
    assert multi > 0
    assert counts.eager["tokens per sequence"] > 0, dict(counts.eager)  # the verification steps, run eagerly
    assert got == hf_greedy(target, ids, NEW_TOKENS)
