"""Norms, rotary embedding, SiLU-and-mul and linear of the reference backend against textbook formulas.

Every expectation is computed here in float64 from the formula (rotary: from positions and
inverse frequencies, via complex multiplication for GPT-J and explicit cos/sin for NeoX).
"""

from __future__ import annotations

import math

import pytest
import torch

import dlinfer
from dlinfer import ops

TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module", autouse=True)
def _reference_backend():
    dlinfer.activate("reference")
    yield


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.dtype == dtype
    assert got.shape == want.shape
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol)


def _rand(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape) * scale).to(dtype)


def _textbook_rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    x, w = x.double(), w.double()
    h = x.shape[-1]
    mean_square = (x * x).sum(-1, keepdim=True) / h
    return x / torch.sqrt(mean_square + eps) * w


# --------------------------------------------------------------------------- rms_norm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 32), (2, 3, 48), (1, 16)])
def test_rms_norm(shape, dtype):
    x, w = _rand(*shape, dtype=dtype, scale=3.0), _rand(shape[-1], dtype=dtype)
    eps = 1e-5
    x_before = x.clone()
    got = ops.rms_norm(x, w, eps=eps)
    _close(got, _textbook_rms(x, w, eps), dtype)
    assert torch.equal(x, x_before)


def test_rms_norm_eps_matters():
    x, w = _rand(4, 16, scale=1e-3), _rand(16)
    got = ops.rms_norm(x, w, eps=1e-2)
    _close(got, _textbook_rms(x, w, 1e-2), torch.float32)
    assert not torch.allclose(got.double(), _textbook_rms(x, w, 1e-6), atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm(dtype):
    x, r, w = _rand(5, 40, dtype=dtype), _rand(5, 40, dtype=dtype, scale=2.0), _rand(40, dtype=dtype)
    eps = 1e-6
    normed, added = ops.add_rms_norm(x, r, w, eps=eps)
    want_added = x.double() + r.double()
    _close(added, want_added, dtype)
    # the norm is of the sum rounded to the working dtype
    _close(normed, _textbook_rms(want_added.to(dtype), w, eps), dtype)


# --------------------------------------------------------------------------- silu_and_mul


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6, 2 * 24), (2, 3, 2 * 8)])
def test_silu_and_mul(shape, dtype):
    x = _rand(*shape, dtype=dtype, scale=2.0)
    half = shape[-1] // 2
    a, b = x[..., :half].double(), x[..., half:].double()
    want = a / (1.0 + torch.exp(-a)) * b
    _close(ops.silu_and_mul(x), want, dtype)


# --------------------------------------------------------------------------- rotary


