"""LMDeploy's engine end to end on a vendor simulator (dlinfer-ascend's ``npu_sim``, dlinfer-camb's ``mlu_sim``).

A vendor simulator is a pure-PyTorch model of the vendor library's documented semantics whose "device" is the
host. The plugin is activated exactly as on hardware (its runtime checks, its ``torch.cuda`` redirection, its op
table); what the simulator cannot provide, a device node and a real ``torch.cuda``-like device module, is
supplied by declaring the device *host-simulated* (:func:`dlinfer_lmdeploy.devices.declare_host_simulated`):
LMDeploy's CUDA assumptions then go to the CPU device's host stand-ins (:mod:`dlinfer_lmdeploy.cpu_device`).

Every request runs in bf16 with the engine's raw top-k logits and is checked against the fp32 Hugging Face
oracle by teacher forcing (:mod:`dlinfer_lmdeploy.testing.bf16_check`), as on the GPU.

:data:`SIMULATED_KINDS` names, per device, the model-table kinds the CI tests run end to end (the README's
supported-model table reads it): every row not refused there.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dlinfer_lmdeploy.testing import runner
from dlinfer_lmdeploy.testing.bf16_check import Run
from dlinfer_lmdeploy.testing.scenarios import PROMPTS, Scenario

TOPK = 5
NEW_TOKENS = 16
"""new tokens per request of a row's check: short (the bf16 checker runs HF twice per request), but long enough
that one near-tie flip stays within the checker's argmax-agreement slack (0.1: one step in 8 does not)"""

DEVICES = ("ascend", "camb")
SIMULATED_MODES: dict[str, tuple[str, ...]] = {"ascend": ("eager", "graph"), "camb": ("eager",)}
"""device -> engine modes its simulator tests run: camb's simulated MLUGraph captures nothing, so only eager"""


def _simulated_kinds() -> dict[str, tuple[str, ...]]:
    from dlinfer_lmdeploy.testing import model_table

    return {d: tuple(r.kind for r in model_table.ROWS if d not in r.refused) for d in DEVICES}


SIMULATED_KINDS: dict[str, tuple[str, ...]] = _simulated_kinds()
"""device -> kinds checked end to end on the simulator in CI (read by ``model_table.simulated_kinds``): every row
not refused there; the LLM rows in ``nox -s tests`` (the whole table takes ~1-1.5 min per vendor on 2 shared
cores), the VLM rows in ``nox -s tests-vlm``"""


def prime_host_probes() -> None:
    """Make transformers' accelerator probes answer for the host; call *before* a simulator is importable.

    transformers probes ``torch_npu`` / ``torch_mlu`` once (``lru_cache``) on first use and, when found, routes
    its own attention to the vendor's kernels (``torch_npu.npu_fusion_attention``) — which the simulators do not
    model (they model only what the dlinfer plugins call). The HF oracle and LMDeploy's config loading are host
    code here, so the probes are answered while no simulator is visible.
    """
    from transformers.utils import import_utils

    import_utils.is_torch_npu_available()
    import_utils.is_torch_mlu_available()
    import transformers.integrations.flash_attention  # noqa: F401  (computes its NPU mask flag at import)


@contextmanager
def host_simulated(device_type: str) -> Iterator[None]:
    """Within: the dlinfer device ``device_type`` (``"ascend"``, ``"camb"``) is host-simulated; the process's
    device state (active backend, host stand-ins) is reset on exit so that later tests start clean."""
    import dlinfer.dispatch

    from dlinfer_lmdeploy import cpu_device, devices

    name = devices.get(device_type).backend.name
    devices.declare_host_simulated(name)
    try:
        yield
    finally:
        devices.declare_host_simulated(name, simulated=False)
        cpu_device.deactivate()
        devices._reset_for_tests()
        dlinfer.dispatch.deactivate()


def row_scenario(kind: str, new_tokens: int = NEW_TOKENS) -> Scenario:
    """A row's check: two prompts of different lengths batched together (varlen prefill, then decode)."""
    from dlinfer_lmdeploy.testing import scenarios

    base = scenarios.BY_NAME.get(f"concurrent_{kind}")
    if base is None:
        base = scenarios._concurrent(kind)
    return dataclasses.replace(base, name=f"sim_{kind}", phases=(PROMPTS[:2],), new_tokens=new_tokens)


