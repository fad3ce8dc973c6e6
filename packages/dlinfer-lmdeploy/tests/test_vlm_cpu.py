"""VLM rows of the model table end to end on the CPU: lmdeploy.pipeline + dlinfer reference backend (fp32) ==
the HF oracle's greedy tokens, fed exactly the ``input_ids`` / ``pixel_values`` (+ family extras) LMDeploy built.

Every row of ``model_table.ROWS`` with ``modality == "VLM"`` runs every scenario of ``vlm.SCENARIOS`` in one
engine (text only, one image, two images in one prompt, a text-only request batched with image requests, the
mirrored image): equal greedy tokens, and the engine's top-5 raw logits equal HF's teacher-forced logits to fp32
accuracy. The mirrored image must change the output, and the vision tower must make the dlinfer op calls its family
declares
(``vlm.register_vision_calls``). Rows whose preprocessing needs torchvision carry the ``torchvision`` marker
(the ``tests-vlm`` nox session runs ``-m torchvision``) and are skipped where torchvision is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dlinfer_lmdeploy.testing import model_table, runner, vlm
from dlinfer_lmdeploy.testing.model_table import ModelRow

pytestmark = pytest.mark.e2e

LOGIT_ATOL = 2e-3
"""fp32 engine vs fp32 HF raw logits (|logits| ~ 50 on these checkpoints; seen: <= 3e-4)"""
VLM_ROWS = [row for row in model_table.ROWS if row.modality == "VLM"]


def _params(with_scenarios: bool) -> list[object]:
    out = []
    for row in VLM_ROWS:
        marks = [pytest.mark.torchvision] if row.needs_torchvision else []
        for sc in vlm.SCENARIOS if with_scenarios else [None]:
            ident = row.kind if sc is None else f"{row.kind}-{sc.name}"
            out.append(pytest.param(row, sc, marks=marks, id=ident))
    return out


def _require(row: ModelRow) -> None:
    if row.needs_torchvision:
        pytest.importorskip("torchvision", reason=f"{row.kind}: its processor needs torchvision (nox -s tests-vlm)")


@pytest.fixture(scope="session")
def vlm_row(tmp_path_factory: pytest.TempPathFactory) -> Callable[[ModelRow], tuple[Path, vlm.RowRun]]:
    """``vlm_row(row)`` -> (checkpoint, every scenario run in one engine); built and run once per session."""
    done: dict[str, tuple[Path, vlm.RowRun]] = {}

    def get(row: ModelRow) -> tuple[Path, vlm.RowRun]:
        if row.kind not in done:
            path = row.build(tmp_path_factory.mktemp(f"vlm_{row.kind}"))  # a missing builder fails here
            # logits for the bf16-checker test
            engine = runner.engine_config("cpu", logprobs_mode="raw_logits", **row.engine)
            done[row.kind] = (path, vlm.run_row(path, engine, logits=5, skip=row.skipped))
        return done[row.kind]

    return get


def test_model_table_has_vlm_rows() -> None:
    assert {"qwen2_vl", "qwen2_5_vl", "qwen3_vl"} <= {row.kind for row in VLM_ROWS}


def test_mm_feature_dtype_patch() -> None:
    """Inventory patch vl-mm-feature-dtype: float32 image features for a CPU dlinfer device in fp32 (LMDeploy raises
    KeyError: 'float32'); LMDeploy's own mapping otherwise."""
    import torch
    from lmdeploy import PytorchEngineConfig
    from lmdeploy.vl import engine

    import dlinfer_lmdeploy
    from dlinfer_lmdeploy import inventory

    dlinfer_lmdeploy.install()
    assert "vl-mm-feature-dtype" in inventory.applied()
    resolve = engine._resolve_mm_feature_dtype
    assert resolve(None, PytorchEngineConfig(device_type="cpu", dtype="float32")) == torch.float32
    bf16 = PytorchEngineConfig(device_type="cpu", dtype="bfloat16")
    assert resolve(None, bf16) == resolve.__dlinfer_original__(None, bf16) in (torch.bfloat16, torch.float16)
    with pytest.raises(KeyError):
        resolve.__dlinfer_original__(None, PytorchEngineConfig(device_type="cpu", dtype="float32"))


