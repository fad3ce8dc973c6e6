"""The ``dlinfer`` Dynamo backend: ``torch.compile(model, backend="dlinfer")``.

It runs dlinfer's FX passes over the captured graph (each dlinfer op is one node there), lowers the
dlinfer nodes the active backend's table covers (``Backend.lowering``, :mod:`dlinfer.lowering`; the
others stay ``dlinfer::<op>`` nodes run by dlinfer's eager dispatch, reported once), then hands the
graph to the backend's graph compiler (``Backend.compile_backend``). A backend without one runs the
graph eagerly, which is reported once.

Passes:
    fuse_add_rms_norm   x + r followed by rms_norm of the sum  -> add_rms_norm (sum and norm from one kernel)
    fuse_norm_quant     rms_norm / add_rms_norm followed by an int8 dynamic_quant of the normed output
                        -> rms_norm_w8a8 / add_rms_norm_w8a8 (when nothing else reads the normed output)
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx

logger = logging.getLogger("dlinfer.compile")
_ADDS = {operator.add, torch.add, torch.ops.aten.add.Tensor}
_reported: set[str] = set()


def _op(name: str) -> Any:
    return getattr(torch.ops.dlinfer, name).default


def _is(node: fx.Node, target: Any) -> bool:
    return node.op == "call_function" and node.target == target


def _tensor_args(node: fx.Node, n: int) -> bool:
    return len(node.args) >= n and all(isinstance(a, fx.Node) for a in node.args[:n])


def _order(gm: fx.GraphModule) -> dict[fx.Node, int]:
    return {n: i for i, n in enumerate(gm.graph.nodes)}


def fuse_add_rms_norm(gm: fx.GraphModule) -> int:
    """Replace ``s = x + r; rms_norm(s, w)`` by ``add_rms_norm(x, r, w)``; returns the number of fusions.

    The fused node goes right after the later of the add and the weight, so that every user of ``s``
    (which now reads the fused ``added``) comes after it; when a user of ``s`` precedes the weight's
    definition there is no such place and the pattern is left alone.
    """
    fused = 0
    for node in list(gm.graph.nodes):
        if not _is(node, _op("rms_norm")):
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_function" and src.target in _ADDS
                and _tensor_args(src, 2) and len(src.args) == 2 and not src.kwargs):
            continue
        x_val, r_val = src.args[0].meta.get("example_value"), src.args[1].meta.get("example_value")
        if x_val is not None and r_val is not None and (x_val.shape != r_val.shape or x_val.dtype != r_val.dtype):
            continue  # broadcasting or mixed dtypes: not the fused op's contract
        order = _order(gm)
        weight = node.args[1]
        anchor = weight if isinstance(weight, fx.Node) and order[weight] > order[src] else src
        if any(order[u] <= order[anchor] for u in src.users):
            continue  # a user of the sum sits before the weight exists: no valid place for the fused node
        with gm.graph.inserting_before(anchor.next):
            pair = gm.graph.call_function(_op("add_rms_norm"), (src.args[0], src.args[1], weight),
                                          dict(node.kwargs))
            normed = gm.graph.call_function(operator.getitem, (pair, 0))
            added = gm.graph.call_function(operator.getitem, (pair, 1))
        node.replace_all_uses_with(normed)
        src.replace_all_uses_with(added)
        gm.graph.erase_node(node)
        gm.graph.erase_node(src)
        fused += 1
    return fused


def _getitem_of(node: fx.Node) -> tuple[fx.Node, int] | None:
    if _is(node, operator.getitem) and isinstance(node.args[0], fx.Node) and isinstance(node.args[1], int):
        return node.args[0], node.args[1]
    return None


def _fuse_add_norm_quant(gm: fx.GraphModule, quant: fx.Node, src: fx.Node) -> bool:
    """``dynamic_quant(add_rms_norm(x, r, w)[0])`` -> ``add_rms_norm_w8a8(x, r, w)``; ``[1]`` becomes its ``[2]``."""
    item = _getitem_of(src)
    if item is None or item[1] != 0 or not _is(item[0], _op("add_rms_norm")) or len(src.users) != 1:
        return False
    pair = item[0]
    others = [u for u in pair.users if u is not src]
    if not all((g := _getitem_of(u)) is not None and g[1] == 1 for u in others):
        return False  # the pair is used whole somewhere: keep it
    with gm.graph.inserting_before(pair):
        new = gm.graph.call_function(_op("add_rms_norm_w8a8"), pair.args, dict(pair.kwargs))
        added = gm.graph.call_function(operator.getitem, (new, 2))
    quant.replace_all_uses_with(new)  # its users take [0] (x_q) and [1] (scale), the same indices
    for u in others:
        u.replace_all_uses_with(added)
        gm.graph.erase_node(u)
    for dead in (quant, src, pair):
        gm.graph.erase_node(dead)
    return True


def fuse_norm_quant(gm: fx.GraphModule) -> int:
    """Replace ``dynamic_quant(rms_norm(x))`` (int8) by ``rms_norm_w8a8(x)`` and ``dynamic_quant`` of an
    ``add_rms_norm``'s normed output by ``add_rms_norm_w8a8``, when the norm has no other user."""
    fused = 0
    for node in list(gm.graph.nodes):
        if not _is(node, _op("dynamic_quant")) or node.kwargs.get("dtype", torch.int8) != torch.int8:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node):
            continue
        if _is(src, _op("rms_norm")) and len(src.users) == 1:
            with gm.graph.inserting_before(node):
                new = gm.graph.call_function(_op("rms_norm_w8a8"), src.args, dict(src.kwargs))
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            gm.graph.erase_node(src)
            fused += 1
        elif _fuse_add_norm_quant(gm, node, src):
            fused += 1
    return fused


PASSES: Sequence[Callable[[fx.GraphModule], int]] = (fuse_add_rms_norm, fuse_norm_quant)


def optimize(gm: fx.GraphModule) -> dict[str, int]:
    """Run every pass; returns pass name -> number of rewrites."""
    counts = {p.__name__: p(gm) for p in PASSES}
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return counts


def dlinfer_backend(gm: fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable[..., Any]:
    """Dynamo backend entry point (registered under ``torch_dynamo_backends`` as ``dlinfer``)."""
    from dlinfer.dispatch import current

    counts = optimize(gm)
    logger.debug("dlinfer passes: %s", counts)
    backend = current()
    if backend.lowering is not None:
        from dlinfer.lowering import copy_graph_module, host_example_inputs, lower, with_host_inputs

        gm = copy_graph_module(gm)  # lowering may add inputs (host lengths as ints); Dynamo keeps its own graph
        report = lower(gm, backend.lowering(), backend=backend.name)
        logger.debug("dlinfer lowering: %s", report)
        if backend.compile_backend is not None:
            inputs = [*example_inputs, *host_example_inputs(gm, example_inputs)]
            return with_host_inputs(backend.compile_backend(gm, inputs), gm)
        return with_host_inputs(_eager(backend.name, gm), gm)
    if backend.compile_backend is not None:
        return backend.compile_backend(gm, example_inputs)
    return _eager(backend.name, gm)


def _eager(name: str, gm: fx.GraphModule) -> Callable[..., Any]:
    if name not in _reported:
        _reported.add(name)
        logger.info("dlinfer backend '%s' has no graph compiler; the optimised graph runs eagerly", name)
    return gm.forward
