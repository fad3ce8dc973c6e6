"""Test setup.

CPU (default): the vendor simulator (tests/npu_sim) stands in for torch_npu / ATB. It is installed
for the whole session, before collection, so that the core conformance plugin
(``--dlinfer-backend=ascend --dlinfer-device=cpu``) can load the ops too. Tests that need a world
without torch_npu use the ``no_torch_npu`` fixture.

Ascend hardware (``DLINFER_HARDWARE=1``, set by ``nox -s tests-ascend``): the simulator is never
installed, the simulator-based files are not collected, and only test_on_npu.py plus the
conformance kit (``--dlinfer-backend=ascend``) run against the real torch_npu.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))

HARDWARE = os.environ.get("DLINFER_HARDWARE") == "1"
if HARDWARE:
    collect_ignore = ["npu_sim", "test_conformance_sim.py", "test_device_hooks.py", "test_graph.py",
                      "test_routes.py", "test_sim_kernels.py"]
else:
    import npu_sim


def _reset_adaptor_state() -> None:
    from dlinfer_ascend import patches, runtime, soc

    runtime.reset()
    patches.reset()
    soc.soc_info.cache_clear()


@contextlib.contextmanager
def lmdeploy_on_simulator() -> Iterator[None]:
    """LMDeploy's ``ascend`` device on the simulator: simulator installed, a device node declared, the device
    host-simulated (``sim_e2e.host_simulated``); everything undone after, the session's simulator reinstalled."""
    import dlinfer_lmdeploy
    import npu_sim
    from dlinfer_lmdeploy.testing import sim_e2e

    from dlinfer_ascend import runtime

    npu_sim.install()
    mp = pytest.MonkeyPatch()
    mp.setattr(runtime, "_device_nodes", lambda: True)
    dlinfer_lmdeploy.install()
    try:
        with sim_e2e.host_simulated("ascend"):
            yield
    finally:
        mp.undo()
        npu_sim.uninstall()  # undoes transfer_to_npu
        _reset_adaptor_state()
        npu_sim.install()


def pytest_configure(config: pytest.Config) -> None:
    from dlinfer.registry import REGISTRY

    if not HARDWARE:
        _host_probes_first()
        npu_sim.install()
    REGISTRY.discover()


def _host_probes_first() -> None:
    """transformers probes torch_npu once and would route its own attention to NPU kernels the simulator does not
    model (LMDeploy loads configs and VLM processors through it): let it probe the host before the simulator."""
    try:
        from dlinfer_lmdeploy.testing.sim_e2e import prime_host_probes
    except ImportError:  # no LMDeploy adaptor installed: nothing imports transformers
        return
    prime_host_probes()


def pytest_unconfigure(config: pytest.Config) -> None:
    if not HARDWARE:
        npu_sim.uninstall()


@pytest.fixture
def ops() -> dict:
    """The ascend op table loaded against the simulator."""
    from dlinfer_ascend.ops import load_ops

    return load_ops()


@pytest.fixture
def fresh_runtime() -> Iterator[None]:
    """Start with no torch_npu imported and no patches applied; restore the simulator after."""
    npu_sim.uninstall()
    _reset_adaptor_state()
    npu_sim.install()
    yield
    npu_sim.uninstall()
    _reset_adaptor_state()
    npu_sim.install()


@pytest.fixture
def no_torch_npu(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A process where torch_npu cannot be imported."""
    npu_sim.uninstall()
    _reset_adaptor_state()
    monkeypatch.setitem(sys.modules, "torch_npu", None)
    yield
    monkeypatch.delitem(sys.modules, "torch_npu")
    _reset_adaptor_state()
    npu_sim.install()
