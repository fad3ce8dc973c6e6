"""LMDeploy's engine end to end with ``device_type="ascend"`` on the simulator: every model-table row in bf16.

The plugin is activated as on hardware (runtime checks, ``transfer_to_npu``, its op table: every dlinfer op runs on
the simulated torch_npu / ATB kernels); the simulated device is the host (``sim_e2e.host_simulated``). Each row: two
prompts of different lengths batched together, in eager mode and in graph mode (simulated NPUGraph capture with FIA
recorded updatably and its host KV lengths updated after every replay), every generated token checked against
Hugging Face fp32 logits by teacher forcing (``bf16_check``). A row the adaptor cannot serve must be refused when
the engine is built (``ModelRow.refused["ascend"]``). The engine scenarios (prefix caching, chunked prefill, a long
run, sliding window) run too; the VLM rows (marker ``torchvision``) in ``nox -s tests-vlm``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import lmdeploy_on_simulator

pytest.importorskip("lmdeploy")
pytest.importorskip("dlinfer_lmdeploy")

from dlinfer_lmdeploy.testing import model_table, sim_e2e  # noqa: E402
from dlinfer_lmdeploy.testing.scenarios import Scenario  # noqa: E402

pytestmark = pytest.mark.skipif(os.environ.get("DLINFER_HARDWARE") == "1", reason="simulator tests")

DEVICE = "ascend"
MODES = sim_e2e.SIMULATED_MODES[DEVICE]
KINDS = sim_e2e.llm_kinds()
SCENARIOS = sim_e2e.engine_scenarios()
VLM_ROWS = sim_e2e.vlm_rows()


@pytest.fixture(scope="module")
def bf16_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return sim_e2e.build_checkpoints(DEVICE, tmp_path_factory.mktemp)


@pytest.fixture(scope="module")
def ascend_sim(bf16_models: dict[str, Path]) -> Iterator[dict[str, Path]]:
    """The simulator installed, a device node declared, the device host-simulated; everything undone after.
    Yields the checkpoints."""
    with lmdeploy_on_simulator():
        yield bf16_models


def test_host_simulated_device_stands_in_on_the_redirected_torch_cuda(ascend_sim: dict[str, Path]) -> None:
    """The adaptor's host stand-ins go on whatever ``torch.cuda`` is after the plugin's activation (here
    ``transfer_to_npu``'s simulated ``torch.npu``), and host-truthful answers replace the simulated device's."""
    import torch
    from dlinfer_lmdeploy import cpu_device, devices

    device = devices.get(DEVICE)
    assert device.tensors_on_host and not device.on_host  # host-simulated, not the CPU reference device
    devices.activate(DEVICE)
    assert torch.cuda is torch.npu, "transfer_to_npu's redirection must stay in force"  # type: ignore[attr-defined]
    assert torch.cuda.Stream is cpu_device._HostStream
    assert torch.cuda.is_available() is False  # the host's answer (dynamo probes it), not the simulated device's
    assert torch.empty(2, device="cuda").device.type == "cpu"
    devices.declare_host_simulated(device.backend.name, simulated=False)
    try:
        assert not devices.get(DEVICE).tensors_on_host
    finally:
        devices.declare_host_simulated(device.backend.name)


@pytest.mark.parametrize("kind", KINDS)
def test_row_bf16_eager_and_graph_match_hf_fp32(kind: str, ascend_sim: dict[str, Path]) -> None:
    if sim_e2e.refusal(DEVICE, kind):
        pytest.skip(f"refused on {DEVICE}: {sim_e2e.refusal(DEVICE, kind)} (test_refused_rows_fail_at_build)")
    _check(sim_e2e.row_scenario(kind), ascend_sim[kind])


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_engine_scenario_bf16_eager_and_graph_match_hf_fp32(scenario: Scenario, ascend_sim: dict[str, Path]) -> None:
    """Prefix caching and chunked prefill (paged prefill over cached blocks: FIA TND for head 128, single-token
    FIA calls for head 16), and a long run over 15 KV blocks per sequence."""
    _check(scenario, ascend_sim[scenario.model])


def _check(scenario: Scenario, path: Path) -> None:
    from npu_sim import graphs

    before = len(graphs._ALL_GRAPHS)

    def captured(mode: str) -> None:
        nonlocal before
        new, before = graphs._ALL_GRAPHS[before:], len(graphs._ALL_GRAPHS)
        if mode == "graph":
            assert any(g.updatable for g in new), "no NPU graph with an updatable FIA node was captured"
        else:
            assert not new, f"{mode} mode captured an NPU graph"

    calls, failures = sim_e2e.check(scenario, path, DEVICE, MODES, captured)
    # graph mode: decode steps are replays, not Python op calls (eager: one call per layer per step)
    assert calls["graph"]["paged_decode_attention"] < calls["eager"]["paged_decode_attention"]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    "row",
    [pytest.param(r, marks=[pytest.mark.torchvision] if r.needs_torchvision else [], id=r.kind) for r in VLM_ROWS],
)
def test_vlm_row_bf16_matches_hf_fp32(row: model_table.ModelRow, ascend_sim: dict[str, Path]) -> None:
    """Every VLM request scenario (text only, one image, two images, text batched with images, mirrored image) in
    one engine per mode (eager, graph), each request checked against the fp32 HF oracle fed LMDeploy's own inputs."""
    if row.needs_torchvision:
        pytest.importorskip("torchvision", reason=f"{row.kind}: its processor needs torchvision (nox -s tests-vlm)")
    if sim_e2e.refusal(DEVICE, row.kind):
        pytest.skip(f"refused on {DEVICE}: {sim_e2e.refusal(DEVICE, row.kind)} (test_refused_rows_fail_at_build)")
    failures = [f for mode in MODES for f in sim_e2e.check_vlm_row(row, ascend_sim[row.kind], DEVICE, mode)]
    assert not failures, "\n".join(failures)


_REFUSED = [k for k in [*KINDS, *(r.kind for r in VLM_ROWS)] if sim_e2e.refusal(DEVICE, k)]


@pytest.mark.parametrize("kind", _REFUSED or ["(none)"])
def test_refused_rows_fail_at_build(kind: str, ascend_sim: dict[str, Path]) -> None:
    if not _REFUSED:
        pytest.skip(f"no model-table row is refused on {DEVICE}")
    if kind not in ascend_sim:
        pytest.skip(f"{kind}: not built here (its processor needs torchvision: nox -s tests-vlm)")
    exc = sim_e2e.build_refusal(ascend_sim[kind], DEVICE)
    assert exc is not None, f"{kind}: the engine built on {DEVICE}, but the model table says it is refused"
    assert DEVICE in str(exc), f"{kind}: the refusal does not name the device: {exc}"
