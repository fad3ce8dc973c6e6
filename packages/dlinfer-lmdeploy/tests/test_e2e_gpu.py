"""On an NVIDIA GPU with the maca plugin: the end-to-end scenarios in bf16, eager and graph mode.

The scenario table is the CPU tests' (``dlinfer_lmdeploy.testing.scenarios``). bf16 cannot reproduce fp32
greedy tokens exactly, so every generated token is checked against Hugging Face's fp32 logits on the same
prefix (teacher forcing, ``hf_oracle.teacher_forced``): the chosen token's logit must be within ``TIE`` of the
best one. Where HF's top-2 gap is at least ``TIE`` that means the token is HF's argmax, so the tokens equal HF's
greedy tokens up to the first near-tie, and every decisive step after it is checked as well. Graph mode must
give eager mode's tokens up to the first near-tie along the eager path.
"""

from __future__ import annotations

import pytest
import torch

from dlinfer_lmdeploy.testing import runner
from dlinfer_lmdeploy.testing.scenarios import SCENARIOS, Scenario

pytestmark = [pytest.mark.gpu, pytest.mark.e2e]

TIE = 0.3  # logits are O(10) here; bf16 rounding of one logit is ~0.05, accumulated over the layers more
MODES = ("eager", "graph")


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


def _run(scenario: Scenario, path, mode: str, op_calls) -> list[tuple[list[int], list[int]]]:  # type: ignore[no-untyped-def]
    """(prompt ids, generated ids) of every request of every phase, in order."""
    cfg = runner.engine_config(
        "maca", dtype="bfloat16", eager_mode=(mode == "eager"), max_batch_size=4, **scenario.engine
    )
    runs = []
    with runner.open_pipeline(path, cfg) as pipe:
        for phase in scenario.phases:
            op_calls.clear()
            ids = [runner.encode(pipe, p) for p in phase]
            runs += list(zip(ids, runner.generate(pipe, phase, scenario.new_tokens), strict=True))
    if mode == "eager":  # in graph mode the decode ops run as graph replays, not as Python calls
        scenario.check_calls(op_calls)
    return runs


def check_against_hf(scenario: Scenario, path, results, device: str) -> None:  # type: ignore[no-untyped-def]
    """``results``: mode -> the (prompt ids, generated ids) of ``_run``; raises AssertionError on a mismatch."""
    from dlinfer_lmdeploy.testing import hf_oracle

    verdicts = {mode: hf_oracle.teacher_forced(path, runs, device=device) for mode, runs in results.items()}
    decisive = total = 0
    for mode, runs in results.items():
        for r, ((_, generated), (deficits, gaps)) in enumerate(zip(runs, verdicts[mode], strict=True)):
            assert len(generated) == scenario.new_tokens, f"{scenario.name}/{mode} request {r}: length"
            worst = max(range(len(deficits)), key=deficits.__getitem__)
            assert deficits[worst] < TIE, (
                f"{scenario.name}/{mode} request {r}: step {worst} chose a token {deficits[worst]:.3f} below "
                f"HF's best logit (tolerance {TIE}); top-2 gap there {gaps[worst]:.3f}"
            )
            decisive += sum(g >= TIE for g in gaps)
            total += len(gaps)
    eager, graph = results.get("eager"), results.get("graph")
    if eager is not None and graph is not None:
        for r, ((_, e), (_, g), (_, gaps)) in enumerate(zip(eager, graph, verdicts["eager"], strict=True)):
            tie = next((i for i, gap in enumerate(gaps) if gap < TIE), len(gaps))
            assert g[:tie] == e[:tie], f"{scenario.name} request {r}: graph != eager before step {tie}"
    assert decisive >= total // 2, f"only {decisive}/{total} decisive steps: the comparison is too weak"


@requires_maca
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario_eager_and_graph_match_hf(scenario: Scenario, bf16_model, op_calls):  # type: ignore[no-untyped-def]
    path = bf16_model(scenario.model)
    results = {mode: _run(scenario, path, mode, op_calls) for mode in MODES}
    check_against_hf(scenario, path, results, "cuda")
