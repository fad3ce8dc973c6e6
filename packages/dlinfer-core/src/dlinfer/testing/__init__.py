"""The conformance kit: every backend's ops against the reference on fresh random inputs.

Use :func:`run_conformance` from code, ``dlinfer check --backend NAME`` from a shell, or
the pytest plugin: ``pytest --dlinfer-backend=NAME`` adds one test per (op case, dtype).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {  # imported on first use: the pytest plugin (this package) is loaded by every pytest run in the environment
    "CASES": "cases", "Case": "cases", "cases_for": "cases",
    "compare_tensor": "compare", "poison_allocator": "compare",
    "CaseResult": "runner", "call": "runner", "format_table": "runner", "plan": "runner", "run_case": "runner",
    "run_conformance": "runner",
    "Tolerance": "tolerances", "tolerance": "tolerances",
}

if TYPE_CHECKING:
    from dlinfer.testing.cases import CASES, Case, cases_for
    from dlinfer.testing.compare import compare_tensor, poison_allocator
    from dlinfer.testing.runner import CaseResult, call, format_table, plan, run_case, run_conformance
    from dlinfer.testing.tolerances import Tolerance, tolerance


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dlinfer.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"dlinfer.testing.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "CASES",
    "Case",
    "CaseResult",
    "Tolerance",
    "call",
    "cases_for",
    "compare_tensor",
    "format_table",
    "plan",
    "poison_allocator",
    "run_case",
    "run_conformance",
    "tolerance",
]
