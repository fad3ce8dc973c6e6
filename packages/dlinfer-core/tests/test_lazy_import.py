"""``import dlinfer`` and the pytest plugin (loaded by every pytest run in the environment) do not import torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "numpy")


@pytest.mark.parametrize("module", ["dlinfer", "dlinfer.testing", "dlinfer.testing.pytest_plugin"])
def test_import_is_light(module: str) -> None:
    code = f"import sys, {module}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", f"import {module} imported {out.stdout.strip()}"


def test_lazy_names_resolve() -> None:
    code = (
        "import dlinfer, dlinfer.testing as t; from dlinfer import activate, DlinferError, SPECS; "
        "import dlinfer.dispatch as d; assert activate is d.activate and 'rms_norm' in SPECS; "
        "assert t.run_conformance.__module__ == 'dlinfer.testing.runner'; "
        "assert dlinfer.registry.REGISTRY is not None; "
        "import sys; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr[-2000:]
    missing = subprocess.run([sys.executable, "-c", "import dlinfer; dlinfer.no_such_name"], capture_output=True,
                             text=True, timeout=120, check=False)
    assert "module 'dlinfer' has no attribute 'no_such_name'" in missing.stderr
