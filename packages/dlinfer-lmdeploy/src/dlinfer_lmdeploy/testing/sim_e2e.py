"""LMDeploy's engine end to end on a vendor simulator (dlinfer-ascend's ``npu_sim``, dlinfer-camb's ``mlu_sim``).

A vendor simulator is a pure-PyTorch model of the vendor library's documented semantics whose "device" is the
host. The plugin is activated exactly as on hardware (its runtime checks, its ``torch.cuda`` redirection, its op
table); what the simulator cannot provide, a device node and a real ``torch.cuda``-like device module, is
supplied by declaring the device *host-simulated* (:func:`dlinfer_lmdeploy.devices.declare_host_simulated`):
LMDeploy's CUDA assumptions then go to the CPU device's host stand-ins (:mod:`dlinfer_lmdeploy.cpu_device`).

Every request runs in bf16 with the engine's raw top-k logits and is checked against the fp32 Hugging Face
oracle by teacher forcing (:mod:`dlinfer_lmdeploy.testing.bf16_check`), as on the GPU.

:data:`SIMULATED_KINDS` names, per device, the model-table kinds the CI tests run end to end (the README's
supported-model table reads it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dlinfer_lmdeploy.testing import runner
from dlinfer_lmdeploy.testing.bf16_check import Run
from dlinfer_lmdeploy.testing.scenarios import PROMPTS, Scenario

TOPK = 5
NEW_TOKENS = 8
"""new tokens per request of a row's check (the bf16 checker runs HF twice per request: keep it short)"""

CI_KINDS: dict[str, tuple[str, ...]] = {
    "ascend": ("llama", "qwen2", "qwen2_moe", "mixtral"),
    "camb": ("llama", "qwen2", "qwen2_moe", "mixtral"),
}
"""device -> kinds whose rows run in ``nox -s tests`` (the rest run with ``DLINFER_SIM_E2E=all``)"""

SIMULATED_KINDS: dict[str, tuple[str, ...]] = CI_KINDS
"""device -> kinds checked end to end on the simulator in CI (read by ``model_table.simulated_kinds``)"""


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
    op_calls: Any = None,
    **engine: Any,
) -> list[Run]:
    """Every request of every phase of ``scenario`` in bf16 on ``device_type`` -> (prompt ids, tokens, top-k
    raw logits per step); ``op_calls`` (a Counter cleared per phase) sees the last phase's ``dlinfer.ops`` calls."""
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
