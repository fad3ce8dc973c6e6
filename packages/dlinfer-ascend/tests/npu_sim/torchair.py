"""A minimal stand-in for torchair (inside torch_npu): the two documented entry points a custom backend uses.

Documented semantics only (hiascend torchair guide torchair_00084 "get_compiler"; torch_npu 2.13.0
``torch_npu/dynamo/torchair/npu_fx_compiler.py:get_compiler`` and ``configs/compiler_config.py``):

- ``CompilerConfig().mode`` is one of ``max-autotune`` (the default; GE graph), ``reduce-overhead`` and
  ``npugraph_ex`` (ACL graph); any other value is rejected (``OptionValue`` with a fixed choice list);
- ``get_compiler(config)`` returns the FX compiler to pass as ``fw_compiler`` of ``aot_module_simplified``;
  it is called with the AOT (aten-level, functionalised) graph and its example inputs and returns a callable.

Not modelled: GE conversion and compilation. The compiler from :func:`get_compiler` runs the graph eagerly and
records what it was given, for tests.

:class:`AclGraph` models what the ACL-graph modes (``reduce-overhead`` / ``npugraph_ex``, ``AclConcreteGraph``)
do with an FX graph: capture it once into an NPU graph and replay it, updating the host arguments of the ops in
``_REPLACE_FUNC_MAP`` from the graph inputs by the rules of ``get_update_ruler`` (torch_npu 2.13.0
``torchair/_acl_concrete_graph/acl_graph.py``; docs/vendor-semantics.md §C.4). Capture, replay and ``update`` are the
simulated NPUGraph (graphs.py, docs/vendor-semantics.md §2.28): every other host value is baked at capture.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch.utils._python_dispatch import TorchDispatchMode

from . import graphs
from .attention import npu_fused_infer_attention_score

_MODES = ("max-autotune", "reduce-overhead", "npugraph_ex")
COMPILED: list[tuple[str, torch.fx.GraphModule]] = []
"""(mode, AOT graph) of every graph handed to a compiler from :func:`get_compiler`."""


class _Mode:
    def __init__(self) -> None:
        self.value = "max-autotune"


class CompilerConfig:
    """``torchair.CompilerConfig``: only ``mode`` (``config.mode = "..."`` sets ``config.mode.value``)."""

    def __init__(self) -> None:
        object.__setattr__(self, "mode", _Mode())

    def __setattr__(self, key: str, value: Any) -> None:
        if key != "mode":
            raise ValueError(f"CompilerConfig option {key!r} is not modelled")
        if value not in _MODES:
            raise ValueError(f"CompilerConfig.mode {value!r}: expected one of {list(_MODES)}")
        self.mode.value = value


def get_compiler(compiler_config: CompilerConfig | None = None) -> Any:
    """The FX compiler for ``aot_module_simplified(..., fw_compiler=...)``."""
    config = compiler_config if compiler_config is not None else CompilerConfig()

    def compiler(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        COMPILED.append((config.mode.value, gm))
        return gm.forward

    return compiler


REPLACE_FUNC_MAP: dict[Any, tuple[str, ...]] = {
    npu_fused_infer_attention_score: ("actual_seq_lengths", "actual_seq_lengths_kv", "actual_shared_prefix_len"),
}
"""``acl_graph.py:_REPLACE_FUNC_MAP`` (FIA entry): FX node target -> ``updated_param_keys``. Keyed here by the
simulated op, which is what ``torch.ops.npu.npu_fused_infer_attention_score`` resolves to under the simulator."""

Ruler = list[tuple[str, Any]]


def get_update_ruler(node: fx.Node, updated_param_keys: Sequence[str],
                     placeholders: list[fx.Node]) -> dict[str, Ruler]:
    """``acl_graph.py:get_update_ruler`` (keyword part): an updated keyword must be a list or tuple (else
    RuntimeError) whose items are graph inputs (``("index", input position)``) or constants (``("fixed", v)``,
    anything else: RuntimeError); a keyword with no graph-input item gets no rule (it stays as captured)."""
    rulers: dict[str, Ruler] = {}
    for name, value in node.kwargs.items():
        if name not in updated_param_keys:
            continue
        if not isinstance(value, (list, tuple)):
            raise RuntimeError(f"For updated param type only list is supported, but get [{value}].")
        ruler: Ruler = []
        for item in value:
            if item in placeholders:
                ruler.append(("index", placeholders.index(item)))
            elif isinstance(item, (int, float, bool)) or item is None:
                ruler.append(("fixed", item))
            else:
                raise RuntimeError(f"For updated param value only sym and constant is supported, but get [{item}].")
        if any(kind == "index" for kind, _ in ruler):
            rulers[name] = ruler
    return rulers


class AclGraph:
    """An FX graph as an ACL-graph mode runs it: the first call captures ``gm`` into a simulated NPUGraph
    (``auto_dispatch_capture=True``: FIA is captured updatable, §2.28); each later call copies its tensor inputs
    into the captured ones (unless they are the same tensors), replays, and updates every captured FIA with the
    values its rules take from this call's inputs (``gen_updated_input_func``). Returns the captured outputs."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self.rulers = [get_update_ruler(n, REPLACE_FUNC_MAP[n.target], placeholders) for n in gm.graph.nodes
                       if n.op == "call_function" and n.target in REPLACE_FUNC_MAP]
        self.graph: graphs.NPUGraph | None = None
        self.inputs: tuple[Any, ...] = ()
        self.out: Any = None

    def __call__(self, *args: Any) -> Any:
        if self.graph is None:
            self.inputs, self.graph = args, graphs.NPUGraph()
            with graphs.graph(self.graph, auto_dispatch_capture=True):
                self.out = self.gm(*args)
            return self.out
        for old, new in zip(self.inputs, args, strict=True):
            if isinstance(old, torch.Tensor) and new is not old:
                old.copy_(new)
        self.graph.replay()
        if self.graph.updatable:
            self.graph.update([{k: [args[v] if kind == "index" else v for kind, v in r] for k, r in rulers.items()}
                               for rulers in self.rulers])
        return self.out

    def replayed_host_args(self, name: str) -> list[Any]:
        """The value of host argument ``name`` each captured updatable op ran with at the last replay."""
        assert self.graph is not None
        return [n.kwargs.get(name) for n in self.graph.updatable]


