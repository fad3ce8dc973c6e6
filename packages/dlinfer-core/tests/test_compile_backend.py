"""The ``dlinfer`` Dynamo backend: fusion passes and equality with eager."""

from __future__ import annotations

import torch
import torch._dynamo

import dlinfer.ops as ops
from dlinfer import compile as dlc


def _layer(x: torch.Tensor, r: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    s = x + r
    n = ops.rms_norm(s, w, eps=1e-6)
    q, scale = ops.dynamic_quant(ops.rms_norm(n, w, eps=1e-5))
    return n * 2, s, q, scale


def _graph_targets(fn, *args) -> tuple[list, tuple]:  # noqa: ANN001
    seen: list = []

    def spy(gm, example_inputs):  # noqa: ANN001
        out = dlc.dlinfer_backend(gm, example_inputs)
        seen.extend(n.target for n in gm.graph.nodes if n.op == "call_function")
        return out

    torch._dynamo.reset()
    result = torch.compile(fn, backend=spy, fullgraph=True)(*args)
    return seen, result


def test_add_rms_norm_and_norm_quant_are_fused_and_match_eager() -> None:
    x, r = torch.randn(5, 64), torch.randn(5, 64)
    w = torch.randn(64) + 1
    targets, got = _graph_targets(_layer, x, r, w)
    assert targets.count(torch.ops.dlinfer.add_rms_norm.default) == 1
    assert targets.count(torch.ops.dlinfer.rms_norm_w8a8.default) == 1
    assert torch.ops.dlinfer.rms_norm.default not in targets
    assert torch.ops.dlinfer.dynamic_quant.default not in targets
    want = _layer(x, r, w)
    for g, e in zip(got, want):
        if g.dtype == torch.int8:
            assert (g.int() - e.int()).abs().max() <= 1
        else:
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_broadcasting_add_is_not_fused() -> None:
    def fn(x: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x + b, w, eps=1e-6)

    x, b, w = torch.randn(3, 32), torch.randn(32), torch.randn(32)
    targets, got = _graph_targets(fn, x, b, w)
    assert torch.ops.dlinfer.add_rms_norm.default not in targets
    torch.testing.assert_close(got, fn(x, b, w))


def test_registered_as_dynamo_backend() -> None:
    assert "dlinfer" in torch._dynamo.list_backends(exclude_tags=())
    torch._dynamo.reset()
    x, r, w = torch.randn(2, 16), torch.randn(2, 16), torch.randn(16)
    out = torch.compile(_layer, backend="dlinfer")(x, r, w)
    torch.testing.assert_close(out[0], _layer(x, r, w)[0])


def test_user_of_the_sum_between_add_and_norm_keeps_a_valid_graph() -> None:
    """Users of s = x + r placed before the norm read the fused 'added', so it must be defined before them."""
    def fn(x: torch.Tensor, r: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = x + r
        t = s * 3  # reads the sum before the norm
        return ops.rms_norm(s, w, eps=1e-6), t

    x, r, w = torch.randn(4, 32), torch.randn(4, 32), torch.randn(32)
    targets, got = _graph_targets(fn, x, r, w)
    assert targets.count(torch.ops.dlinfer.add_rms_norm.default) == 1
    for g, e in zip(got, fn(x, r, w)):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_weight_defined_after_a_user_of_the_sum_is_left_unfused() -> None:
    def fn(x: torch.Tensor, r: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = x + r
        t = s * 3
        w2 = w * 2  # the weight exists only after a user of s: no valid place for the fused node
        return ops.rms_norm(s, w2, eps=1e-6), t

    x, r, w = torch.randn(4, 32), torch.randn(4, 32), torch.randn(32)
    targets, got = _graph_targets(fn, x, r, w)
    assert torch.ops.dlinfer.add_rms_norm.default not in targets
    for g, e in zip(got, fn(x, r, w)):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def _add_norm_quant(x: torch.Tensor, r: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    s = x + r
    q, scale = ops.dynamic_quant(ops.rms_norm(s, w, eps=1e-6))
    return q, scale, s * 0.5


def _explicit_add_norm_quant(x: torch.Tensor, r: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    normed, added = ops.add_rms_norm(x, r, w, eps=1e-6)
    q, scale = ops.dynamic_quant(normed)
    return q, scale, added * 0.5


def _int8_reference(x: torch.Tensor, r: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Independent float64 math: rms-normalise the sum, quantise symmetrically per token."""
    s = (x + r).double()
    n = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()
    scale = n.abs().amax(-1) / 127
    return torch.round(n / scale[..., None]), scale, s * 0.5


def test_add_rms_norm_then_dynamic_quant_becomes_add_rms_norm_w8a8() -> None:
    x, r, w = torch.randn(6, 64), torch.randn(6, 64), torch.randn(64) + 1
    want_q, want_scale, want_half = _int8_reference(x, r, w)
    for fn in (_add_norm_quant, _explicit_add_norm_quant):
        targets, (q, scale, half) = _graph_targets(fn, x, r, w)
        assert targets.count(torch.ops.dlinfer.add_rms_norm_w8a8.default) == 1, targets
        for gone in ("add_rms_norm", "rms_norm", "dynamic_quant"):
            assert getattr(torch.ops.dlinfer, gone).default not in targets, gone
        assert q.dtype == torch.int8 and (q.double() - want_q).abs().max() <= 1
        torch.testing.assert_close(scale.double(), want_scale, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(half.double(), want_half, rtol=1e-6, atol=1e-6)


def test_normed_output_with_another_user_is_not_fused_into_w8a8() -> None:
    def fn(x: torch.Tensor, r: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        normed, added = ops.add_rms_norm(x, r, w, eps=1e-6)
        q, scale = ops.dynamic_quant(normed)
        return q, scale, normed + added

    x, r, w = torch.randn(3, 32), torch.randn(3, 32), torch.randn(32)
    targets, got = _graph_targets(fn, x, r, w)
    assert torch.ops.dlinfer.add_rms_norm_w8a8.default not in targets
    want = fn(x, r, w)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[2], want[2])
