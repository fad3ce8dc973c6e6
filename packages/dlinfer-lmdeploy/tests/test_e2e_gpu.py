"""On an NVIDIA GPU with the maca plugin: the end-to-end scenarios in bf16, eager and graph mode.

The scenario table is the CPU tests' (``dlinfer_lmdeploy.testing.scenarios``). bf16 cannot reproduce fp32 greedy
tokens exactly, so the check is on logits, step by step along the sequence LMDeploy generated:

* the engine reports the raw logits of its top-``TOPK`` tokens at every step (``logprobs_mode="raw_logits"``);
  Hugging Face recomputes the logits of the same steps from the same prefixes (teacher forcing) in fp32 (the
  truth) and in bf16 (how far bf16 arithmetic alone moves them on these weights and inputs);
* LMDeploy's logit error against fp32 (max and mean over the steps) must stay within ``FACTOR`` x HF's own bf16
  error + ``FLOOR``;
* every chosen token must be the engine's own top-1 and within twice that tolerance of fp32's best logit;
* the chosen token must be fp32's argmax about as often as HF bf16's argmax is (``AGREE_SLACK``);
* graph mode passes the same checks (the length of its agreement with eager mode is reported; the two may part
  at a near-tie).
A wrong KV block, mask or position moves logits by several units and fails the first check (tests/test_oracle.py
and the CPU dry run in the package README show these checks failing on corrupted tokens and logits).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from dlinfer_lmdeploy.testing import runner
from dlinfer_lmdeploy.testing.scenarios import SCENARIOS, Scenario

pytestmark = [pytest.mark.gpu, pytest.mark.e2e]

TOPK = 5
FACTOR = 3.0
FLOOR = 0.1
AGREE_SLACK = 0.1
MODES = ("eager", "graph")
Run = tuple[list[int], list[int], list[dict[int, float]]]  # prompt ids, generated ids, top-k raw logits per step


def _maca_available() -> bool:
    if not torch.cuda.is_available():
        return False
    import dlinfer_lmdeploy

    return "maca" in dlinfer_lmdeploy.lmdeploy_devices()


requires_maca = pytest.mark.skipif(not _maca_available(), reason="needs a CUDA GPU and the dlinfer-maca plugin")


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory):  # type: ignore[no-untyped-def]
    from dlinfer_lmdeploy.testing import tiny_models

    built = {}

    def get(kind: str):  # type: ignore[no-untyped-def]
        if kind not in built:
            built[kind] = tiny_models.build(kind, tmp_path_factory.mktemp(f"bf16_{kind}"), dtype=torch.bfloat16)
        return built[kind]

    return get


def _run(scenario: Scenario, path, mode: str, op_calls) -> list[Run]:  # type: ignore[no-untyped-def]
    """Every request of every phase, in order."""
    cfg = runner.engine_config(
        "maca",
        dtype="bfloat16",
        eager_mode=(mode == "eager"),
        max_batch_size=4,
        logprobs_mode="raw_logits",
        **scenario.engine,
    )
    runs: list[Run] = []
    with runner.open_pipeline(path, cfg) as pipe:
        for phase in scenario.phases:
            op_calls.clear()
            ids = [runner.encode(pipe, p) for p in phase]
            outs = runner.generate_with_logits(pipe, phase, scenario.new_tokens, TOPK)
            runs += [(i, tokens, top) for i, (tokens, top) in zip(ids, outs, strict=True)]
    if mode == "eager":  # in graph mode the decode ops run as graph replays, not as Python calls
        scenario.check_calls(op_calls)
    return runs


def _errors(top: list[dict[int, float]], ref: torch.Tensor) -> list[float]:
    """Per step: the largest |logit - ref| over the engine's top-k tokens."""
    return [max(abs(v - float(ref[i, t])) for t, v in step.items()) for i, step in enumerate(top)]


