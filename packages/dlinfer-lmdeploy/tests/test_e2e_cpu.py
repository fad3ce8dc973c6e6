"""End to end on the CPU: lmdeploy.pipeline + dlinfer reference backend == HF transformers greedy (fp32).

The scenarios (concurrent prompts per model kind, prefix caching, chunked prefill, a long run over many KV
blocks) are the table in ``dlinfer_lmdeploy.testing.scenarios``, shared with the GPU tests.
"""

from __future__ import annotations

import pytest

from dlinfer_lmdeploy.testing import runner
from dlinfer_lmdeploy.testing.scenarios import SCENARIOS, Scenario

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
