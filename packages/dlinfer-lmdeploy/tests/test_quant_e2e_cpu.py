"""Quantised checkpoints end to end on the CPU: lmdeploy.pipeline (``device_type="cpu"``, dlinfer's reference
backend) on an AWQ W4A16 and a W8A8 smooth-quant tiny Llama3 (``dlinfer_lmdeploy.testing.tiny_quant``), against the
dequantised-weight HF oracle, by teacher forcing (``testing.bf16_check``: the engine's raw logits of its top-5
tokens at every step against the oracle's fp32 logits on the same prefix).

* W8A8 runs in fp32. Exact greedy tokens are not a fair requirement: the activations are re-quantised before every
  linear, and an fp32 rounding difference anywhere (HF's summation order against the reference backend's) flips an
  int8 code, which moves the logits by up to ~0.9 here (the oracle's own fp32 and fp64 runs differ that much). The
  tolerance is therefore calibrated by the oracle's fp32-vs-fp64 difference (mean 0.10-0.18, max 0.28-0.32 on the
  engine's top-5 tokens); the engine is within 0.10-0.15 mean / 0.36 max of the oracle, while the same check with
  fp32 logits from the dequantised weights without activation quantisation (0.9-1.0 mean off) must fail.
* AWQ runs in fp16 whatever the engine's ``dtype`` (LMDeploy 0.18 forces it: ``config.py::_update_torch_dtype``,
  ``AwqLinear``); the tolerance is calibrated by the oracle's own fp16 error (max ~0.1; the engine: max 0.07-0.14
  off the fp32 oracle); the same check with fp32 logits from the float model before quantisation (10-12 mean off)
  must fail.

Besides the logits, the op calls show that every decoder linear went through the quantised ops, and the checkpoint
writers are compared with LMDeploy's own (``lmdeploy lite``'s ``WeightOnlyQLinear`` packer, ``per_channel_quant``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from dlinfer_lmdeploy.testing import hf_oracle, runner, tiny_models, tiny_quant
from dlinfer_lmdeploy.testing.bf16_check import Run, check_against_hf
from dlinfer_lmdeploy.testing.scenarios import Scenario

pytestmark = pytest.mark.e2e

LAYERS = 2
"""decoder layers of the tiny Llama3 (``tiny_models._COMMON``)"""
QUANT_LINEARS_PER_LAYER = 4
"""qkv (merged), o_proj, gate_up (merged), down_proj: one quantised GEMM each"""
TOPK = 5


@pytest.fixture(scope="module")
def quant_model(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = tiny_quant.BUILDERS[name](tmp_path_factory.mktemp(name))
        return built[name]

    return get


def _run(scenario: Scenario, path: Path, op_calls, expect_dtype: torch.dtype) -> tuple[list[Run], int]:  # type: ignore[no-untyped-def]
    """Every phase on one engine configured for fp32 -> (runs, weight_quant_prepare calls while it loaded)."""
    runs: list[Run] = []
    with runner.open_pipeline(path, runner.engine_config(logprobs_mode="raw_logits")) as pipe:
        dtype = pipe.async_engine.engine.model_config.dtype
        assert dtype == expect_dtype, f"LMDeploy ran {scenario.name} in {dtype}, expected {expect_dtype}"
        at_load = dict(op_calls)
        for phase in scenario.phases:
            op_calls.clear()
            ids = [runner.encode(pipe, p) for p in phase]
            outs = runner.generate_with_logits(pipe, phase, scenario.new_tokens, TOPK)
            runs += [(i, tokens, top) for i, (tokens, top) in zip(ids, outs, strict=True)]
    scenario.check_calls(op_calls)
    return runs, at_load.get("weight_quant_prepare", 0)


def _per_forward(calls, op: str, unit: str, per: int) -> None:  # type: ignore[no-untyped-def]
    """``calls[op] == per * calls[unit]`` (``unit``: an op called once per model forward)."""
    assert calls[unit] > 0, f"{unit} was not called"
    assert calls[op] == per * calls[unit], f"{op}: {calls[op]} calls for {calls[unit]} forwards, expected {per} each"


def _check(scenario: Scenario, path: Path, runs: list[Run], cal: torch.dtype) -> list[str]:
    """``check_against_hf`` of ``runs`` against the dequantised oracle's fp32 logits, the tolerance calibrated by the
    oracle's own ``cal`` error -> failure messages."""
    teacher = functools.partial(hf_oracle.teacher_forced, path, loader=tiny_quant.load_oracle)
    stats, failures = check_against_hf(scenario, path, {"eager": runs}, "cpu", teacher_forced=teacher, calibration=cal)
    assert failures or len(stats) == len(runs)
    return failures