def run(
    scenario: Scenario,
    path: str | Path,
    device_type: str,
    mode: str = "eager",
    op_calls: collections.Counter[str] | None = None,
    **engine: Any,
) -> list[Run]:
    """Every request of every phase of ``scenario`` in bf16 on ``device_type`` -> (prompt ids, tokens, top-k
    raw logits per step); ``op_calls`` (a ``vlm.count_ops`` counter) is cleared before each phase, so that it holds the
    last phase's calls, to which the scenario's op expectations apply."""
    cfg = runner.engine_config(
        device_type,
        dtype="bfloat16",
        eager_mode=(mode == "eager"),
        max_batch_size=4,
        logprobs_mode="raw_logits",
        **{**scenario.engine, **engine},
    )
    runs: list[Run] = []
    with runner.open_pipeline(path, cfg) as pipe:
        for phase in scenario.phases:
            if op_calls is not None:
                op_calls.clear()
            ids = [runner.encode(pipe, p) for p in phase]
            outs = runner.generate_with_logits(pipe, phase, scenario.new_tokens, TOPK)
            runs += [(i, tokens, top) for i, (tokens, top) in zip(ids, outs, strict=True)]
    return runs


def build_refusal(path: str | Path, device_type: str, **engine: Any) -> BaseException | None:
    """The exception building a bf16 engine for ``path`` on ``device_type`` raises (None if it builds)."""
    cfg = runner.engine_config(device_type, dtype="bfloat16", max_batch_size=4, **engine)
    try:
        with runner.open_pipeline(path, cfg):
            return None
    except Exception as exc:  # noqa: BLE001 - the refusal is the result
        return exc


def llm_kinds() -> list[str]:
    """The model table's LLM kinds (the scenario models until the table has rows)."""
    from dlinfer_lmdeploy.testing import model_table, tiny_models

    return [r.kind for r in model_table.ROWS if r.modality == "LLM"] or list(tiny_models.KINDS)


def build_bf16(kind: str, path: str | Path) -> Path:
    """The tiny bf16 checkpoint of ``kind`` (its model-table builder, or ``tiny_models.build``)."""
    import torch

    from dlinfer_lmdeploy.testing import model_table, tiny_models

    row = model_table.BY_KIND.get(kind)
    if row is not None:
        return row.build(path, dtype=torch.bfloat16)
    return tiny_models.build(kind, path, dtype=torch.bfloat16)


def build_checkpoints(device_type: str, mktemp: Callable[[str], Path]) -> dict[str, Path]:
    """kind -> tiny bf16 checkpoint for every row a simulator run checks: the LLM rows, the engine scenarios'
    models and the VLM rows whose preprocessing can run here (torchvision); ``mktemp(name)`` gives a fresh folder.
    Built on the host before the device is activated (the plugin's ``torch.cuda`` redirection points at the
    simulated device module, which ``torch.manual_seed`` probes)."""
    import importlib.util

    has_torchvision = importlib.util.find_spec("torchvision") is not None
    kinds = set(llm_kinds()) | {s.model for s in engine_scenarios()}
    kinds |= {r.kind for r in vlm_rows() if has_torchvision or not r.needs_torchvision}
    return {kind: build_bf16(kind, mktemp(f"{device_type}_{kind}")) for kind in sorted(kinds)}


def refusal(device_type: str, kind: str) -> str | None:
    """Why the model table says ``device_type`` refuses ``kind`` at engine build (None: served)."""
    from dlinfer_lmdeploy.testing import model_table

    row = model_table.BY_KIND.get(kind)
    return row.refused.get(device_type) if row is not None else None


HEAD128 = "qwen2_7b"
"""the head-128 row the engine scenarios also run on (Ascend: FIA's TND paged-prefill route; head 16 takes the
per-token route)"""


def engine_scenarios() -> list[Scenario]:
    """The engine scenarios of :data:`scenarios.SCENARIOS` (prefix caching, chunked prefill, a long run; not the
    per-model ``concurrent_*`` ones, which the rows cover) on their models, and the prefix-caching and
    chunked-prefill ones on :data:`HEAD128` too."""
    from dlinfer_lmdeploy.testing import model_table
    from dlinfer_lmdeploy.testing.scenarios import SCENARIOS

    base = [s for s in SCENARIOS if not s.name.startswith("concurrent_")]
    extra = []
    if HEAD128 in model_table.BY_KIND:
        extra = [
            dataclasses.replace(s, name=f"{s.name}_{HEAD128}", model=HEAD128)
            for s in base
            if s.name in ("prefix_caching", "chunked_prefill")
        ]
    return base + extra


