"""Import dlinfer_lmdeploy right after ``lmdeploy`` is imported, in every process.

Loaded from ``dlinfer_lmdeploy_autoload.pth`` at interpreter start. It only installs a
meta-path finder (no torch, lmdeploy, dlinfer, typing or importlib.abc import: ~2 ms); when ``lmdeploy`` finishes
importing, ``dlinfer_lmdeploy`` is imported, which applies the patch inventory. This is
what makes ``lmdeploy chat --device cpu``, ``lmdeploy serve`` and LMDeploy's spawned
tensor-parallel workers see dlinfer devices. Set ``DLINFER_LMDEPLOY_AUTOLOAD=0`` to disable.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # this module runs at every interpreter start: no typing / importlib.abc import (~15-30 ms)
if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any


class _AfterLMDeploy:
    """A meta-path finder (the protocol is the ``find_spec`` method) that acts once, for ``lmdeploy``."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> ModuleSpec | None:
        if fullname != "lmdeploy":
            return None
        sys.meta_path.remove(self)
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_wire(module: ModuleType) -> None:
            exec_module(module)
            try:
                import dlinfer_lmdeploy  # noqa: F401
            except ImportError as exc:  # unsupported LMDeploy / missing dlinfer: LMDeploy itself keeps working
                import warnings

                warnings.warn(f"dlinfer devices are not available in LMDeploy: {exc}", RuntimeWarning, stacklevel=2)

        loader.exec_module = exec_then_wire  # type: ignore[method-assign]
        return spec


if os.environ.get("DLINFER_LMDEPLOY_AUTOLOAD", "1") != "0" and "lmdeploy" not in sys.modules:
    sys.meta_path.insert(0, _AfterLMDeploy())
