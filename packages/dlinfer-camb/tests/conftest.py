"""Test setup: the simulated torch_mlu / torch_mlu_ops replace the vendor libraries (tests only)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import mlu_sim  # noqa: E402
from dlinfer_camb import runtime  # noqa: E402
from dlinfer_camb.ops import load_ops  # noqa: E402


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