def _check_graphed(where: str, mode: str, steps: Any) -> None:
    """Graph mode: decode steps ran as graph replays/captures, none eagerly (``graph_runner.counting``)."""
    if mode != "graph":
        return
    assert steps.graphed > 0, f"{where}: no decode step was graphed"
    assert steps.eager_decode == 0, f"{where}: {steps.eager_decode} decode steps ran eagerly ({dict(steps.eager)})"


def check(
    scenario: Scenario,
    path: str | Path,
    device_type: str,
    modes: tuple[str, ...],
    after_mode: Callable[[str], None] | None = None,
) -> tuple[dict[str, collections.Counter[str]], list[str]]:
    """Run ``scenario`` on ``device_type`` in each mode and check every request against the fp32 HF oracle ->
    (``dlinfer.ops`` calls of the last phase per mode, failure messages). Raises AssertionError when the ops
    ran on another backend or the eager run misses the scenario's op expectations. ``after_mode(mode)`` runs
    after each mode's engine closed (device-specific checks)."""
    import dlinfer.dispatch

    from dlinfer_lmdeploy import devices, graph_runner
    from dlinfer_lmdeploy.testing import model_table, vlm
    from dlinfer_lmdeploy.testing.bf16_check import check_against_hf

    backend = devices.get(device_type).backend.name
    results: dict[str, list[Run]] = {}
    calls: dict[str, collections.Counter[str]] = {}
    for mode in modes:
        with vlm.count_ops() as counts, graph_runner.counting() as steps:
            results[mode] = run(scenario, path, device_type, mode, counts)
        _check_graphed(f"{scenario.name}/{mode}", mode, steps)
        calls[mode] = collections.Counter(counts)
        active = dlinfer.dispatch.current().name
        assert active == backend, f"{scenario.name}/{mode}: the ops ran on dlinfer backend '{active}', not '{backend}'"
        if after_mode is not None:
            after_mode(mode)
    if "eager" in calls:  # in graph mode the decode ops run as graph replays, not as Python calls
        scenario.check_calls(calls["eager"])
    _, failures = check_against_hf(scenario, model_table.oracle_path(path), results, "cpu")
    return calls, failures


def vlm_rows() -> list[Any]:
    """The model table's VLM rows."""
    from dlinfer_lmdeploy.testing import model_table

    return [r for r in model_table.ROWS if r.modality == "VLM"]


def check_vlm_row(row: Any, path: str | Path, device_type: str, mode: str = "eager") -> list[str]:
    """Every ``vlm.SCENARIOS`` request of a VLM row in one bf16 engine on ``device_type`` (``mode``), each checked
    against the fp32 HF oracle fed LMDeploy's own inputs (``vlm.teacher_forced_fn``), all requests of the row in one
    check (the argmax-agreement rate is pooled over them) -> failure messages; also requires the mirrored image to
    change the tokens and the vision tower to make dlinfer op calls."""
    from dlinfer_lmdeploy import graph_runner
    from dlinfer_lmdeploy.testing import model_table, vlm
    from dlinfer_lmdeploy.testing.bf16_check import check_against_hf

    engine = runner.engine_config(
        device_type,
        dtype="bfloat16",
        eager_mode=(mode == "eager"),
        max_batch_size=4,
        logprobs_mode="raw_logits",
        **row.engine,
    )
    with graph_runner.counting() as steps:
        result = vlm.run_row(Path(path), engine, logits=TOPK, skip=row.skipped)
    _check_graphed(f"{row.kind}/{mode}", mode, steps)
    runs: list[Run] = []
    captured = []
    for name, res in result.results.items():
        runs += [(r.captured.input_ids, r.tokens, top) for r, top in zip(res, result.logits[name], strict=True)]
        captured += [r.captured for r in res]
    scenario = Scenario(f"{row.kind} ({', '.join(result.results)})/{mode}", row.kind, (), vlm.NEW_TOKENS)
    oracle = vlm.teacher_forced_fn(row, Path(path), captured)
    _, failures = check_against_hf(scenario, model_table.oracle_path(path), {"eager": runs}, "cpu", oracle)
    if "one_image" in result.results and "mirrored_image" in result.results:
        if result.results["one_image"][0].tokens == result.results["mirrored_image"][0].tokens:
            failures.append(f"{row.kind}: mirroring the image did not change the tokens")
        if not result.vision_calls():
            failures.append(f"{row.kind}: one image made no dlinfer op calls beyond the text-only request's")
    return failures
