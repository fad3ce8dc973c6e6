"""A minimal stand-in for torchair (inside torch_npu): the two documented entry points a custom backend uses.

Documented semantics only (hiascend torchair guide torchair_00084 "get_compiler"; torch_npu 2.13.0
``torch_npu/dynamo/torchair/npu_fx_compiler.py:get_compiler`` and ``configs/compiler_config.py``):

- ``CompilerConfig().mode`` is one of ``max-autotune`` (the default; GE graph), ``reduce-overhead`` and
  ``npugraph_ex`` (ACL graph); any other value is rejected (``OptionValue`` with a fixed choice list);
- ``get_compiler(config)`` returns the FX compiler to pass as ``fw_compiler`` of ``aot_module_simplified``;
  it is called with the AOT (aten-level, functionalised) graph and its example inputs and returns a callable.

Not modelled: GE conversion and compilation, ACL-graph capture and its replay-time host updates (the
replay side of FIA host lengths is modelled by graphs.py for NPUGraph). The compiler here runs the graph
eagerly and records what it was given, for tests.
"""

from __future__ import annotations

from typing import Any

import torch

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
