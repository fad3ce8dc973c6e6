"""An empty prompt gets an error of its own; the engine lives on (LMDeploy 0.18's assertion ended its loop)."""

from __future__ import annotations

import pytest

from dlinfer_lmdeploy.testing import runner
from dlinfer_lmdeploy.testing.scenarios import PROMPTS

pytestmark = pytest.mark.e2e


def test_empty_prompt_is_refused_and_the_engine_serves_later_requests(tiny_model, hf_greedy):  # type: ignore[no-untyped-def]
    from lmdeploy import GenerationConfig

    path = tiny_model("llama")
    gen = GenerationConfig(max_new_tokens=6, do_sample=False, top_k=1, ignore_eos=True)
    with runner.open_pipeline(path, runner.engine_config()) as pipe:
        ids = runner.encode(pipe, PROMPTS[1])
        want = hf_greedy(path, [ids], 6)[0]
        empty, served = pipe(["", PROMPTS[1]], gen_config=gen, do_preprocess=False)  # submitted together
        assert (empty.finish_reason, list(empty.token_ids)) == ("error", [])
        assert list(served.token_ids) == want
        (no_ids,) = pipe([[]], gen_config=gen, do_preprocess=False)  # empty token ids
        assert (no_ids.finish_reason, list(no_ids.token_ids)) == ("error", [])
        assert runner.generate(pipe, [PROMPTS[1]], 6) == [want], "a later request after the refusals"
