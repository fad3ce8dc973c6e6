"""Tiny quantised checkpoints in the formats LMDeploy 0.18 loads, and their dequantised-weight oracles.

* **AWQ W4A16** (``quantization_config = {quant_method: awq, version: gemm, bits: 4, group_size, zero_point: true}``,
  as ``lmdeploy lite auto_awq`` writes it): every decoder-layer linear is stored as ``qweight`` int32
  ``[IN, OUT/8]``, ``qzeros`` int32 ``[IN/g, OUT/8]`` and ``scales`` fp16 ``[IN/g, OUT]``; nibble ``i`` (bits
  ``4i..4i+3``) of packed column ``c`` holds output column ``8c + AWQ_PACK_ORDER[i]``
  (``lmdeploy/lite/quantization/modules/linear.py::WeightOnlyQLinear.from_linear``, AutoAWQ's order). The weight is
  ``W[i, o] = (q[i, o] - z[i // g, o]) * s[i // g, o]``. LMDeploy runs AWQ models in fp16 whatever the checkpoint
  says (``pytorch/config.py::_update_torch_dtype``, ``nn/linear/awq.py::AwqLinear``).
* **W8A8 smooth-quant** (``quantization_config = {quant_method: smooth_quant, quant_dtype: int8}``, as ``lmdeploy
  lite smooth_quant`` writes it): every decoder-layer linear is stored as ``weight`` int8 ``[OUT, IN]`` and ``scale``
  fp32 ``[OUT, 1]`` (``QLinear.from_float``: per output channel, ``scale = max|w| / 127``); the RMSNorm weights keep
  their float values (``QRMSNorm.from_float``; the smoothing factors the tool folds into them are a calibration
  choice, not a format: a random checkpoint needs none). At run time LMDeploy quantises activations per token
  (``rms_norm_w8a8`` for the inputs of q/k/v and gate/up, ``dynamic_quant`` for those of o_proj and down_proj).

Both start from a random float Llama (the tiny Llama3 of ``tiny_models``, or a Llama-3-8B-wide model of 2 layers
built on the GPU) whose weights are quantised (realistic codes, zeros and scales); :func:`quantise_checkpoint` does
the same to any float Llama-family checkpoint (the e2e benchmark's ``--quant``). The oracle, a plain HF
``LlamaForCausalLM`` under ``<path>/oracle`` (fp32), holds the **dequantised** weights; for W8A8,
:func:`load_oracle` also fake-quantises the input of every quantised linear per token (``round(x / s) * s`` with
``s = max|x| / 127``, the ``dynamic_quant`` spec) with forward pre-hooks, written here with torch and independent
of dlinfer's ops.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dlinfer_lmdeploy.testing import hf_oracle, tiny_models
from dlinfer_lmdeploy.testing.model_table import ORACLE_SUBDIR
from dlinfer_lmdeploy.testing.scenarios import PROMPTS, Scenario

QUANT_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""the decoder-layer linears both formats quantise (embeddings, norms and lm_head stay float)"""
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
"""nibble i of a packed int32 holds output column ``8c + AWQ_PACK_ORDER[i]`` (LMDeploy lite's ``pack_order``)"""
AWQ_GROUP_SIZE = 32
"""divides every width of the tiny models (hidden 64/128, MLP 128/256); maca needs a multiple of 16"""
INT8_MAX = 127


def _is_quantised(name: str) -> bool:
    return name.endswith(".weight") and name.split(".")[-2] in QUANT_LINEARS and ".layers." in name


