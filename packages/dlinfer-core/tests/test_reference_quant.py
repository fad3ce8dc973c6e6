"""int8 quantisation, W8A8 linear and AWQ W4A16 of the reference backend against independent code.

The AWQ packer here is written from the spec's statement of the layout (nibble i of each
int32 holds column 8c + AWQ_ORDER[i]), not from the reference's unpacker.
"""

from __future__ import annotations

import pytest
import torch

import dlinfer
from dlinfer import ops
from dlinfer.spec import AWQ_ORDER

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module", autouse=True)
def _reference_backend():
    dlinfer.activate("reference")
    yield


def _quant_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row loop in float64: scale = max|x| / 127, q = round(x / scale)."""
    flat = x.double().reshape(-1, x.shape[-1])
    qs, scales = [], []
    for row in flat:
        scale = float(row.abs().max()) / 127.0
        qs.append(torch.tensor([max(-127, min(127, round(float(v) / scale))) for v in row]))
        scales.append(scale)
    return torch.stack(qs).reshape(x.shape), torch.tensor(scales, dtype=torch.float64).reshape(x.shape[:-1])


def _check_quant(x_q, scale, x_ref, scale_rtol=1e-6, exact_input=False):
    """x_ref: the float64 values that were quantised (``exact_input``), or their best available estimate.

    With the exact input an int8 value may differ from the float64 rounding only where ``x / scale`` sits on a
    rounding tie (the fp32 scale and division may land on either side of .5, e.g.
    ``5.5 / (11 / 127) = 63.5``); with an estimate, at most 5 % of the values may be one step off."""
    want_q, want_scale = _quant_rows(x_ref)
    assert x_q.dtype == torch.int8 and scale.dtype == torch.float32
    assert x_q.shape == x_ref.shape and scale.shape == x_ref.shape[:-1]
    torch.testing.assert_close(scale.double(), want_scale, rtol=scale_rtol, atol=0)
    diff = (x_q.long() - want_q.long()).abs()
    assert int(diff.max()) <= 1, "int8 values off by more than one step"
    if exact_input:
        steps = x_ref / want_scale[..., None]
        near_tie = ((steps - steps.floor()) - 0.5).abs() < 1e-4
        assert not bool(((diff > 0) & ~near_tie).any()), "int8 values off by one away from a rounding tie"
    else:
        assert float((diff > 0).double().mean()) < 0.05, "too many int8 values off by one"
    # the largest magnitude of every row maps to +-127
    row_max = x_q.abs().reshape(-1, x_q.shape[-1]).amax(-1)
    assert torch.equal(row_max, torch.full((scale.numel(),), 127, dtype=torch.int8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6, 32), (2, 3, 16), (1, 8)])
def test_dynamic_quant(shape, dtype):
    x = (torch.randn(*shape) * 4).to(dtype)
    x_q, scale = ops.dynamic_quant(x)
    _check_quant(x_q, scale, x.double(), exact_input=True)
    # dequantisation error is at most half a step per element
    err = (x_q.double() * scale.double()[..., None] - x.double()).abs()
    assert bool((err <= scale.double()[..., None] * 0.5 + 1e-6).all())


@pytest.mark.parametrize("out_dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
def test_linear_w8a8(out_dtype, bias):
    t, n_in, n_out = 5, 48, 12
    x_q = torch.randint(-127, 128, (2, t, n_in), dtype=torch.int8)
    w_q = torch.randint(-127, 128, (n_out, n_in), dtype=torch.int8)
    x_scale = torch.rand(2, t) * 0.01 + 1e-3
    w_scale = torch.rand(n_out) * 0.01 + 1e-3
    b = torch.randn(n_out).to(out_dtype) if bias else None
    got = ops.linear_w8a8(x_q, w_q, x_scale, w_scale, b, out_dtype=out_dtype)
    acc = torch.zeros(2, t, n_out, dtype=torch.int64)
    for o in range(n_out):  # exact integer dot products, one output column at a time
        acc[..., o] = (x_q.long() * w_q[o].long()).sum(-1)
    want = acc.double() * x_scale.double()[..., None] * w_scale.double()
    if bias:
        want = want + b.double()
    assert got.dtype == out_dtype and got.shape == (2, t, n_out)
    rtol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[out_dtype]
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=1e-5)


def _rms64(x, w, eps):
    x = x.double()
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w.double()


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_w8a8(dtype):
    x, w = (torch.randn(6, 64) * 2).to(dtype), torch.randn(64).to(dtype)
    x_q, scale = ops.rms_norm_w8a8(x, w, eps=1e-6)
    normed = _rms64(x, w, 1e-6).to(dtype).double()  # rms_norm's output is in the working dtype
    scale_rtol = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    _check_quant(x_q, scale, normed, scale_rtol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm_w8a8(dtype):
    x, r, w = (torch.randn(2, 4, 32)).to(dtype), torch.randn(2, 4, 32).to(dtype), torch.randn(32).to(dtype)
    x_q, scale, added = ops.add_rms_norm_w8a8(x, r, w, eps=1e-5)
    want_added = (x.double() + r.double()).to(dtype)
    assert added.dtype == dtype
    torch.testing.assert_close(added, want_added, rtol=0, atol=0)
    normed = _rms64(want_added, w, 1e-5).to(dtype).double()
    scale_rtol = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    _check_quant(x_q, scale, normed, scale_rtol)


# --------------------------------------------------------------------------- AWQ W4A16


def awq_pack(values: torch.Tensor) -> torch.Tensor:
    """[R, C] ints in [0, 16) -> int32 [R, C/8]: nibble i (bits 4i..4i+3) holds column 8c + AWQ_ORDER[i]."""
    rows, cols = values.shape
    packed = torch.zeros(rows, cols // 8, dtype=torch.int64)
    for c in range(cols // 8):
        for i, col_in_group in enumerate(AWQ_ORDER):
            packed[:, c] |= values[:, 8 * c + col_in_group].long() << (4 * i)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)  # two's complement into int32
    return packed.to(torch.int32)


def test_awq_pack_layout():
    """Guards the packer itself against the spec's wording, bit by bit."""
    values = torch.arange(16).reshape(2, 8) % 16
    packed = awq_pack(values)
    for r in range(2):
        word = int(packed[r, 0]) & 0xFFFFFFFF
        for i in range(8):
            assert (word >> (4 * i)) & 0xF == int(values[r, AWQ_ORDER[i]])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("n_in", "n_out", "group"), [(64, 16, 32), (128, 24, 64), (32, 8, 32)])
