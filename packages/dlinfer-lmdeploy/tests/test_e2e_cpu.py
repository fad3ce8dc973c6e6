"""End to end on the CPU: lmdeploy.pipeline + dlinfer reference backend == HF transformers greedy (fp32).

The scenarios (concurrent prompts per row of the model table, prefix caching, chunked prefill, a long run over
many KV blocks) are the table in ``dlinfer_lmdeploy.testing.scenarios``, shared with the GPU tests. Dynamic NTK
rope past ``max_position_embeddings`` is tested here only: the GPU tests' teacher forcing recomputes the rope of a
whole sequence at its final length, which incremental decoding never does.
"""

from __future__ import annotations

import pytest

from dlinfer_lmdeploy.testing import hf_oracle, runner
from dlinfer_lmdeploy.testing.scenarios import PROMPTS, SCENARIOS, Scenario

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario_matches_hf_greedy(scenario: Scenario, tiny_model, hf_greedy, op_calls):  # type: ignore[no-untyped-def]
    path = tiny_model(scenario.model)
    with runner.open_pipeline(path, runner.engine_config(**scenario.engine)) as pipe:
        for phase in scenario.phases:
            op_calls.clear()
            ids = [runner.encode(pipe, p) for p in phase]
            got = runner.generate(pipe, phase, scenario.new_tokens)
            assert got == hf_greedy(path, ids, scenario.new_tokens), f"{scenario.name}: tokens differ from HF greedy"
    scenario.check_calls(op_calls)


def test_dynamic_ntk_past_max_positions(tiny_model, hf_greedy):  # type: ignore[no-untyped-def]
    """InternLM2.5's dynamic NTK rope (``rope_type: dynamic``) beyond ``max_position_embeddings``.

    Alone, a request matches HF greedy whether decoding crosses the limit or the prompt is already past it.
    Batched, LMDeploy scales the rotary base of every sequence in a step by the step's longest sequence
    (``max(position_ids) + 1``), as HF's batched generate does: a short request batched with one that crosses
    the limit equals HF's left-padded batch, and not HF's generation of it alone."""
    import json

    path = tiny_model("internlm2_5")
    max_pos = json.loads((path / "config.json").read_text())["max_position_embeddings"]
    text = (PROMPTS[2] + " ") * 4
    crossing, beyond, short, n = text[: max_pos - 28], text[1 : max_pos + 13], PROMPTS[0], 40
    with runner.open_pipeline(path, runner.engine_config()) as pipe:
        ids = {p: runner.encode(pipe, p) for p in (crossing, beyond, short)}
        assert len(ids[crossing]) < max_pos < len(ids[crossing]) + n and len(ids[beyond]) > max_pos
        for prompt, new in ((crossing, n), (beyond, 10)):
            got = runner.generate(pipe, [prompt], new)
            assert got == hf_greedy(path, [ids[prompt]], new), f"{len(ids[prompt])}-token prompt alone"
        got = runner.generate(pipe, [crossing, short], n)
    assert got == hf_oracle.greedy_batched(path, [ids[crossing], ids[short]], n), "batch != HF's padded batch"
    assert got[0] == hf_greedy(path, [ids[crossing]], n)[0]
    alone = hf_greedy(path, [ids[short]], n)[0]
    assert got[1] != alone, "the short request no longer follows the batch's rope scaling (LMDeploy changed?)"


def test_graph_mode_past_max_positions_is_graphed(tiny_model, hf_greedy, monkeypatch):  # type: ignore[no-untyped-def]
    """Graph mode with contexts longer than ``max_position_embeddings`` (128 for the tiny InternLM2.5, 8 blocks of
    16): every decode step replays a graph and the tokens equal HF greedy. The captured block table once held only
    ``max_position_embeddings`` tokens, so such steps ran eagerly (seen on the H200 at 32k on the 8B shape).

    The device also declares prefill warm-up sizes (one above the engine's ``max_prefill_token_num``): LMDeploy's
    warm-up must run one single-sequence prefill per capped size, ``max_batches`` included, before the request."""
    import json

    from dlinfer_lmdeploy import graph_runner, warmup
    from dlinfer_lmdeploy.testing import host_graph

    path = tiny_model("internlm2_5")
    max_pos = json.loads((path / "config.json").read_text())["max_position_embeddings"]
    prompt, n = ((PROMPTS[2] + " ") * 4)[1 : max_pos + 13], 12
    max_prefill = 2 * max_pos  # above the prompt: its prefill is not chunked
    declared = (5, max_pos // 2, 10 * max_prefill)
    prefills: list[int] = []
    eager = graph_runner.DlinferGraphRunner._eager

    def record(self, reason, detail, kwargs):  # type: ignore[no-untyped-def]
        if reason == graph_runner.PREFILL:
            prefills.append(int(kwargs["input_ids"].numel()))
        return eager(self, reason, detail, kwargs)

    monkeypatch.setattr(graph_runner.DlinferGraphRunner, "_eager", record)
    older = set(graph_runner.live_runners())
    with (
        host_graph.installed(prefill_warmup_tokens=declared) as device,
        graph_runner.counting() as steps,
        runner.open_pipeline(
            path, runner.engine_config(device, eager_mode=False, max_batch_size=4, max_prefill_token_num=max_prefill)
        ) as pipe,
    ):
        (live,) = [r for r in graph_runner.live_runners() if r not in older]
        limit = warmup.prefill_token_limit(live.cache_config)
        warmed = list(prefills)
        ids = runner.encode(pipe, prompt)
        got = runner.generate(pipe, [prompt], n)
    assert len(ids) > max_pos
    assert got == hf_greedy(path, [ids], n)
    assert steps.eager_decode == 0, dict(steps.eager)
    assert steps.graphed >= n - 1, steps
    expected = sorted({min(s, limit) for s in (*declared, live.cache_config.max_batches)}, reverse=True)
    assert limit < max(declared) and warmed == expected, (limit, warmed, expected)
