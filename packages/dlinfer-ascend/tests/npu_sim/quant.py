"""Simulated quantisation kernels: npu_dynamic_quant, npu_quant_matmul, npu_weight_quant_batchmatmul."""

from __future__ import annotations

import torch

from ._contract import HALF_DTYPES, NotModelled, Unconfirmed, check, device_tensor


def npu_dynamic_quant(input: torch.Tensor, *, smooth_scales: torch.Tensor | None = None,
                      group_index: torch.Tensor | None = None, dst_type: torch.dtype | None = None,
                      quant_mode: str = "pertoken", dst_type_max: float = 0.0
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """docs/vendor-semantics.md §2.23 (OP-DOC:npu_dynamic_quant; OP-TEST golden).

    scale = max|x|/127 per token (fp32, shape x.shape[:-1]); y = round(x/scale) int8
    (torch.round, half-to-even). All-zero rows are UNCONFIRMED (§5.3): refused.
    """
    fn = "npu_dynamic_quant"
    device_tensor(fn, "input", input, dtypes=HALF_DTYPES)
    check(dst_type in (None, torch.int8), fn, f"dst_type {dst_type} not modelled (int8 only)")
    check(quant_mode == "pertoken", fn, f"quant_mode {quant_mode!r} not modelled")
    if smooth_scales is not None or group_index is not None:
        raise NotModelled(f"{fn}: smooth_scales / group_index are not modelled")
    x = input.float()
    amax = x.abs().amax(dim=-1)
    if bool((amax == 0).any()):
        raise Unconfirmed(f"{fn}: all-zero rows (docs/vendor-semantics.md §5.3)")
    scale = amax / 127.0
    y = torch.round(x / scale.unsqueeze(-1)).clamp(-128, 127).to(torch.int8)
    return y, scale


def npu_quant_matmul(x1: torch.Tensor, x2: torch.Tensor, scale: torch.Tensor, *,
                     offset: torch.Tensor | None = None, pertoken_scale: torch.Tensor | None = None,
                     bias: torch.Tensor | None = None, output_dtype: torch.dtype | None = None,
                     **not_modelled: object) -> torch.Tensor:
    """docs/vendor-semantics.md §2.24 (OP-DOC:npu_quant_matmul; OP-TEST golden), int8 x int8 on A2/A3.

    acc = x1 @ x2 (int32); int32 bias before dequant; out = acc*scale[n]*pertoken[m]; float bias
    after. Allowed combinations (A2/A3 table): no pertoken -> fp16 (scale fp32/int64, bias int32),
    int8, int32; fp32 pertoken -> bf16 (scale fp32/bf16, bias int32/bf16/fp32) or fp16 (scale fp32;
    bias not listed -> refused). output_dtype None means int8.
    """
    fn = "npu_quant_matmul"
    for name, val in not_modelled.items():
        if val is not None:
            raise NotModelled(f"{fn}: {name} is not modelled")
    device_tensor(fn, "x1", x1, dtypes=(torch.int8,), dim=2)
    device_tensor(fn, "x2", x2, dtypes=(torch.int8,), dim=2)
    m, k = x1.shape
    check(x2.shape[0] == k, fn, f"x2 must be (K, N) with K={k}, got {tuple(x2.shape)}")
    n = x2.shape[1]
    device_tensor(fn, "scale", scale, dtypes=(torch.float32, torch.bfloat16), dim=1)
    check(scale.shape[0] in (1, n), fn, f"scale must be (1,) or (N={n},), got {tuple(scale.shape)}")
    out_dtype = torch.int8 if output_dtype is None else output_dtype
    check(offset is None, fn, "offset (int8 output) is not modelled")
    if pertoken_scale is not None:
        device_tensor(fn, "pertoken_scale", pertoken_scale, dtypes=(torch.float32,), dim=1)
        check(pertoken_scale.shape[0] == m, fn, f"pertoken_scale must be (M={m},)")
        check(out_dtype in (torch.bfloat16, torch.float16), fn,
              f"with pertoken_scale the output must be bf16 or fp16, got {out_dtype}")
        if out_dtype == torch.float16:
            check(scale.dtype == torch.float32, fn, "fp16 output with pertoken_scale needs fp32 scale")
            check(bias is None, fn, "bias with fp16 output + pertoken_scale is not in the A2/A3 table")
        elif bias is not None:
            check(bias.dtype in (torch.int32, torch.bfloat16, torch.float32), fn,
                  f"bf16 output: bias must be int32/bf16/fp32, got {bias.dtype}")
    else:
        check(out_dtype in (torch.float16, torch.int8, torch.int32), fn,
              f"without pertoken_scale the output must be fp16/int8/int32, got {out_dtype}")
        check(out_dtype != torch.float16 or bias is None or bias.dtype == torch.int32, fn,
              "fp16 output without pertoken_scale needs an int32 bias")
        check(out_dtype != torch.int32 or bias is None, fn, "bias with int32 output not modelled")
        if out_dtype == torch.int8:
            raise NotModelled(f"{fn}: int8 output is not modelled")
    if bias is not None:
        device_tensor(fn, "bias", bias, dim=1)
        check(bias.shape[0] == n, fn, f"bias must be (N={n},)")
    acc = (x1.double() @ x2.double()).round()
    if bias is not None and bias.dtype == torch.int32:
        acc = acc + bias.double()
    if out_dtype == torch.int32:
        check(bool((acc.abs() < 2**31).all()), fn, "int32 accumulator overflow")
        return acc.to(torch.int32)
    y = acc.float() * scale.float()
    if pertoken_scale is not None:
        y = y * pertoken_scale.unsqueeze(1)
    if bias is not None and bias.dtype != torch.int32:
        y = y + bias.float()
    return y.to(out_dtype)


def _unpack_int4_lsb_signed(w: torch.Tensor) -> torch.Tensor:
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    nib = (w.unsqueeze(-1) >> shifts) & 0xF
    nib = torch.where(nib >= 8, nib - 16, nib)
    return nib.flatten(-2)


def npu_weight_quant_batchmatmul(x: torch.Tensor, weight: torch.Tensor,
                                 antiquant_scale: torch.Tensor,
                                 antiquant_offset: torch.Tensor | None = None,
                                 quant_scale: torch.Tensor | None = None,
                                 quant_offset: torch.Tensor | None = None,
                                 bias: torch.Tensor | None = None, antiquant_group_size: int = 0,
                                 inner_precise: int = 0, weight_dtype: int | None = None
                                 ) -> torch.Tensor:
    """docs/vendor-semantics.md §2.22 (OP-DOC:npu_weight_quant_batchmatmul).

    y = x @ ((W + offset) * scale) + bias. W int8 (K,N) or int4 packed int32 (K,N/8), LSB-first
    signed nibbles (UNCONFIRMED §5.4). scale/offset: (1,), (N,)/(1,N) or per group (ceil(K/g),N)
    with g a multiple of 32, 32 <= g <= K-1; dtype = x dtype. bias fp16 for fp16 x, fp32 for bf16.
    """
    fn = "npu_weight_quant_batchmatmul"
    check(quant_scale is None and quant_offset is None, fn, "int8 re-quant output not modelled")
    device_tensor(fn, "x", x, dtypes=HALF_DTYPES, dim=2)
    device_tensor(fn, "weight", weight, dtypes=(torch.int8, torch.int32), dim=2)
    k = x.shape[1]
    check(weight.shape[0] == k, fn, f"weight must be (K={k}, ...), got {tuple(weight.shape)}")
    w = _unpack_int4_lsb_signed(weight) if weight.dtype == torch.int32 else weight.int()
    n = w.shape[1]
    check(k <= 65535 and n <= 65535, fn, "K, N must be <= 65535")
    device_tensor(fn, "antiquant_scale", antiquant_scale, dtypes=(x.dtype,))
    g = antiquant_group_size
    if g:
        check(g % 32 == 0 and 32 <= g <= k - 1, fn, f"antiquant_group_size {g}: multiple of 32 in [32, K-1]")
        want = ((k + g - 1) // g, n)
    else:
        want = None
    def _param(name: str, t: torch.Tensor) -> torch.Tensor:
        if want is not None:
            check(tuple(t.shape) == want, fn, f"per-group {name} must be {want}, got {tuple(t.shape)}")
            return t.float().repeat_interleave(g, dim=0)[:k]
        check(tuple(t.shape) in ((1,), (n,), (1, n)), fn, f"{name} shape {tuple(t.shape)} invalid")
        return t.float().reshape(1, -1)
    s = _param("antiquant_scale", antiquant_scale)
    wf = w.float()
    if antiquant_offset is not None:
        device_tensor(fn, "antiquant_offset", antiquant_offset, dtypes=(x.dtype,))
        wf = wf + _param("antiquant_offset", antiquant_offset)
    y = x.float() @ (wf * s)
    if bias is not None:
        want_b = torch.float16 if x.dtype == torch.float16 else torch.float32
        device_tensor(fn, "bias", bias, dtypes=(want_b,))
        y = y + bias.float().reshape(-1)
    return y.to(x.dtype)
