"""Lowering: ``dlinfer::<op>`` FX nodes -> a vendor's own op nodes, driven by a table.

A vendor declares ``Backend.lowering``: a factory returning ``{op name: Lowering}``. For each
``dlinfer::<op>`` node of a captured graph, :func:`lower` binds the node's arguments by the spec's
parameter names and asks the entry to rewrite it in place:

- ``adapt(args) -> (target_args, target_kwargs)`` builds the target's arguments from the bound dlinfer
  arguments (``args[name]`` is an ``fx.Proxy`` for graph values, the constant otherwise), emitting glue
  nodes (views, casts) through the proxies when it needs them;
- the target node ``target(*target_args, **target_kwargs)`` is inserted (``target`` is a callable, or a
  string ``"ns.op"`` / ``"ns.op.overload"`` resolved to ``torch.ops.ns.op.<overload or default>`` at
  lowering time, so a table can be declared without importing the vendor);
- ``output(result, args)`` maps the target's result to the dlinfer op's outputs (a proxy, or a tuple of
  them for multi-output ops; ``None`` for ops that return nothing); the default is the result itself.

An ``adapt`` whose kernel depends on the node (a route chosen from shapes) may instead emit the vendor nodes
itself and return :class:`Emitted` outputs. An entry may decline a node (``adapt`` returns a :class:`Declined`
reason, e.g. a host length that is not a graph input); ops without an entry or declined stay ``dlinfer::<op>``
nodes, which run through dlinfer's eager dispatch, and are reported by name once per (backend, op, reason).
"""

from __future__ import annotations

import copy
import logging
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from dlinfer.spec import SPECS

logger = logging.getLogger("dlinfer.compile")
_reported: set[tuple[str, str, str]] = set()


@dataclass(frozen=True)
class Declined:
    """Returned by ``Lowering.adapt`` when this node cannot be lowered; ``why`` is reported."""

    why: str


@dataclass(frozen=True)
class Emitted:
    """Returned by ``Lowering.adapt`` that emitted the vendor nodes itself (the kernel depends on the node, e.g. a
    route chosen from shapes): ``outs`` are the dlinfer op's outputs, as ``Lowering.output`` would return them.
    Not allowed with ``host_args`` (their checks need the target's keyword arguments)."""

    outs: Any


class Args(Mapping[str, Any]):
    """The bound arguments of one ``dlinfer::<op>`` node: name -> ``fx.Proxy`` (graph values) or constant.

    ``meta(name)`` is the example/fake tensor Dynamo recorded for a graph value (``None`` if unknown).
    """

    def __init__(self, values: dict[str, Any], metas: dict[str, Any]) -> None:
        self._values, self._metas = values, metas

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Any:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def meta(self, name: str) -> Any:
        return self._metas.get(name)

    def is_graph_input(self, name: str) -> bool:
        """True when the argument is a placeholder of the graph (not computed, not a constant)."""
        v = self._values.get(name)
        return isinstance(v, fx.Proxy) and v.node.op == "placeholder"


Adapter = Callable[[Args], "tuple[tuple[Any, ...], dict[str, Any]] | Declined | Emitted"]


@dataclass(frozen=True)
class Lowering:
    """One table entry: how a ``dlinfer::<op>`` node becomes a vendor op node."""

    target: str | Callable[..., Any]
    """The vendor op: a callable, or ``"ns.op[.overload]"`` resolved under ``torch.ops`` when lowering."""
    adapt: Adapter
    """Bound dlinfer arguments -> the target's ``(args, kwargs)``, or :class:`Declined`."""
    output: Callable[[fx.Proxy, Args], Any] | None = None
    """The target's result -> the dlinfer op's outputs (proxy, tuple of proxies, or None); default: as is."""
    host_args: Mapping[str, str] = field(default_factory=dict)
    """Target keyword argument -> the dlinfer parameter whose host-side lengths it carries. :func:`lower`
    declines the node unless that parameter is a graph input, and checks the target receives it unchanged
    (a constant or a computed value would be baked into a captured device graph)."""
    host_lists: bool = False
    """True: the target takes those host lengths as an int list (a ``SymInt[]`` schema argument, e.g. torch_npu's
    FIA ``actual_seq_lengths_kv``). :func:`lower` then passes a list of new graph inputs, one int per element of
    the host tensor, which the compiled callable fills from the tensor on every call (:func:`with_host_inputs`)
    and which are symbolic (unspecialised) while the graph compiler traces, so no length is baked."""
    host_skip: Mapping[str, int] = field(default_factory=dict)
    """With ``host_lists``: target keyword -> how many leading elements of its host tensor the target does not take
    (1 for a cumulative-lengths tensor's leading 0 where the target wants end offsets only, e.g. FIA's TND
    ``actual_seq_lengths`` from ``cu_seqlens_q_cpu``)."""
    note: str = ""
    extras: Mapping[str, Any] = field(default_factory=dict)
    """Vendor facts about the target (e.g. its graph-compiler converter), for the vendor's own checks."""