def awq_quantise(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit min-max quantisation of an HF weight ``w [OUT, IN]`` in groups of ``group_size`` inputs ->
    (codes int32 ``[IN, OUT]`` in 0..15, zeros int32 ``[IN/g, OUT]``, scales fp16 ``[IN/g, OUT]``)."""
    out_f, in_f = w.shape
    if in_f % group_size:
        raise ValueError(f"awq_quantise: IN={in_f} is not a multiple of group_size={group_size}")
    g = w.t().float().reshape(in_f // group_size, group_size, out_f)
    lo, hi = g.amin(1).clamp(max=0.0), g.amax(1).clamp(min=0.0)
    scales = ((hi - lo) / 15).clamp(min=1e-5).half()
    s = scales.float()
    zeros = torch.round(-lo / s).clamp(0, 15)
    codes = (torch.round(g / s[:, None]) + zeros[:, None]).clamp(0, 15)
    return codes.reshape(in_f, out_f).int(), zeros.int(), scales


def awq_pack(codes: torch.Tensor) -> torch.Tensor:
    """int ``[R, C]`` of 4-bit values -> int32 ``[R, C/8]`` in AWQ's nibble order (:data:`AWQ_PACK_ORDER`)."""
    rows, cols = codes.shape
    if cols % 8:
        raise ValueError(f"awq_pack: {cols} columns is not a multiple of 8")
    c = codes.long().reshape(rows, cols // 8, 8)
    packed = torch.zeros(rows, cols // 8, dtype=torch.long, device=codes.device)
    for i, col in enumerate(AWQ_PACK_ORDER):
        packed |= c[..., col] << (4 * i)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def awq_dequantise(codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(codes ``[IN, OUT]``, zeros/scales ``[IN/g, OUT]``) -> the HF weight ``[OUT, IN]`` in fp32."""
    group = codes.shape[0] // zeros.shape[0]
    w = (codes.float() - zeros.float().repeat_interleave(group, 0)) * scales.float().repeat_interleave(group, 0)
    return w.t().contiguous()


def w8a8_quantise(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 of ``w [OUT, IN]`` -> (int8 ``[OUT, IN]``, fp32 scale ``[OUT, 1]``)."""
    scale = (w.float().abs().amax(1, keepdim=True) / INT8_MAX).clamp(min=1e-8)
    return torch.round(w.float() / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8), scale


def _awq_tensors(group_size: int) -> Any:
    def quantise(prefix: str, w: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        codes, zeros, scales = awq_quantise(w, group_size)
        tensors = {f"{prefix}.qweight": awq_pack(codes), f"{prefix}.qzeros": awq_pack(zeros),
                   f"{prefix}.scales": scales.contiguous()}  # fmt: skip
        return tensors, awq_dequantise(codes, zeros, scales)

    return quantise


def _w8a8_tensors(prefix: str, w: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    w_q, scale = w8a8_quantise(w)
    return {f"{prefix}.weight": w_q, f"{prefix}.scale": scale}, (w_q.float() * scale).contiguous()


METHODS = ("awq", "w8a8")


def quantise_checkpoint(
    src: str | Path, dst: str | Path, method: str, *, group_size: int = AWQ_GROUP_SIZE, device: str = "cpu",
    oracle: str | Path | None = None,
) -> Path:
    """Quantise the float Llama-family checkpoint at ``src`` (safetensors, single or sharded) into LMDeploy's
    ``method`` format (``"awq"``: W4A16 with ``group_size``, float tensors in fp16; ``"w8a8"``: smooth-quant int8,
    float tensors kept) at ``dst``, shard by shard on ``device``; tokenizer and generation config are copied. With
    ``oracle`` (may be ``src``), also write there the fp32 checkpoint of the dequantised weights. Returns ``dst``."""
    import shutil

    from safetensors.torch import load_file, save_file

    if method not in METHODS:
        raise ValueError(f"quantise_checkpoint: method={method!r}, expected one of {METHODS}")
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    quantise = _awq_tensors(group_size) if method == "awq" else _w8a8_tensors
    float_dtype = torch.float16 if method == "awq" else None
    weight_map: dict[str, str] = {}
    oracle_map: dict[str, str] = {}
    for shard in sorted(src.glob("*.safetensors")):
        quantised: dict[str, torch.Tensor] = {}
        dequantised: dict[str, torch.Tensor] = {}
        for name, w in load_file(str(shard), device=device).items():
            if _is_quantised(name):
                tensors, w_deq = quantise(name.removesuffix(".weight"), w)
                quantised.update({k: v.cpu() for k, v in tensors.items()})
                dequantised[name] = w_deq.cpu()
            else:
                quantised[name] = (w.to(float_dtype) if float_dtype else w).cpu().contiguous()
                dequantised[name] = quantised[name].float()
        save_file(quantised, str(dst / shard.name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(quantised, shard.name))
        if oracle is not None:
            tmp = Path(oracle) / f"{shard.name}.tmp"
            save_file(dequantised, str(tmp), metadata={"format": "pt"})
            tmp.replace(Path(oracle) / shard.name)
            oracle_map.update(dict.fromkeys(dequantised, shard.name))
        if device != "cpu":
            torch.cuda.empty_cache()
    index = src / "model.safetensors.index.json"
    if index.exists():
        (dst / index.name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
        if oracle is not None:
            (Path(oracle) / index.name).write_text(json.dumps({"metadata": {}, "weight_map": oracle_map}, indent=2))
    config = json.loads((src / "config.json").read_text())
    qconfig: dict[str, Any] = (
        dict(quant_method="awq", version="gemm", bits=4, group_size=group_size, zero_point=True)
        if method == "awq" else dict(quant_method="smooth_quant", quant_dtype="int8")
    )  # fmt: skip
    dtypes = {"torch_dtype": "float16", "dtype": "float16"} if method == "awq" else {}
    (dst / "config.json").write_text(json.dumps({**config, **dtypes, "quantization_config": qconfig}, indent=2))
    if oracle is not None:
        (Path(oracle) / "config.json").write_text(
            json.dumps({**config, "torch_dtype": "float32", "dtype": "float32"}, indent=2)
        )
    for extra in src.iterdir():
        if extra.is_file() and extra.suffix != ".safetensors" and extra.name not in ("config.json", index.name):
            shutil.copy(extra, dst / extra.name)
    return dst


def write_quantised(
    path: str | Path, method: str, *, kind: str = "llama3", config: Any = None, seed: int = 0,
    dtype: torch.dtype = torch.float32, group_size: int = AWQ_GROUP_SIZE, device: str = "cpu",
) -> Path:
    """``method`` (``"awq"``/``"w8a8"``) checkpoint at ``path`` of a random float model written (in ``dtype``) to
    ``path/oracle``, which then holds the dequantised fp32 oracle. The float model is the tiny ``kind``
    (``tiny_models.build``), or ``config`` initialised on ``device`` (``tiny_models.build_on_device``)."""
    oracle = Path(path) / ORACLE_SUBDIR
    if config is None:
        tiny_models.build(kind, oracle, seed=seed, dtype=dtype)
    else:
        tiny_models.build_on_device(config, oracle, device=device, dtype=dtype, seed=seed)
    return quantise_checkpoint(oracle, path, method, group_size=group_size, device=device, oracle=oracle)


def build_awq(path: str | Path, *, dtype: torch.dtype = torch.float16, seed: int = 0) -> Path:
    """AWQ W4A16 of the tiny Llama3 (head 64, GQA 4), group size 32 (``dtype``: the float model's)."""
    return write_quantised(path, "awq", dtype=dtype, seed=seed)


def build_w8a8(path: str | Path, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """W8A8 smooth-quant of the tiny Llama3 (head 64, GQA 4), float tensors in ``dtype``."""
    return write_quantised(path, "w8a8", dtype=dtype, seed=seed)


WIDE_LAYERS = 2


def _wide(method: str) -> Any:
    def build(path: str | Path, *, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Path:
        config = tiny_models.llama_3_8b_config(num_hidden_layers=WIDE_LAYERS)
        return write_quantised(path, method, config=config, seed=seed, dtype=dtype, group_size=128, device="cuda")

    build.__name__ = build.__qualname__ = f"build_{method}_8b"
    build.__doc__ = (f"{method} of a Llama-3-8B-wide model of {WIDE_LAYERS} layers (hidden 4096, MLP 14336, "
                     "vocabulary 128256; AWQ group 128), random N(0, 0.02) weights built on the GPU.")
    return build


build_awq_8b = _wide("awq")
build_w8a8_8b = _wide("w8a8")


def fake_quant_per_token(x: torch.Tensor) -> torch.Tensor:
    """``round(x / s).clamp(-127, 127) * s`` with ``s = max|x| / 127`` per token (last dim), in fp32 (fp64 for fp64
    inputs); returned in ``x.dtype``. All-zero tokens stay zero."""
    xf = x if x.dtype == torch.float64 else x.float()
    s = xf.abs().amax(-1, keepdim=True) / INT8_MAX
    s = torch.where(s > 0, s, torch.ones_like(s))
    return (torch.round(xf / s).clamp(-INT8_MAX, INT8_MAX) * s).to(x.dtype)


def quant_method(path: str | Path) -> str | None:
    """``quantization_config.quant_method`` of the checkpoint at ``path`` (None when it is not quantised)."""
    config = json.loads((Path(path) / "config.json").read_text())
    return (config.get("quantization_config") or {}).get("quant_method")


def load_oracle(path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Any:
    """The dequantised-weight HF model of the quantised checkpoint at ``path`` (eval mode, on ``device``); for a
    smooth-quant checkpoint the input of every quantised linear is fake-quantised per token (pre-hooks)."""
    model = hf_oracle.load(path, dtype, device)
    if quant_method(path) == "smooth_quant":
        for name, module in model.named_modules():
            if name.split(".")[-1] in QUANT_LINEARS and ".layers." in f".{name}":
                module.register_forward_pre_hook(lambda _m, args: (fake_quant_per_token(args[0]), *args[1:]))
    return model


_W8A8_OPS = ("rms_norm_w8a8", "add_rms_norm_w8a8", "dynamic_quant", "linear_w8a8")


def _scenario(name: str, model: str) -> Scenario:
    if "awq" in name:
        calls, no_calls = {"weight_quant_matmul": 1, "rms_norm": 1}, _W8A8_OPS
    else:
        calls, no_calls = dict.fromkeys(_W8A8_OPS, 1), ("weight_quant_matmul", "rms_norm")
    return Scenario(name, model, (PROMPTS, PROMPTS[1:2]), 16, min_calls=calls, no_calls=no_calls,
                    doc=f"{model}: three prompts batched, then one alone")


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        _scenario("quant_awq", "tiny Llama3, AWQ W4A16 group 32"),
        _scenario("quant_w8a8", "tiny Llama3, W8A8 smooth-quant"),
        _scenario("quant_awq_8b", f"Llama-3-8B width x {WIDE_LAYERS} layers, AWQ W4A16 group 128"),
        _scenario("quant_w8a8_8b", f"Llama-3-8B width x {WIDE_LAYERS} layers, W8A8 smooth-quant"),
    )
}
"""the quantised end-to-end scenarios (CPU: the tiny ones; GPU: all); ``scenario_cli`` runs them by name in a child"""
BUILDERS = {"quant_awq": build_awq, "quant_w8a8": build_w8a8, "quant_awq_8b": build_awq_8b,
            "quant_w8a8_8b": build_w8a8_8b}  # fmt: skip
"""scenario name -> builder of its checkpoint (``(path, *, dtype, seed) -> path``; the ``_8b`` ones need a GPU)"""
