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
