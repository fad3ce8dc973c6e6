"""The teacher-forced HF oracle used by the GPU tests: it must accept HF's own greedy tokens and reject others."""

from __future__ import annotations

from dlinfer_lmdeploy.testing import hf_oracle, tiny_models


def test_teacher_forced_accepts_greedy_and_flags_a_wrong_token(tiny_model):  # type: ignore[no-untyped-def]
    path = tiny_model("llama")
    prompts = [tiny_models.encode(path, "Hello world"), tiny_models.encode(path, "The quick brown fox")]
    greedy = hf_oracle.greedy(path, prompts, 10)
    logits = hf_oracle.teacher_forced(path, list(zip(prompts, greedy, strict=True)))
    verdicts = [hf_oracle.deficits_and_gaps(lg, g) for lg, g in zip(logits, greedy, strict=True)]
    for deficits, gaps in verdicts:
        assert len(deficits) == len(gaps) == 10
        assert max(deficits) < 1e-4  # HF's own greedy choice is its argmax at every step
        assert min(gaps) >= 0.0
    # replace one token by HF's second choice: the deficit there equals the top-2 gap (> 0)
    wrong = list(greedy[0])
    deficits, gaps = verdicts[0]
    i = 4
    ids = list(prompts[0]) + wrong[:i]
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    logits[model.config.eos_token_id] = float("-inf")
    wrong[i] = int(logits.topk(2).indices[1])
    (bad_logits,) = hf_oracle.teacher_forced(path, [(prompts[0], wrong[: i + 1])])
    bad, _ = hf_oracle.deficits_and_gaps(bad_logits, wrong[: i + 1])
    assert abs(bad[i] - gaps[i]) < 1e-3 and bad[i] > 0


def test_bf16_checker_passes_clean_runs_and_flags_corrupted_ones(tiny_model) -> None:  # type: ignore[no-untyped-def]
    """The GPU tests' checker, fed CPU fp32 generations of the reference backend: clean runs pass; a swapped
    token, another request's logits and a context missing its first token all fail."""
    from dlinfer_lmdeploy.testing import runner
    from dlinfer_lmdeploy.testing.bf16_check import check_against_hf
    from dlinfer_lmdeploy.testing.scenarios import BY_NAME

    scenario = BY_NAME["concurrent_llama"]
    path = tiny_model(scenario.model)
    phase = scenario.phases[0]
    with runner.open_pipeline(path, runner.engine_config(logprobs_mode="raw_logits")) as pipe:
        ids = [runner.encode(pipe, p) for p in phase]
        outs = runner.generate_with_logits(pipe, phase, scenario.new_tokens, 5)
    runs = [(i, g, top) for i, (g, top) in zip(ids, outs, strict=True)]
    stats, failures = check_against_hf(scenario, path, {"eager": runs}, "cpu")
    assert failures == [], failures
    assert all(s["max_err"] < 1e-3 for s in stats)  # fp32 reference vs fp32 HF

    swapped = [(p, [*g[:3], (g[3] + 1) % 100, *g[4:]], top) for p, g, top in runs]
    other = [(p, g, runs[(r + 1) % len(runs)][2]) for r, (p, g, _) in enumerate(runs)]
    dropped = [(p[1:], g, top) for p, g, top in runs]  # the context lost its first token: an off-by-one in paging
    for name, bad in (("swapped token", swapped), ("other request's logits", other), ("dropped token", dropped)):
        _, failures = check_against_hf(scenario, path, {"eager": runs, "graph": bad}, "cpu")
        assert failures, f"{name}: not caught"
        assert all("/graph" in f for f in failures), failures