def _angles(t: int, rot: int, base: float = 10000.0) -> torch.Tensor:
    """theta[t, i] = pos[t] * base^(-2i/R) for i < R/2, from random (non-contiguous) positions."""
    positions = torch.randint(0, 4096, (t,)).double()
    inv_freq = torch.tensor([base ** (-2.0 * i / rot) for i in range(rot // 2)], dtype=torch.float64)
    return positions[:, None] * inv_freq[None, :]


def _neox_expected(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Explicit formulas: for i < R/2, (x_i, x_{i+R/2}) is rotated by theta_i."""
    x = x.double()
    half = theta.shape[1]
    out = x.clone()
    c, s = torch.cos(theta)[:, None, :], torch.sin(theta)[:, None, :]
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    out[..., :half] = x1 * c - x2 * s
    out[..., half : 2 * half] = x2 * c + x1 * s
    return out


def _gptj_expected(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Complex multiplication: the pair (x_{2i}, x_{2i+1}) is x_{2i} + i*x_{2i+1}, times exp(i*theta_i)."""
    x = x.double()
    half = theta.shape[1]
    out = x.clone()
    pairs = torch.complex(x[..., 0 : 2 * half : 2], x[..., 1 : 2 * half : 2])
    rotated = pairs * torch.polar(torch.ones_like(theta), theta)[:, None, :]
    out[..., 0 : 2 * half : 2] = rotated.real
    out[..., 1 : 2 * half : 2] = rotated.imag
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize(("hq", "hkv", "d", "rot"), [(4, 2, 16, 16), (4, 1, 32, 16), (2, 2, 24, 8)],
                         ids=["full", "partial-half", "partial-third"])
def test_apply_rotary_pos_emb(hq, hkv, d, rot, interleaved, dtype):
    t = 6
    q, k = _rand(t, hq, d, dtype=dtype), _rand(t, hkv, d, dtype=dtype)
    theta = _angles(t, rot)
    if interleaved:
        cos, sin = torch.cos(theta).repeat_interleave(2, -1), torch.sin(theta).repeat_interleave(2, -1)
    else:
        cos, sin = torch.cos(theta).repeat(1, 2), torch.sin(theta).repeat(1, 2)
    cos, sin = cos.to(dtype), sin.to(dtype)
    q_before, k_before = q.clone(), k.clone()
    q_out, k_out = ops.apply_rotary_pos_emb(q, k, cos, sin, interleaved=interleaved)
    # expected from the (rounded) cos/sin actually passed in: recover theta from them
    theta_in = torch.atan2(sin.double(), cos.double())[:, 0::2] if interleaved else \
        torch.atan2(sin.double(), cos.double())[:, : rot // 2]
    expected = _gptj_expected if interleaved else _neox_expected
    _close(q_out, expected(q, theta_in), dtype)
    _close(k_out, expected(k, theta_in), dtype)
    if rot < d:  # dims >= R pass through untouched
        assert torch.equal(q_out[..., rot:], q[..., rot:])
        assert torch.equal(k_out[..., rot:], k[..., rot:])
    assert torch.equal(q, q_before) and torch.equal(k, k_before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize(("t", "hq", "hkv", "d", "rot"), [(6, 4, 2, 16, 16), (1, 4, 1, 32, 16), (3, 2, 2, 24, 8)],
                         ids=["full", "decode-partial", "partial-third"])
def test_apply_rotary_pos_emb_inplace_on_fused_qkv_views(t, hq, hkv, d, rot, interleaved, dtype):
    """q and k are column slices of one [T, (Hq + 2*Hkv)*D] buffer: rotated in place, v and dims >= R untouched."""
    qkv = _rand(t, (hq + 2 * hkv) * d, dtype=dtype)
    before = qkv.clone()
    q, k = qkv[:, : hq * d].view(t, hq, d), qkv[:, hq * d : (hq + hkv) * d].view(t, hkv, d)
    assert not q.is_contiguous() or t == 1
    theta = _angles(t, rot)
    rep = (lambda x: x.repeat_interleave(2, -1)) if interleaved else (lambda x: x.repeat(1, 2))
    cos, sin = rep(torch.cos(theta)).to(dtype), rep(torch.sin(theta)).to(dtype)
    theta_in = torch.atan2(sin.double(), cos.double())[:, 0::2] if interleaved else \
        torch.atan2(sin.double(), cos.double())[:, : rot // 2]
    expected = _gptj_expected if interleaved else _neox_expected
    want_q, want_k = expected(q, theta_in), expected(k, theta_in)
    q_ptr, k_ptr = q.data_ptr(), k.data_ptr()
    assert ops.apply_rotary_pos_emb_inplace(q, k, cos, sin, interleaved=interleaved) is None
    assert (q.data_ptr(), k.data_ptr()) == (q_ptr, k_ptr)
    _close(qkv[:, : hq * d].view(t, hq, d), want_q, dtype)
    _close(qkv[:, hq * d : (hq + hkv) * d].view(t, hkv, d), want_k, dtype)
    assert torch.equal(qkv[:, (hq + hkv) * d :], before[:, (hq + hkv) * d :])  # v
    qb, kb = before[:, : hq * d].view(t, hq, d), before[:, hq * d : (hq + hkv) * d].view(t, hkv, d)
    assert torch.equal(q[..., rot:], qb[..., rot:]) and torch.equal(k[..., rot:], kb[..., rot:])
    # bit-identical to the out-of-place op on the same input
    q_out, k_out = ops.apply_rotary_pos_emb(qb, kb, cos, sin, interleaved=interleaved)
    assert torch.equal(q, q_out) and torch.equal(k, k_out)


def test_rotary_layouts_differ():
    """Guards the tests above: NeoX and GPT-J give different results on the same input."""
    q, k = _rand(3, 2, 8), _rand(3, 2, 8)
    theta = _angles(3, 8)
    neox = ops.apply_rotary_pos_emb(q, k, torch.cos(theta).repeat(1, 2).float(), torch.sin(theta).repeat(1, 2).float())
    cos_i, sin_i = torch.cos(theta).repeat_interleave(2, -1).float(), torch.sin(theta).repeat_interleave(2, -1).float()
    gptj = ops.apply_rotary_pos_emb(q, k, cos_i, sin_i, interleaved=True)
    assert not torch.allclose(neox[0], gptj[0], atol=1e-3)


def test_rotary_preserves_pair_norms():
    """A rotation keeps |(x_i, x_{i+R/2})| (NeoX) for every pair."""
    t, d = 5, 16
    q, k = _rand(t, 3, d), _rand(t, 1, d)
    theta = _angles(t, d)
    q_out, _ = ops.apply_rotary_pos_emb(q, k, torch.cos(theta).repeat(1, 2).float(),
                                        torch.sin(theta).repeat(1, 2).float())
    h = d // 2
    norm_in = q[..., :h].double() ** 2 + q[..., h:].double() ** 2
    norm_out = q_out[..., :h].double() ** 2 + q_out[..., h:].double() ** 2
    torch.testing.assert_close(norm_out, norm_in, rtol=1e-5, atol=1e-5)
    assert math.isfinite(float(norm_out.sum()))


# --------------------------------------------------------------------------- linear


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
def test_linear(bias, dtype):
    x, w = _rand(2, 3, 24, dtype=dtype), _rand(10, 24, dtype=dtype, scale=0.2)
    b = _rand(10, dtype=dtype) if bias else None
    want = torch.einsum("bti,oi->bto", x.double(), w.double())
    if bias:
        want = want + b.double()
    _close(ops.linear(x, w, b), want, dtype)