def _impostor(path: Path, runs: list[Run], loader: hf_oracle.Loader) -> list[Run]:
    """Runs as an engine computing the model ``loader`` loads would report them: its fp32 greedy tokens on the same
    prompts and its raw logits of its top-k tokens at every step."""
    prompts = [ids for ids, _, _ in runs]
    tokens = hf_oracle.greedy(path, prompts, len(runs[0][1]), loader=loader)
    logits = hf_oracle.teacher_forced(path, list(zip(prompts, tokens, strict=True)), loader=loader)
    tops = [[{int(t): float(v) for v, t in zip(*step.topk(TOPK), strict=True)} for step in lg] for lg in logits]
    return list(zip(prompts, tokens, tops, strict=True))


def test_w8a8_fp32_against_oracle(quant_model, op_calls):  # type: ignore[no-untyped-def]
    scenario = tiny_quant.SCENARIOS["quant_w8a8"]
    path = quant_model(scenario.name)
    runs, _ = _run(scenario, path, op_calls, torch.float32)
    # per forward: the first input norm alone, every other norm fused with the residual add; o_proj and down_proj
    # quantise their input themselves
    _per_forward(op_calls, "add_rms_norm_w8a8", "rms_norm_w8a8", 2 * LAYERS - 1)
    _per_forward(op_calls, "dynamic_quant", "rms_norm_w8a8", 2 * LAYERS)
    _per_forward(op_calls, "linear_w8a8", "rms_norm_w8a8", QUANT_LINEARS_PER_LAYER * LAYERS)
    failures = _check(scenario, path, runs, torch.float64)
    assert not failures, "\n".join(failures)
    # an engine that skipped the activation quantisation (dequantised weights, float activations) must fail
    assert _check(scenario, path, _impostor(path, runs, hf_oracle.load), torch.float64), (
        "the check does not tell quantised activations from float ones"
    )


def test_awq_fp16_against_oracle(quant_model, op_calls, tmp_path):  # type: ignore[no-untyped-def]
    scenario = tiny_quant.SCENARIOS["quant_awq"]
    path = quant_model(scenario.name)
    runs, prepared = _run(scenario, path, op_calls, torch.float16)
    assert prepared == QUANT_LINEARS_PER_LAYER * LAYERS, f"weight_quant_prepare called {prepared} times at load"
    _per_forward(op_calls, "weight_quant_matmul", "rms_norm", QUANT_LINEARS_PER_LAYER * LAYERS)
    failures = _check(scenario, path, runs, torch.float16)
    assert not failures, "\n".join(failures)
    # an engine that computed with the float weights the codes were quantised from (same seed) must fail
    original = tiny_models.build("llama3", tmp_path / "float", dtype=torch.float16)
    impostor = _impostor(path, runs, lambda _p, *a: hf_oracle.load(original, *a))
    assert _check(scenario, path, impostor, torch.float16), "the check does not tell dequantised from original weights"


def test_awq_layout_is_lmdeploy_lite_layout() -> None:
    """``tiny_quant``'s AWQ tensors equal what ``lmdeploy lite auto_awq``'s packer writes for the same codes."""
    from types import SimpleNamespace

    from lmdeploy.lite.quantization.modules.linear import WeightOnlyQLinear
    from lmdeploy.lite.utils.cal_qparams import QParams

    w = torch.randn(48, 128, generator=torch.Generator().manual_seed(1))
    codes, zeros, scales = tiny_quant.awq_quantise(w, tiny_quant.AWQ_GROUP_SIZE)
    assert int(codes.min()) >= 0 and int(codes.max()) == 15 and zeros.unique().numel() > 1
    linear = torch.nn.Linear(128, 48, bias=False)
    linear.weight.data = codes.t().float().contiguous()
    quantizer = SimpleNamespace(bits=4, group_size=tiny_quant.AWQ_GROUP_SIZE, symmetry=False)
    qparams = QParams(scales=scales.t()[..., None].contiguous(), zero_points=zeros.t()[..., None].float())
    lite = WeightOnlyQLinear.from_linear(linear, quantizer, awq_layout=True, qparams=qparams)
    assert torch.equal(lite.qweight, tiny_quant.awq_pack(codes))
    assert torch.equal(lite.qzeros, tiny_quant.awq_pack(zeros))
    assert torch.equal(lite.scales, scales)
    deq = tiny_quant.awq_dequantise(codes, zeros, scales)
    assert (deq - w).abs().max() <= scales.float().max() * 0.51 + 1e-6, "dequantised weight far from the original"


def test_w8a8_layout_is_lmdeploy_lite_layout() -> None:
    """``tiny_quant``'s int8 weights and scales equal LMDeploy's ``per_channel_quant`` (``QLinear.from_float``)."""
    from lmdeploy.pytorch.kernels.default.w8a8_kernels import per_channel_quant

    w = torch.randn(48, 128, generator=torch.Generator().manual_seed(2))
    w_q, scale = tiny_quant.w8a8_quantise(w)
    ref_q, ref_scale = per_channel_quant(w, torch.int8)
    assert w_q.dtype == torch.int8 and scale.shape == (48, 1)
    assert torch.equal(w_q, ref_q) and torch.equal(scale, ref_scale)