def _apply_rotary_pos_emb_ge(query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                             layout: str = "BSH", rotary_mode: str = "half") -> tuple[torch.Tensor, torch.Tensor]:
    """torchair's GE converter of ``npu_apply_rotary_pos_emb`` (torch_npu 2.13.0
    ``_ge_concrete_graph/ge_converter/custom/apply_rotary_pos_emb.py``): ``TensorMove`` of query and key, then
    ``ApplyRotaryPosEmb`` on the copies, whose outputs it returns: in a GE graph the inputs are left unchanged,
    while the eager kernel rotates them in place (docs/vendor-semantics.md §2.3)."""
    from .rotary import npu_apply_rotary_pos_emb

    return npu_apply_rotary_pos_emb(query.clone(), key.clone(), cos, sin, layout, rotary_mode)


def ge_converter_semantics(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` with the nodes whose GE converter semantics differ from the eager kernel's replaced by a
    model of the converter (only ``npu_apply_rotary_pos_emb``: out of place in GE). GE compilation itself is not
    modelled."""
    from .rotary import npu_apply_rotary_pos_emb

    graph = fx.Graph()
    graph._codegen = copy.deepcopy(gm.graph._codegen)
    graph.output(graph.graph_copy(gm.graph, {}))
    for node in graph.nodes:
        if node.op == "call_function" and node.target is npu_apply_rotary_pos_emb:
            node.target = _apply_rotary_pos_emb_ge
    return fx.GraphModule(gm, graph)


class GlueOps(TorchDispatchMode):
    """Records the aten ops a lowered graph runs *outside* the simulated vendor kernels (its glue: views, casts,
    masks), i.e. what torchair must convert besides the vendor ops. Use :meth:`run` to call a graph module whose
    simulated-kernel nodes are not recorded (their insides are the simulator's, not the graph's)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[Any] = set()
        self._paused = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if not self._paused:
            self.ops.add(func)
        return func(*args, **(kwargs or {}))

    def _opaque(self, fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self._paused += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._paused -= 1
        return call

    def run(self, gm: fx.GraphModule) -> Any:
        """A callable running ``gm`` under this mode, with every simulator-kernel node opaque."""
        graph = fx.Graph()
        graph._codegen = copy.deepcopy(gm.graph._codegen)
        graph.output(graph.graph_copy(gm.graph, {}))
        for node in graph.nodes:
            if node.op == "call_function" and getattr(node.target, "__module__", "").startswith("npu_sim"):
                node.target = self._opaque(node.target)
        wrapped = fx.GraphModule(gm, graph)

        def call(*args: Any) -> Any:
            with self:
                return wrapped(*args)
        return call
