"""Test setup.

CPU (default): the simulated torch_mlu / torch_mlu_ops (tests/mlu_sim) replace the vendor libraries,
installed by the fixtures below (tests only).

MLU hardware (``DLINFER_HARDWARE=1``, set by ``nox -s tests-camb``): the simulator is never imported,
only the files of ``HARDWARE_FILES`` are collected (test_on_mlu.py), and they plus the conformance kit
(``--dlinfer-backend=camb``) run against the real torch_mlu / torch_mlu_ops.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

HERE = Path(__file__).resolve().parent
HARDWARE = os.environ.get("DLINFER_HARDWARE") == "1"
HARDWARE_FILES = ("conftest.py", "test_on_mlu.py")
"""What hardware mode collects here: an allowlist, so that a new simulator-based file stays out by default."""

if HARDWARE:
    def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
        if collection_path.resolve().parent == HERE and collection_path.name not in HARDWARE_FILES:
            return True
        return None
else:
    import mlu_sim
    from dlinfer_camb import runtime
    from dlinfer_camb.ops import load_ops

    @pytest.fixture
    def sim() -> Iterator[None]:
        """The full simulator, freshly installed; the runtime check forgotten before and after."""
        runtime.reset()
        mlu_sim.install()
        yield
        mlu_sim.uninstall()
        runtime.reset()

    @pytest.fixture
    def camb_ops(sim: None) -> dict:
        return dict(load_ops())

    @pytest.fixture(scope="session")
    def sim_session() -> Iterator[None]:
        runtime.reset()
        mlu_sim.install()
        yield
        mlu_sim.uninstall()
        runtime.reset()
