"""On an NVIDIA GPU with the maca plugin: LMDeploy + dlinfer vs HF transformers in bf16, eager and graph mode.

bf16 results are compared up to the first near-tie: LMDeploy's tokens must equal HF's greedy
tokens at every position before the first one where HF's top-2 logits are within ``TIE``.
Graph mode must give the same tokens as eager mode (same kernels) up to HF's first near-tie.
"""

from __future__ import annotations

import pytest
import torch

from dlinfer_lmdeploy.testing import runner

pytestmark = [pytest.mark.gpu, pytest.mark.e2e]

TIE = 0.25  # logits are O(10) here; bf16 rounding of a logit is ~0.05


def _maca_available() -> bool:
    if not torch.cuda.is_available():
        return False
    import dlinfer_lmdeploy

    return "maca" in dlinfer_lmdeploy.lmdeploy_devices()


requires_maca = pytest.mark.skipif(not _maca_available(), reason="needs a CUDA GPU and the dlinfer-maca plugin")

PROMPTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "In a hole in the ground there lived a hobbit. Not a nasty, dirty, wet hole.",
]


def _hf_bf16(path, prompts, n):  # type: ignore[no-untyped-def]
    """HF greedy tokens in bf16 on the GPU, and the index of the first near-tie of each continuation."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16).cuda().eval()
    out = []
    for ids in prompts:
        x = torch.tensor([ids], device="cuda")
        res = model.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            suppress_tokens=[model.config.eos_token_id],
            output_scores=True,
            return_dict_in_generate=True,
        )
        tokens = res.sequences[0, len(ids) :].tolist()
        tie = n
        for i, scores in enumerate(res.scores):
            top2 = scores[0].float().topk(2).values
            if float(top2[0] - top2[1]) < TIE:
                tie = i
                break
        out.append((tokens, tie))
    del model
    torch.cuda.empty_cache()
    return out


@requires_maca
@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen2_moe"])
def test_maca_eager_and_graph_match_hf_bf16(kind, tmp_path):  # type: ignore[no-untyped-def]
    from dlinfer_lmdeploy.testing import tiny_models

    path = tiny_models.build(kind, tmp_path / kind, dtype=torch.bfloat16)
    n = 24
    results = {}
    ids = None
    for mode in ("eager", "graph"):
        cfg = runner.engine_config("maca", dtype="bfloat16", eager_mode=(mode == "eager"), max_batch_size=4)
        with runner.open_pipeline(path, cfg) as pipe:
            ids = [runner.encode(pipe, p) for p in PROMPTS]
            results[mode] = runner.generate(pipe, PROMPTS, n)
    assert ids is not None
    reference = _hf_bf16(path, ids, n)
    checked = 0
    for (want, tie), eager, graph in zip(reference, results["eager"], results["graph"], strict=True):
        assert eager[:tie] == want[:tie], (tie, eager, want)
        assert graph[:tie] == eager[:tie], (tie, graph, eager)
        checked += tie
    assert checked >= 8, f"only {checked} tokens before near-ties: the comparison is too weak"