@pytest.mark.parametrize("bias", [False, True])
def test_weight_quant_matmul(n_in, n_out, group, bias, dtype):
    scales_dtype = dtype
    q = torch.randint(0, 16, (n_in, n_out))
    q[0, :8] = torch.tensor([15, 0, 8, 7, 1, 14, 9, 6])  # high nibbles set: the packed int32 goes negative
    z = torch.randint(0, 16, (n_in // group, n_out))
    s = (torch.rand(n_in // group, n_out) * 0.02 + 0.005).to(scales_dtype)
    qweight, qzeros = awq_pack(q), awq_pack(z)
    assert int(qweight.min()) < 0
    x = torch.randn(3, n_in).to(dtype)
    b = torch.randn(n_out).to(dtype) if bias else None
    pw, ps, pz = ops.weight_quant_prepare(qweight, s, qzeros, group_size=group)
    got = ops.weight_quant_matmul(x, pw, ps, pz, b, group_size=group)
    w = torch.empty(n_in, n_out, dtype=torch.float64)
    for i in range(n_in):
        w[i] = (q[i].double() - z[i // group].double()) * s[i // group].double()
    want = x.double() @ w
    if bias:
        want = want + b.double()
    assert got.dtype == dtype and got.shape == (3, n_out)
    rtol, atol = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}[dtype]
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol)


def test_weight_quant_matmul_leading_dims():
    n_in, n_out, group = 64, 8, 32
    q, z = torch.randint(0, 16, (n_in, n_out)), torch.randint(0, 16, (n_in // group, n_out))
    s = torch.rand(n_in // group, n_out).half() * 0.05
    x = torch.randn(2, 3, n_in).half()
    got = ops.weight_quant_matmul(x, awq_pack(q), s, awq_pack(z), group_size=group)
    w = (q.double() - z.double().repeat_interleave(group, 0)) * s.double().repeat_interleave(group, 0)
    torch.testing.assert_close(got.double(), x.double() @ w, rtol=2e-3, atol=2e-3)