@pytest.mark.parametrize(("row", "scenario"), _params(True))
def test_vlm_matches_hf_greedy(row: ModelRow, scenario: vlm.VlmScenario, vlm_row) -> None:  # type: ignore[no-untyped-def]
    if scenario.name in row.skipped:
        pytest.skip(f"{row.kind}: {row.skipped[scenario.name]}")
    _require(row)
    path, run = vlm_row(row)
    results = run.results[scenario.name]
    for res in results:
        assert len(res.tokens) == vlm.NEW_TOKENS, f"{row.kind}/{scenario.name}: {len(res.tokens)} tokens"
        n_images = len(res.request.images)
        assert len(res.captured.multimodal) == n_images, (
            f"{row.kind}/{scenario.name}: LMDeploy fed {len(res.captured.multimodal)} image items for {n_images} images"
        )
    expected = vlm.hf_greedy(row, path, [r.captured for r in results], vlm.NEW_TOKENS)
    got = [r.tokens for r in results]
    assert got == expected, f"{row.kind}/{scenario.name}: tokens differ from the HF oracle on LMDeploy's inputs"
    # equal tokens can hide small systematic errors (large logit gaps): the engine's top-5 raw logits at every
    # step must also equal HF's logits (teacher forcing on the same inputs) to fp32 accuracy
    hf_logits = vlm.teacher_forced(row, path, [r.captured for r in results],
                                   [(r.captured.input_ids, r.tokens) for r in results])  # fmt: skip
    for r, (top, ref) in enumerate(zip(run.logits[scenario.name], hf_logits, strict=True)):
        assert len(top) == vlm.NEW_TOKENS, f"{row.kind}/{scenario.name} request {r}: {len(top)} logit steps"
        err = max(abs(v - float(ref[i, t])) for i, step in enumerate(top) for t, v in step.items() if ref[i, t] > -1e30)
        assert err < LOGIT_ATOL, f"{row.kind}/{scenario.name} request {r}: logits differ from HF by {err:.4f}"
    if scenario.name == "text_batched_with_images":
        # submitted together (the harness releases them to the engine together): one prefill step and batched
        # decode steps for all of them, as many LLM attention calls as the text-only request alone
        mixed, alone = run.calls[scenario.name], run.calls["text_only"]
        for op in ("prefill_attention", "paged_decode_attention"):
            causal = [c[op] - c[f"{op}:noncausal"] for c in (mixed, alone)]
            assert causal[0] == causal[1], f"{row.kind}: {op} (causal) called {causal[0]} times for the batch, " \
                f"{causal[1]} for one request: the requests were not batched"
    if scenario.name == "mirrored_image":
        original = run.results["one_image"][0]
        assert original.captured.input_ids == results[0].captured.input_ids  # the same prompt, only the image moved
        assert got[0] != original.tokens, f"{row.kind}: mirroring the image did not change the output"


@pytest.mark.parametrize(("row", "scenario"), _params(False))
def test_vlm_vision_tower_op_calls(row: ModelRow, scenario: None, vlm_row) -> None:  # type: ignore[no-untyped-def]
    _require(row)
    path, run = vlm_row(row)
    expected = vlm.expected_vision_calls(row, path)
    got = run.vision_calls()
    wrong = {op: (got.get(op, 0), n) for op, n in expected.items() if got.get(op, 0) != n}
    assert not wrong, f"{row.kind}: vision-tower dlinfer op calls (got, expected): {wrong}; all: {got}"


@pytest.mark.parametrize(("row", "scenario"), _params(False))
def test_bf16_checker_on_vlm_runs(row: ModelRow, scenario: None, vlm_row) -> None:  # type: ignore[no-untyped-def]
    """``bf16_check`` with the VLM teacher forcing (what the GPU and simulator tests use for VLMs), fed this row's
    fp32 CPU runs: the batched text + image requests pass with fp32-level errors; the same tokens checked against
    the mirrored image's inputs fail (the teacher forcing really uses the captured images)."""
    from dlinfer_lmdeploy.testing.bf16_check import check_against_hf
    from dlinfer_lmdeploy.testing.scenarios import Scenario

    _require(row)
    path, run = vlm_row(row)

    def runs(name: str) -> tuple[list[vlm.Captured], list[tuple[list[int], list[int], list[dict[int, float]]]]]:
        res = run.results[name]
        return [r.captured for r in res], [
            (r.captured.input_ids, r.tokens, top) for r, top in zip(res, run.logits[name], strict=True)
        ]

    name = "text_batched_with_images"
    captured, clean = runs(name)
    sc = Scenario(f"{row.kind}/{name}", row.kind, (), vlm.NEW_TOKENS)
    stats, failures = check_against_hf(sc, path, {"eager": clean}, "cpu", vlm.teacher_forced_fn(row, path, captured))
    assert failures == [], failures
    assert all(s["max_err"] < 1e-3 for s in stats), stats  # fp32 reference vs fp32 HF

    (one,), one_runs = runs("one_image")
    (mirrored,), _ = runs("mirrored_image")
    sc = Scenario(f"{row.kind}/one_image vs mirrored inputs", row.kind, (), vlm.NEW_TOKENS)
    _, failures = check_against_hf(sc, path, {"eager": one_runs}, "cpu", vlm.teacher_forced_fn(row, path, [mirrored]))
    assert failures, f"{row.kind}: one_image's run checked against the mirrored image's inputs was not caught"