@dataclass
class LoweringReport:
    """What :func:`lower` did: op -> nodes lowered, and op -> reasons nodes stayed ``dlinfer::<op>``."""

    lowered: dict[str, int] = field(default_factory=dict)
    kept: dict[str, set[str]] = field(default_factory=dict)

    def keep(self, op: str, why: str) -> None:
        self.kept.setdefault(op, set()).add(why)


def resolve(target: str | Callable[..., Any]) -> Callable[..., Any]:
    """``"ns.op"`` -> ``torch.ops.ns.op.default``; ``"ns.op.overload"`` -> that overload; callables as is."""
    if not isinstance(target, str):
        return target
    parts = target.split(".")
    if len(parts) not in (2, 3):
        raise ValueError(f"lowering target {target!r}: expected 'namespace.op' or 'namespace.op.overload'")
    obj: Any = getattr(getattr(torch.ops, parts[0]), parts[1])
    if len(parts) == 3:
        return getattr(obj, parts[2])
    return obj.default if isinstance(obj, torch._ops.OpOverloadPacket) else obj


def _dlinfer_ops() -> dict[Any, str]:
    from dlinfer.custom_ops import CUSTOM_OPS

    return {op: name for name, op in CUSTOM_OPS.items()}


def _bind(name: str, node: fx.Node, tracer: fx.proxy.GraphAppendingTracer) -> Args:
    spec = SPECS[name]
    values: dict[str, Any] = dict(zip((p.name for p in spec.params), node.args))
    values.update(node.kwargs)
    for p in spec.params:
        values.setdefault(p.name, p.default)
    metas = {k: v.meta.get("val", v.meta.get("example_value")) for k, v in values.items() if isinstance(v, fx.Node)}
    wrapped = {k: fx.Proxy(v, tracer) if isinstance(v, fx.Node) else v for k, v in values.items()}
    return Args(wrapped, metas)


def _node(value: Any) -> Any:
    return value.node if isinstance(value, fx.Proxy) else value


def _keep_meta(old: fx.Node, new: Any) -> None:
    """Give a lowered output the example value Dynamo recorded for the output it replaces (later entries read it)."""
    if isinstance(new, fx.Node):
        for key in ("val", "example_value"):
            if key in old.meta:
                new.meta.setdefault(key, old.meta[key])


def _replace(gm: fx.GraphModule, node: fx.Node, outs: Any) -> None:
    """Point the users of ``node`` (the op's value, or ``getitem`` of it) at the lowered outputs."""
    if isinstance(outs, tuple):
        for user in list(node.users):
            if not (user.op == "call_function" and user.target is operator.getitem):
                raise RuntimeError(f"lowering {node.target}: its tuple output is used whole by {user.format_node()}")
            _keep_meta(user, _node(outs[user.args[1]]))
            user.replace_all_uses_with(_node(outs[user.args[1]]))
            gm.graph.erase_node(user)
    elif outs is not None:
        _keep_meta(node, _node(outs))
        node.replace_all_uses_with(_node(outs))
    elif node.users:
        raise RuntimeError(f"lowering {node.target}: the lowered op returns nothing but the node has users")
    gm.graph.erase_node(node)


def _report(backend: str, report: LoweringReport) -> None:
    for op, reasons in sorted(report.kept.items()):
        for why in sorted(reasons):
            if (backend, op, why) not in _reported:
                _reported.add((backend, op, why))
                logger.warning("dlinfer backend '%s' graph: %s not lowered (%s); it runs through dlinfer's eager "
                               "dispatch", backend, op, why)


def lower(gm: fx.GraphModule, table: Mapping[str, Lowering], *, backend: str = "") -> LoweringReport:
    """Rewrite every ``dlinfer::<op>`` node that ``table`` lowers; report the others (once each) by name.

    Returns the :class:`LoweringReport`. The graph is linted and recompiled; no dead-code elimination is run
    (a lowered in-place vendor op may not be marked impure).
    """
    report = LoweringReport()
    lists: dict[fx.Node, list[fx.Node]] = {}
    ops = _dlinfer_ops()
    tracer = fx.proxy.GraphAppendingTracer(gm.graph)
    for node in list(gm.graph.nodes):
        name = ops.get(node.target) if node.op == "call_function" else None
        if name is None:
            continue
        entry = table.get(name)
        if entry is None:
            report.keep(name, "no lowering entry")
            continue
        args = _bind(name, node, tracer)
        missing = [src for src in entry.host_args.values() if not args.is_graph_input(src)]
        with gm.graph.inserting_before(node):
            adapted = entry.adapt(args) if not missing else Declined(
                f"host lengths {', '.join(missing)} are not graph inputs")
            if isinstance(adapted, Declined):
                report.keep(name, adapted.why)
                continue
            if isinstance(adapted, Emitted):
                if entry.host_args:
                    raise RuntimeError(f"lowering {name}: an entry with host_args must return the target's arguments")
                outs = adapted.outs
            else:
                outs = _emit_target(gm, entry, name, args, adapted, tracer, lists)
        _replace(gm, node, outs)
        report.lowered[name] = report.lowered.get(name, 0) + 1
    gm.graph.lint()
    gm.recompile()
    gm.meta[REPORT] = report
    _report(backend, report)
    return report