def check_against_hf(scenario: Scenario, path, results: dict[str, list[Run]], device: str):  # type: ignore[no-untyped-def]
    """-> (per-request statistics, failure messages)."""
    from dlinfer_lmdeploy.testing import hf_oracle

    eos = json.loads((Path(path) / "config.json").read_text())["eos_token_id"]
    banned = {eos} if isinstance(eos, int) else set(eos)
    stats: list[dict] = []
    failures: list[str] = []
    for mode, runs in results.items():
        pairs = [(p, g) for p, g, _ in runs]
        exact = hf_oracle.teacher_forced(path, pairs, device=device, dtype=torch.float32)
        bf16 = hf_oracle.teacher_forced(path, pairs, device=device, dtype=torch.bfloat16)
        for r, ((_, generated, top), f32, b16) in enumerate(zip(runs, exact, bf16, strict=True)):
            where = f"{scenario.name}/{mode} request {r}"
            if not len(generated) == len(top) == scenario.new_tokens:
                failures.append(
                    f"{where}: {len(generated)} tokens, {len(top)} logit steps, {scenario.new_tokens} asked"
                )
                continue
            # raw logits are reported before LMDeploy bans EOS (ignore_eos): drop it, as HF's side does
            top = [{t: v for t, v in st.items() if t not in banned} for st in top]
            not_top1 = [
                i for i, (t, st) in enumerate(zip(generated, top, strict=True)) if st.get(t) != max(st.values())
            ]
            if not_top1:
                failures.append(f"{where}: at steps {not_top1[:5]} the token is not the engine's own top-1")
            err = [max(abs(v - float(f32[i, t])) for t, v in st.items()) for i, st in enumerate(top)]
            hf_err = [max(abs(float(b16[i, t] - f32[i, t])) for t in st) for i, st in enumerate(top)]
            deficits, gaps = hf_oracle.deficits_and_gaps(f32, generated)
            best = f32.argmax(-1)
            agree = sum(int(best[i]) == t for i, t in enumerate(generated)) / len(generated)
            agree_hf = float((b16.argmax(-1) == best).float().mean())
            mean_err, mean_hf = sum(err) / len(err), sum(hf_err) / len(hf_err)
            tol = FACTOR * max(hf_err) + FLOOR
            stats.append({
                "request": where, "steps": len(err), "max_err": max(err), "mean_err": mean_err,
                "hf_bf16_max_err": max(hf_err), "hf_bf16_mean_err": mean_hf, "max_deficit": max(deficits),
                "agree_fp32_argmax": agree, "hf_bf16_agree_fp32_argmax": agree_hf,
            })  # fmt: skip
            worst = max(range(len(err)), key=err.__getitem__)
            if err[worst] > tol or mean_err > FACTOR * mean_hf + FLOOR:
                failures.append(
                    f"{where}: logit error against HF fp32 max {err[worst]:.3f} (step {worst}) / mean {mean_err:.3f} "
                    f"exceeds {FACTOR} x HF's own bf16 error (max {max(hf_err):.3f} / mean {mean_hf:.3f}) + {FLOOR}"
                )
            bad = next((i for i, d in enumerate(deficits) if d > 2 * tol), None)
            if bad is not None:
                failures.append(
                    f"{where}: step {bad} chose a token {deficits[bad]:.3f} below HF fp32's best logit "
                    f"(allowed {2 * tol:.3f}); top-2 gap there {gaps[bad]:.3f}"
                )
            if agree < agree_hf - AGREE_SLACK:
                failures.append(
                    f"{where}: the token is fp32's argmax at {agree:.0%} of the steps, HF bf16 manages {agree_hf:.0%}"
                )
    if "eager" in results and "graph" in results:
        for r, ((_, e, _), (_, g, _)) in enumerate(zip(results["eager"], results["graph"], strict=True)):
            same = next((i for i, (x, y) in enumerate(zip(e, g, strict=True)) if x != y), len(e))
            stats.append({"request": f"{scenario.name} request {r}", "graph_equals_eager_steps": same})
    return stats, failures


@requires_maca
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario_eager_and_graph_match_hf(scenario: Scenario, bf16_model, op_calls):  # type: ignore[no-untyped-def]
    path = bf16_model(scenario.model)
    results = {mode: _run(scenario, path, mode, op_calls) for mode in MODES}
    stats, failures = check_against_hf(scenario, path, results, "cuda")
    out = os.environ.get("DLINFER_E2E_STATS")
    if out:  # figures for the package README / closing notes
        with open(out, "a") as f:
            for s in stats:
                f.write(json.dumps(s) + "\n")
    assert not failures, "\n".join(failures)
