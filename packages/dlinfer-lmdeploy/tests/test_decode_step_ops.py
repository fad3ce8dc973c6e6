"""Host work of one eager decode step through the adaptor: the dlinfer ops it calls per layer, and no aten op of its
own per layer beyond what no dlinfer op covers (every dispatched op costs host time on an accelerator whose launches
are the bottleneck).

In a real LMDeploy engine on the CPU device (tiny Llama and Mixtral), every pure decode step is observed from inside
the engine thread: the ``dlinfer.ops`` calls per step must be the decoder's, derived from the model's layer count;
the aten ops issued by the Impls' own code (not inside a ``dlinfer.ops`` call) must be none for Llama and only the
top-k weight renormalisation for Mixtral; and the metadata is built once per step.
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from torch.utils._python_dispatch import TorchDispatchMode

from dlinfer_lmdeploy.testing import runner

pytestmark = pytest.mark.e2e

_SKIP = ("/torch/", "contextlib.py", "cpu_device.py", "_python_dispatch")
"""Frames that are not the issuer of an aten op: torch itself and the CPU device's redirection mode."""


def _issuer() -> str:
    """'impls', 'metadata' or 'other': the innermost code outside torch that dispatched the current aten op."""
    f = sys._getframe(2)
    while f is not None and any(s in f.f_code.co_filename for s in _SKIP):
        f = f.f_back
    name = "" if f is None else f.f_code.co_filename.replace("\\", "/")
    if "/dlinfer_lmdeploy/impls/" in name:
        return "impls"
    if name.endswith("/dlinfer_lmdeploy/metadata.py"):
        return "metadata"
    return "other"


class _Step:
    """Counters of the decode step in progress (engine thread)."""

    def __init__(self) -> None:
        self.in_op = 0
        self.ops: collections.Counter[str] = collections.Counter()
        self.aten: collections.Counter[str] = collections.Counter()
        self.builds = 0


class _CountAten(TorchDispatchMode):
    def __init__(self, step: _Step) -> None:
        super().__init__()
        self.step = step

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if not self.step.in_op:
            self.step.aten[_issuer()] += 1
        return func(*args, **(kwargs or {}))


def _expected_ops(kind: str, layers: int) -> tuple[dict[str, int], int]:
    """dlinfer op calls of one decode step and the aten ops the Impls may dispatch themselves, for ``layers`` layers.

    Per layer: input norm (plain on layer 0, fused add after), qkv, in-place rotary, KV fill, decode attention,
    o proj, post-attention add-norm, then the MLP — Llama: gate_up, silu_and_mul, down; Mixtral: the router linear,
    the top-k gating, the fused experts, and LMDeploy's ``renormalize=True`` of the top-k weights in the FusedMoE
    Impl (a sum and a division: no dlinfer op takes it) — then the final add-norm (the LM head runs after
    ``model_forward``, in LMDeploy's ``get_logits``)."""
    ops = {"rms_norm": 1, "add_rms_norm": 2 * layers, "apply_rotary_pos_emb_inplace": layers,
           "fill_kv_cache": layers, "paged_decode_attention": layers}
    if kind == "mixtral":
        return {**ops, "linear": 3 * layers, "moe_gating_topk_softmax": layers, "fused_moe": layers}, 2 * layers
    return {**ops, "linear": 4 * layers, "silu_and_mul": layers}, 0


@pytest.mark.parametrize("kind", ["llama", "mixtral"])
def test_decode_step_ops_scale_with_layers_and_adaptor_adds_none_per_layer(
    kind: str, tiny_model, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    import dlinfer.ops
    from dlinfer.spec import SPECS
    from lmdeploy.pytorch.engine.model_agent import agent

    from dlinfer_lmdeploy import metadata

    path: Path = tiny_model(kind)
    layers = json.loads((path / "config.json").read_text())["num_hidden_layers"]
    steps: list[_Step] = []
    current: list[_Step] = []

    for name in SPECS:
        fn = getattr(dlinfer.ops, name)

        def spy(*args: Any, __fn: Any = fn, __name: str = name, **kwargs: Any) -> Any:
            if not current:
                return __fn(*args, **kwargs)
            step = current[0]
            step.ops[__name] += 1
            step.in_op += 1
            try:
                return __fn(*args, **kwargs)
            finally:
                step.in_op -= 1

        monkeypatch.setattr(dlinfer.ops, name, spy)

    build = metadata.build

    def counted_build(*args: Any, **kwargs: Any) -> Any:
        if current:
            current[0].builds += 1
        return build(*args, **kwargs)

    monkeypatch.setattr(metadata, "build", counted_build)
    model_forward = agent.model_forward

    def observed(model, inputs, *args, **kwargs):  # type: ignore[no-untyped-def]
        decode = bool(inputs.is_decoding) and int(inputs.input_ids.numel()) == int(inputs.seq_length.numel())
        if not decode:
            return model_forward(model, inputs, *args, **kwargs)
        step = _Step()
        current.append(step)
        try:
            with _CountAten(step):
                out = model_forward(model, inputs, *args, **kwargs)
        finally:
            current.clear()
        steps.append(step)
        return out

    monkeypatch.setattr(agent, "model_forward", observed)
    with runner.open_pipeline(path, runner.engine_config()) as pipe:
        runner.generate(pipe, ["Hello world", "The quick brown fox"], 6)

    assert len(steps) >= 3, f"only {len(steps)} pure decode steps observed"
    want, impl_ops = _expected_ops(kind, layers)
    for i, step in enumerate(steps):
        assert dict(step.ops) == want, f"decode step {i}: dlinfer op calls {dict(step.ops)}, expected {want}"
        assert step.builds == 1, f"decode step {i}: attention metadata built {step.builds} times"
        assert step.aten["impls"] == impl_ops, (
            f"decode step {i}: the adaptor's Impls dispatched {step.aten['impls']} aten ops of their own "
            f"({layers} layers); expected {impl_ops} besides the dlinfer ops")
        assert 0 < step.aten["metadata"] == steps[0].aten["metadata"], (
            f"decode step {i}: {step.aten['metadata']} metadata ops (step 0: {steps[0].aten['metadata']})")