def _emit_target(gm: fx.GraphModule, entry: Lowering, name: str, args: Args,
                 adapted: tuple[tuple[Any, ...], dict[str, Any]], tracer: fx.proxy.GraphAppendingTracer,
                 lists: dict[fx.Node, list[fx.Node]]) -> Any:
    """Insert ``entry.target(*adapted)`` (host lengths as int graph inputs) and map its result to the op's outputs."""
    target_args, target_kwargs = adapted
    bad = [k for k, src in entry.host_args.items() if target_kwargs.get(k) is not args[src]]
    if bad:
        raise RuntimeError(f"lowering {name}: {entry.target} argument(s) {bad} must be the graph inputs "
                           f"{[entry.host_args[k] for k in bad]} themselves")
    if entry.host_lists:
        target_kwargs = dict(target_kwargs)
        for k, src in entry.host_args.items():
            skip = entry.host_skip.get(k, 0)
            target_kwargs[k] = [fx.Proxy(n, tracer) for n in _host_list(gm, args[src].node, lists)[skip:]]
    result = tracer.create_proxy("call_function", resolve(entry.target), target_args, target_kwargs)
    return entry.output(result, args) if entry.output is not None else result


REPORT = "dlinfer_lowering_report"
"""``gm.meta`` key: the :class:`LoweringReport` of the last :func:`lower` over the graph (why nodes stayed)."""
HOST_INPUTS = "dlinfer_host_inputs"
"""``gm.meta`` key: ``[(input index of a host tensor, element index)]``, one per int input :func:`lower` appended."""


def _host_list(gm: fx.GraphModule, source: fx.Node, lists: dict[fx.Node, list[fx.Node]]) -> list[fx.Node]:
    """Int graph inputs standing for the elements of the 1-D host tensor input ``source`` (shared by its users)."""
    if source in lists:
        return lists[source]
    val = source.meta.get("val", source.meta.get("example_value"))
    if val is None or val.dim() != 1:
        raise RuntimeError(f"lowering: host lengths input {source.name} must be a 1-D tensor of known shape")
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    spec = gm.meta.setdefault(HOST_INPUTS, [])
    new: list[fx.Node] = []
    last = placeholders[-1]
    for i in range(int(val.shape[0])):
        with gm.graph.inserting_after(last):
            last = gm.graph.placeholder(f"{source.name}_host_{i}", type_expr=int)
        last._dynamo_source = None  # type: ignore[attr-defined]  # not a user input: AOT autograd asks for this
        new.append(last)
        spec.append((placeholders.index(source), i))
    lists[source] = new
    return new


def host_example_inputs(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> list[Any]:
    """Example values of the int inputs :func:`lower` appended: unspecialised SymInts of the tracing context's
    shape environment (so a graph compiler cannot bake them), plain ints outside a Dynamo compile."""
    from torch._dynamo.source import ConstantSource
    from torch._guards import TracingContext
    from torch.fx.experimental.symbolic_shapes import DimDynamic

    ctx = TracingContext.try_get()
    shape_env = ctx.fake_mode.shape_env if ctx is not None and ctx.fake_mode is not None else None
    out: list[Any] = []
    for k, (src, i) in enumerate(gm.meta.get(HOST_INPUTS, [])):
        value = int(example_inputs[src][i])
        if shape_env is not None:
            value = shape_env.create_unspecified_symint_and_symbol(
                value, ConstantSource(f"dlinfer_host_{k}"), DimDynamic.DYNAMIC)
        out.append(value)
    return out


def with_host_inputs(fn: Callable[..., Any], gm: fx.GraphModule) -> Callable[..., Any]:
    """``fn`` (compiled from ``gm``) called with the original inputs plus the host-length ints read from them."""
    spec = list(gm.meta.get(HOST_INPUTS, []))
    if not spec:
        return fn
    sources = sorted({src for src, _ in spec})

    def call(*args: Any) -> Any:
        host = {src: args[src].tolist() for src in sources}
        return fn(*args, *(host[src][i] for src, i in spec))

    return call


def copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of a Dynamo graph module with its own graph (and Dynamo's input metadata), for passes that change
    its inputs: Dynamo still reads its own graph's placeholders after the backend returns."""
    graph = fx.Graph()
    graph._codegen = copy.deepcopy(gm.graph._codegen)
    env: dict[fx.Node, fx.Node] = {}
    graph.output(graph.graph_copy(gm.graph, env))
    new = fx.GraphModule(gm, graph)
    new.meta.update(gm.meta)
    for old, node in env.items():
        if old.op == "placeholder" and hasattr(old, "_dynamo_source"):
            node._dynamo_source = old._dynamo_source  # type: ignore[attr-defined]
    if hasattr(gm, "_param_name_to_source"):
        new._param_name_to_source = gm._param_name_to_source
    return new
