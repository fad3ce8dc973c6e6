"""Test setup.

CPU (default): the simulated torch_mlu / torch_mlu_ops (tests/mlu_sim) replace the vendor libraries,
installed by the fixtures below (tests only).

MLU hardware (``DLINFER_HARDWARE=1``, set by ``nox -s tests-camb``): the simulator is never imported,
the simulator-based files are not collected, and only test_on_mlu.py plus the conformance kit
(``--dlinfer-backend=camb``) run against the real torch_mlu / torch_mlu_ops.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))

HARDWARE = os.environ.get("DLINFER_HARDWARE") == "1"
SIMULATOR_FILES = ["mlu_sim", "test_conformance.py", "test_kernel_routes.py", "test_mutations.py",
                   "test_plugin.py", "test_refusals.py", "test_sim_contract.py"]
"""Files that install or import the simulator: never collected on hardware."""

if HARDWARE:
    collect_ignore = SIMULATOR_FILES
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
