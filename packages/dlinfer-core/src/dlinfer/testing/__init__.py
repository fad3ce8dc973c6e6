"""The conformance kit: every backend's ops against the reference on fresh random inputs.

Use :func:`run_conformance` from code, ``dlinfer check --backend NAME`` from a shell, or
the pytest plugin: ``pytest --dlinfer-backend=NAME`` adds one test per (op case, dtype).
"""

from dlinfer.testing.cases import CASES, Case, cases_for
from dlinfer.testing.compare import compare_tensor, poison_allocator
from dlinfer.testing.runner import CaseResult, call, format_table, plan, run_case, run_conformance
from dlinfer.testing.tolerances import Tolerance, tolerance

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
