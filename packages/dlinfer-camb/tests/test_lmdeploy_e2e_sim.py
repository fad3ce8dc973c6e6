"""LMDeploy's engine end to end with ``device_type="camb"`` on the simulator: every model-table row in bf16.

The plugin is activated as on hardware (runtime checks, ``gpu_migration``, its op table: every dlinfer op runs
on the simulated torch_mlu_ops kernels, HND cache, block size 16); the simulated device is the host
(``sim_e2e.host_simulated``). Each row: two prompts of different lengths batched together, eager mode, every
generated token checked against Hugging Face fp32 logits by teacher forcing (``bf16_check``). Graph mode is not
run: the simulated ``torch.mlu.MLUGraph`` records its calls but captures nothing (mlu_sim/device.py), so a
replay would compute nothing. A row the adaptor cannot serve must be refused when the engine is built
(``ModelRow.refused["camb"]``). The engine scenarios (prefix caching, chunked prefill, a long run, sliding window) run
too; the VLM rows (marker ``torchvision``) in ``nox -s tests-vlm``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("lmdeploy")
pytest.importorskip("dlinfer_lmdeploy")

from dlinfer_lmdeploy.testing import model_table, sim_e2e  # noqa: E402
from dlinfer_lmdeploy.testing.scenarios import Scenario  # noqa: E402

pytestmark = pytest.mark.skipif(os.environ.get("DLINFER_HARDWARE") == "1", reason="simulator tests")

DEVICE = "camb"
MODES = sim_e2e.SIMULATED_MODES[DEVICE]
KINDS = sim_e2e.llm_kinds()
SCENARIOS = sim_e2e.engine_scenarios()
VLM_ROWS = sim_e2e.vlm_rows()


@pytest.fixture(scope="module")
def bf16_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return sim_e2e.build_checkpoints(DEVICE, tmp_path_factory.mktemp)


@pytest.fixture(scope="module")
def camb_sim(bf16_models: dict[str, Path]) -> Iterator[dict[str, Path]]:
    """The simulator installed, the packages and a device node declared present, the device host-simulated;
    the previous simulator state restored after. Yields the checkpoints."""
    import dlinfer_lmdeploy

    import mlu_sim
    from dlinfer_camb import patches, runtime

    was_installed = "torch_mlu_ops" in sys.modules
    mlu_sim.uninstall()
    sim_e2e.prime_host_probes()  # before torch_mlu is importable (transformers probes it once)
    runtime.reset()
    mlu_sim.install()
    mp = pytest.MonkeyPatch()
    mp.setattr(runtime, "_device_nodes", lambda: True)
    mp.setattr(runtime, "_installed", lambda name: True)  # the simulated packages live in sys.modules only
    dlinfer_lmdeploy.install()
    try:
        with sim_e2e.host_simulated(DEVICE):
            yield bf16_models
    finally:
        mp.undo()
        mlu_sim.uninstall()
        runtime.reset()
        patches._APPLIED.clear()
        if was_installed:
            mlu_sim.install()


@pytest.mark.parametrize("kind", KINDS)
def test_row_bf16_eager_matches_hf_fp32(kind: str, camb_sim: dict[str, Path]) -> None:
    if sim_e2e.refusal(DEVICE, kind):
        pytest.skip(f"refused on {DEVICE}: {sim_e2e.refusal(DEVICE, kind)} (test_refused_rows_fail_at_build)")
    _, failures = sim_e2e.check(sim_e2e.row_scenario(kind), camb_sim[kind], DEVICE, MODES)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_engine_scenario_bf16_eager_matches_hf_fp32(scenario: Scenario, camb_sim: dict[str, Path]) -> None:
    """Prefix caching and chunked prefill (flash_attention's paged mode over cached blocks, head 16 and 128), and a
    long run over 15 KV blocks per sequence (single_query_cached_kv_attn)."""
    _, failures = sim_e2e.check(scenario, camb_sim[scenario.model], DEVICE, MODES)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    "row",
    [pytest.param(r, marks=[pytest.mark.torchvision] if r.needs_torchvision else [], id=r.kind) for r in VLM_ROWS],
)
def test_vlm_row_bf16_matches_hf_fp32(row: model_table.ModelRow, camb_sim: dict[str, Path]) -> None:
    """Every VLM request scenario (text only, one image, two images, text batched with images, mirrored image) in
    one engine, eager, each request checked against the fp32 HF oracle fed LMDeploy's own inputs."""
    if row.needs_torchvision:
        pytest.importorskip("torchvision", reason=f"{row.kind}: its processor needs torchvision (nox -s tests-vlm)")
    if sim_e2e.refusal(DEVICE, row.kind):
        pytest.skip(f"refused on {DEVICE}: {sim_e2e.refusal(DEVICE, row.kind)} (test_refused_rows_fail_at_build)")
    failures = sim_e2e.check_vlm_row(row, camb_sim[row.kind], DEVICE)
    assert not failures, "\n".join(failures)


_REFUSED = [k for k in [*KINDS, *(r.kind for r in VLM_ROWS)] if sim_e2e.refusal(DEVICE, k)]


@pytest.mark.parametrize("kind", _REFUSED or ["(none)"])
def test_refused_rows_fail_at_build(kind: str, camb_sim: dict[str, Path]) -> None:
    if not _REFUSED:
        pytest.skip(f"no model-table row is refused on {DEVICE}")
    if kind not in camb_sim:
        pytest.skip(f"{kind}: not built here (its processor needs torchvision: nox -s tests-vlm)")
    exc = sim_e2e.build_refusal(camb_sim[kind], DEVICE)
    assert exc is not None, f"{kind}: the engine built on {DEVICE}, but the model table says it is refused"
    assert DEVICE in str(exc), f"{kind}: the refusal does not name the device: {exc}"
