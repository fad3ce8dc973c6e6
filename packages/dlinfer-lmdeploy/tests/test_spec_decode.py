"""Speculative decoding (LMDeploy's ``ar_spec``, EAGLE draft) on the CPU device == greedy decoding without it.

Greedy speculative decoding must return exactly the target model's greedy tokens whatever the draft proposes: the
draft here is a tiny random EAGLE head, so most proposals are rejected, and every verification step is a decode
step with ``num_speculative_tokens + 1`` query tokens per sequence (a multi-token decode: a KV slot per new token,
paged prefill attention over the cache). Checked against HF greedy of the target, in eager mode and in graph mode
(hostgraph device: the runner runs the multi-token steps eagerly, counted under ``tokens per sequence``).
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
    from lmdeploy import pipeline
    from lmdeploy.messages import SpeculativeConfig

    from dlinfer_lmdeploy import metadata

    steps = {"multi_token_decode": 0}
    build = metadata.build

    def counted(step_context: Any, backend: Any) -> Any:
        md = build(step_context, backend)
        steps["multi_token_decode"] += int(md.multi_token_decode)
        return md

    metadata.build = counted
    try:
        spec = SpeculativeConfig(method="eagle", model=str(draft), num_speculative_tokens=SPEC_TOKENS)
        cfg = runner.engine_config(device, eager_mode=eager)
        pipe = pipeline(str(target), backend_config=cfg, speculative_config=spec, log_level="ERROR")
        try:
            ids = [runner.encode(pipe, p) for p in prompts]
            got = runner.generate(pipe, prompts, NEW_TOKENS)
        finally:
            pipe.close()
    finally:
        metadata.build = build
    return got, (ids, steps["multi_token_decode"])


def test_eagle_speculative_decoding_equals_greedy(tiny_model, hf_greedy, eagle_draft):  # type: ignore[no-untyped-def]
    target = tiny_model("llama")
    prompts = list(PROMPTS[:2])
    got, (ids, multi) = _run(target, eagle_draft, "cpu", True, prompts)
    assert multi > 0, "no decode step with several query tokens per sequence ran"
    assert got == hf_greedy(target, ids, NEW_TOKENS)


def test_eagle_speculative_decoding_graph_mode(tiny_model, hf_greedy, eagle_draft):  # type: ignore[no-untyped-def]
    from dlinfer_lmdeploy import graph_runner
    from dlinfer_lmdeploy.testing import host_graph

    target = tiny_model("llama")
    prompts = list(PROMPTS[:2])
    with host_graph.installed() as device, graph_runner.counting() as counts:
        got, (ids, multi) = _run(target, eagle_draft, device, False, prompts)
    assert multi > 0
    assert counts.eager["tokens per sequence"] > 0, dict(counts.eager)  # the verification steps, run eagerly
    assert got == hf_greedy(target, ids, NEW_TOKENS)
