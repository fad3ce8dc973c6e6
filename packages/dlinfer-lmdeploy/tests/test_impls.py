"""Impls on dlinfer.ops (reference backend) against LMDeploy's own portable implementations or plain math."""

from __future__ import annotations

import pytest
import torch

import dlinfer_lmdeploy  # noqa: F401


@pytest.fixture(autouse=True)
def _cpu_device():  # type: ignore[no-untyped-def]
    from dlinfer_lmdeploy import devices

    devices.activate("cpu")


def test_w4a16_matches_lmdeploy_default() -> None:
    """AWQ int4: the weight_quant_prepare/matmul path equals LMDeploy's default dequantise-then-matmul."""
    from lmdeploy.pytorch.backends.default.awq_modules import DefaultLinearW4A16Impl

    from dlinfer_lmdeploy.impls.quant import DlinferLinearW4A16Impl

    torch.manual_seed(0)
    k, n, g = 64, 48, 32
    qweight = torch.randint(-(2**31), 2**31 - 1, (k, n // 8), dtype=torch.int32)
    qzeros = torch.randint(-(2**31), 2**31 - 1, (k // g, n // 8), dtype=torch.int32)
    scales = (torch.rand(k // g, n) * 0.01).to(torch.float16)
    bias = torch.randn(n, dtype=torch.float16)
    x = torch.randn(5, k, dtype=torch.float16)
    ref = DefaultLinearW4A16Impl(k, n, 4, g).forward(x, qweight, scales, qzeros, bias)
    impl = DlinferLinearW4A16Impl(k, n, 4, g)
    qw, sc, qz, b = impl.update_weights(qweight, scales, qzeros, bias)
    got = impl.forward(x, qw, sc, qz, b)
    torch.testing.assert_close(got.float(), ref.float(), rtol=2e-2, atol=2e-2)


def test_w8a8_linear_and_norm() -> None:
    from lmdeploy.pytorch.models.q_modules import QTensor

    from dlinfer_lmdeploy.impls.quant import DlinferLinearW8A8Impl, DlinferRMSNormW8A8Impl

    torch.manual_seed(0)
    x = torch.randn(6, 32)
    w = torch.randn(32)
    norm = DlinferRMSNormW8A8Impl(32, 1e-6)
    q = norm.forward(x, w)
    assert isinstance(q, QTensor) and q.tensor.dtype == torch.int8
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    torch.testing.assert_close(q.tensor.float() * q.scale.reshape(-1, 1), normed, atol=normed.abs().max() / 100, rtol=0)

    weight = torch.randint(-127, 128, (16, 32), dtype=torch.int8)
    wscale = torch.rand(16, 1) * 0.01
    lin = DlinferLinearW8A8Impl(torch.float32, torch.int8)
    weight, ws, bias = lin.update_weights(weight, wscale, None)
    got = lin.forward(q, weight, ws)
    ref = (q.tensor.float() * q.scale.reshape(-1, 1)) @ (weight.float() * wscale.reshape(-1, 1)).t()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    got_dyn = lin.forward(normed, weight, ws)  # unquantised input: dynamic per-token quantisation
    torch.testing.assert_close(got_dyn, normed @ (weight.float() * wscale.reshape(-1, 1)).t(), rtol=0.05, atol=0.05)


def test_rotary_complex_mode_matches_lmdeploy_default() -> None:
    from lmdeploy.pytorch.backends.default.apply_rotary_emb import DefaultApplyRotaryEmbImpl

    from dlinfer_lmdeploy.impls.dense import DlinferApplyRotaryEmbImpl

    torch.manual_seed(0)
    q, k = torch.randn(7, 4, 16), torch.randn(7, 2, 16)
    for complex_mode, width in ((False, 16), (True, 8), (True, 16)):
        cos, sin = torch.randn(7, width), torch.randn(7, width)
        want = DefaultApplyRotaryEmbImpl().forward(q.clone(), k.clone(), cos, sin, False, complex_mode)
        qi, ki = q.clone(), k.clone()
        got = DlinferApplyRotaryEmbImpl().forward(qi, ki, cos, sin, True, complex_mode)
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1], want[1])
        assert got[0] is qi  # in place, as LMDeploy asks


@pytest.mark.parametrize("inplace", [True, False])
def test_rotary_complex_mode_partial_table(inplace: bool) -> None:
    """Complex mode with a partial rotary: LMDeploy's tables hold one entry per rotated pair (its CUDA kernel's
    ``half_size = cos.size(-1)``): a width-4 table on head 16 rotates pairs (0,1)..(6,7) and leaves channels 8-15.
    Independent loop below (the old impl passed the 4-wide table as a 4-channel interleaved rotary)."""
    from dlinfer_lmdeploy.impls.dense import DlinferApplyRotaryEmbImpl

    torch.manual_seed(2)
    q, k = torch.randn(5, 4, 16), torch.randn(5, 2, 16)
    cos, sin = torch.randn(5, 4), torch.randn(5, 4)

    def rotated(x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        for j in range(4):
            c, s_ = cos[:, j, None], sin[:, j, None]
            out[..., 2 * j] = x[..., 2 * j] * c - x[..., 2 * j + 1] * s_
            out[..., 2 * j + 1] = x[..., 2 * j + 1] * c + x[..., 2 * j] * s_
        return out

    want_q, want_k = rotated(q), rotated(k)
    got_q, got_k = DlinferApplyRotaryEmbImpl().forward(q.clone(), k.clone(), cos, sin, inplace, True)
    torch.testing.assert_close(got_q, want_q)
    torch.testing.assert_close(got_k, want_k)


def test_rotary_inplace_on_qkv_slices(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """LMDeploy's layout: q/k are column slices of one fused qkv output; rotated where they lie, v untouched."""
    import dlinfer.ops
    from lmdeploy.pytorch.backends.default.apply_rotary_emb import DefaultApplyRotaryEmbImpl

    from dlinfer_lmdeploy.impls.dense import DlinferApplyRotaryEmbImpl

    calls: list[str] = []
    for name in ("apply_rotary_pos_emb", "apply_rotary_pos_emb_inplace"):
        fn = getattr(dlinfer.ops, name)
        monkeypatch.setattr(dlinfer.ops, name, lambda *a, __f=fn, __n=name, **kw: (calls.append(__n), __f(*a, **kw))[1])
    torch.manual_seed(1)
    T, Hq, Hkv, D = 5, 4, 2, 16
    qkv = torch.randn(T, (Hq + 2 * Hkv) * D)
    before = qkv.clone()
    q, k, v = qkv.view(T, Hq + 2 * Hkv, D).split([Hq, Hkv, Hkv], dim=1)
    cos, sin = torch.randn(T, D), torch.randn(T, D)
    want_q, want_k = DefaultApplyRotaryEmbImpl().forward(q.clone(), k.clone(), cos, sin, False, False)
    got_q, got_k = DlinferApplyRotaryEmbImpl().forward(q, k, cos, sin, True, False)
    assert calls == ["apply_rotary_pos_emb_inplace"]
    assert got_q is q and got_k is k
    torch.testing.assert_close(q, want_q)
    torch.testing.assert_close(k, want_k)
    torch.testing.assert_close(v, before.view(T, Hq + 2 * Hkv, D)[:, Hq + Hkv :])


def test_vision_flash_attention_non_causal() -> None:
    from dlinfer_lmdeploy.impls.flash_attention import DlinferFlashAttentionImpl

    torch.manual_seed(0)
    lens = torch.tensor([5, 9])
    q, k, v = (torch.randn(14, 4, 8) for _ in range(3))
    start = torch.tensor([0, 5])
    out = DlinferFlashAttentionImpl(4, 8, causal=False).forward(q, k, v, start, lens, start, lens, 9)
    for s, n in zip(start.tolist(), lens.tolist(), strict=True):
        sl = slice(s, s + n)
        att = torch.softmax(torch.einsum("qhd,khd->hqk", q[sl], k[sl]) / 8**0.5, -1)
        torch.testing.assert_close(out[sl], torch.einsum("hqk,khd->qhd", att, v[sl]), rtol=1e-5, atol=1e-5)


def test_vision_flash_attention_checks_locations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Locations other than packed back-to-back sequences are refused (the old impl ignored q_start_loc and
    kv_start_loc); LMDeploy's own call (kv locations = the query's tensors, max_q given) reads nothing on the host."""
    import dlinfer.dispatch

    from dlinfer_lmdeploy.impls.flash_attention import DlinferFlashAttentionImpl

    impl = DlinferFlashAttentionImpl(4, 8, causal=False)
    q, k, v = (torch.randn(14, 4, 8) for _ in range(3))
    lens, start = torch.tensor([5, 9]), torch.tensor([0, 5])
    monkeypatch.setattr(dlinfer.dispatch.STATE, "full", True)
    impl.forward(q, k, v, start, lens, start, lens, 14)
    with pytest.raises(NotImplementedError, match="q_start_loc"):
        impl.forward(q, k, v, torch.tensor([9, 0]), lens, torch.tensor([9, 0]), lens, 14)  # reordered
    with pytest.raises(NotImplementedError, match="kv_start_loc"):
        impl.forward(q, k, v, start, lens, torch.tensor([0, 4]), lens, 14)
    monkeypatch.setattr(dlinfer.dispatch.STATE, "full", False)
    seen: list[tuple[list[int], int]] = []
    monkeypatch.setattr(dlinfer.ops, "prefill_attention", lambda *a, **kw: seen.append((a[3], kw["max_seqlen_q"])))

    def no_host_reads(*_a: object, **_k: object) -> None:
        raise AssertionError("a host read of a device value in the vision attention")

    with monkeypatch.context() as m:
        for name in ("tolist", "item", "__int__", "__bool__"):
            m.setattr(torch.Tensor, name, no_host_reads)
        m.setattr(torch, "equal", no_host_reads)
        impl.forward(q, k, v, start, lens, start, lens, None)
    assert seen[0][0].tolist() == [0, 5, 14] and seen[0][1] == 14  # max_q: the token count, an upper bound


def test_fused_moe_output_keeps_the_activation_dtype() -> None:
    """LMDeploy builds unquantised FusedMoE with output_dtype=bfloat16 whatever the model dtype."""
    from lmdeploy.pytorch.backends.moe import FusedMoEBuildSpec
    from lmdeploy.pytorch.backends.selector import get_backend

    spec = FusedMoEBuildSpec(top_k=2, num_experts=4, renormalize=False, hidden_dim=16, ep_size=1, ep_group=None,
                             layer_idx=0, output_dtype=torch.bfloat16, num_max_dispatch_tokens_per_rank=128)
    impl = get_backend("cpu").build_op(spec)
    x, w = torch.randn(3, 16), torch.full((3, 2), 0.5)
    ids = torch.tensor([[0, 1], [2, 3], [1, 2]])
    out = impl.forward(x, w, ids, torch.randn(4, 16, 16), torch.randn(4, 16, 8))
    assert out.dtype == torch.float32


def test_fused_moe_renormalize_and_refusals() -> None:
    from dlinfer_lmdeploy.impls.moe import DlinferFusedMoEImpl, DlinferSoftmaxTopKImpl

    torch.manual_seed(0)
    e, h, inter, t = 4, 16, 8, 5
    x = torch.randn(t, h)
    gate_up, down = torch.randn(e, 2 * inter, h), torch.randn(e, h, inter)
    w, ids = DlinferSoftmaxTopKImpl(2).forward(torch.randn(t, e))
    got = DlinferFusedMoEImpl(2, e, True, 1).forward(x, w, ids, gate_up, down)
    wn = w / w.sum(-1, keepdim=True)
    ref = torch.zeros(t, h)
    for i in range(t):
        for j in range(2):
            gu = gate_up[ids[i, j]] @ x[i]
            ref[i] += wn[i, j] * (down[ids[i, j]] @ (torch.nn.functional.silu(gu[:inter]) * gu[inter:]))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(NotImplementedError, match="bias"):
        DlinferFusedMoEImpl(2, e, False, 1).forward(x, w, ids, gate_up, down, gate_up_bias=x)
    with pytest.raises(NotImplementedError, match="ep_size"):
        DlinferFusedMoEImpl(2, e, False, 2)
