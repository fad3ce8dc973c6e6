"""MoE routing and experts of the reference backend against a per-token float64 loop."""

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


def _distinct_logits(t: int, e: int, dtype: torch.dtype) -> torch.Tensor:
    """Random logits with gaps >= 0.25 inside each row, so top-k has no ties even in bf16."""
    rows = [torch.randperm(e).double() * 0.5 + torch.rand(e).double() * 0.25 - e * 0.25 for _ in range(t)]
    return torch.stack(rows).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("e", "k"), [(8, 2), (16, 4), (4, 1), (6, 6)])
@pytest.mark.parametrize("renormalize", [False, True])
def test_moe_gating_topk_softmax(e, k, renormalize, dtype):
    t = 7
    logits = _distinct_logits(t, e, dtype)
    weights, ids = ops.moe_gating_topk_softmax(logits, topk=k, renormalize=renormalize)
    assert weights.dtype == torch.float32 and ids.dtype == torch.int32
    assert weights.shape == (t, k) and ids.shape == (t, k)
    for row in range(t):
        values = [float(v) for v in logits[row].double()]
        m = max(values)
        exps = [math.exp(v - m) for v in values]
        probs = [x / sum(exps) for x in exps]
        best = sorted(range(e), key=lambda j: probs[j], reverse=True)[:k]
        want = {j: probs[j] for j in best}
        if renormalize:
            total = sum(want.values())
            want = {j: p / total for j, p in want.items()}
        got = {int(i): float(w) for i, w in zip(ids[row], weights[row])}
        assert set(got) == set(want), f"row {row}: ids {sorted(got)} != {sorted(want)}"
        for j in want:
            assert math.isclose(got[j], want[j], rel_tol=1e-5, abs_tol=1e-6), (row, j, got[j], want[j])


def _per_token_moe(x, gate_up, down, weights, ids):
    x, gate_up, down = x.double(), gate_up.double(), down.double()
    inter = down.shape[2]
    out = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            gate = gate_up[e, :inter] @ x[t]
            up = gate_up[e, inter:] @ x[t]
            act = gate / (1.0 + torch.exp(-gate)) * up
            out[t] += float(weights[t, j]) * (down[e] @ act)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("t", "e", "k", "h", "inter"), [(5, 4, 2, 16, 8), (9, 8, 3, 24, 12), (1, 3, 1, 8, 16)])
@pytest.mark.parametrize("ids_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("weights_dtype", ["fp32", "x"])
def test_fused_moe(t, e, k, h, inter, ids_dtype, weights_dtype, dtype):
    x = torch.randn(t, h).to(dtype)
    gate_up = (torch.randn(e, 2 * inter, h) / math.sqrt(h)).to(dtype)
    down = (torch.randn(e, h, inter) / math.sqrt(inter)).to(dtype)
    ids = torch.stack([torch.randperm(e)[:k] for _ in range(t)]).to(ids_dtype)
    weights = torch.rand(t, k) + 0.1
    weights = weights.to(dtype) if weights_dtype == "x" else weights
    got = ops.fused_moe(x, gate_up, down, weights, ids)
    want = _per_token_moe(x, gate_up, down, weights, ids)
    assert got.dtype == dtype and got.shape == (t, h)
    rtol, atol = TOL[dtype]
    if dtype != torch.float32:  # the activation is rounded to the working dtype between the two GEMMs
        rtol, atol = 2 * rtol, 2 * atol
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol)


def test_gating_then_fused_moe():
    """Routing feeds the experts: the pipeline matches the per-token loop over the softmax top-k."""
    t, e, k, h, inter = 6, 8, 2, 16, 8
    logits = _distinct_logits(t, e, torch.float32)
    x = torch.randn(t, h)
    gate_up, down = torch.randn(e, 2 * inter, h) * 0.3, torch.randn(e, h, inter) * 0.3
    weights, ids = ops.moe_gating_topk_softmax(logits, topk=k, renormalize=True)
    got = ops.fused_moe(x, gate_up, down, weights, ids)
    probs = torch.softmax(logits.double(), -1)
    top = probs.argsort(-1, descending=True)[:, :k]
    w = probs.gather(1, top)
    w = w / w.sum(-1, keepdim=True)
    torch.testing.assert_close(got.double(), _per_token_moe(x, gate_up, down, w, top), rtol=1e-5, atol=1e-5)
