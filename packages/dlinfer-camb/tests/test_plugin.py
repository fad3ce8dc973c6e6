"""Declaration, availability probe, activation and actionable errors when the vendor libraries are missing."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import mlu_sim
from dlinfer_camb import plugin, runtime
from dlinfer_camb.ops import load_ops
from dlinfer_camb.runtime import CambRuntimeError


@pytest.fixture
def clean() -> None:
    mlu_sim.uninstall()
    runtime.reset()
    yield
    mlu_sim.uninstall()
    runtime.reset()


def test_declaring_imports_no_vendor_library() -> None:
    code = ("import sys, dlinfer_camb.plugin as p; b = p.dlinfer_backend(); b.is_available(); "
            "assert not any(m.startswith('torch_mlu') for m in sys.modules), sorted(sys.modules); "
            "assert not hasattr(__import__('torch'), 'mlu'); print(b.name, b.device_type, b.kv_layout)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "camb mlu HND"


def test_declaration() -> None:
    b = plugin.dlinfer_backend()
    assert (b.name, b.device_type, b.kv_layout, b.block_sizes, b.dist_backend) == ("camb", "mlu", "HND", (16,), "cncl")
    assert b.slot_dtype == torch.int32 and b.host_seqlens is False and b.graph is not None
    assert b.kv_block_shape(16, 8, 128) == (8, 16, 128)


def test_not_available_without_device(clean: None) -> None:
    mlu_sim.install()  # libraries "installed" (in sys.modules) but no /dev/cambricon_dev* here
    assert runtime.is_available() is False


def test_missing_torch_mlu_is_actionable(clean: None) -> None:
    with pytest.raises(CambRuntimeError, match=r"needs torch_mlu, which is not installed: install the Cambricon"):
        load_ops()


def test_missing_tmo_is_actionable(clean: None) -> None:
    mlu_sim.install(tmo=False)
    with pytest.raises(CambRuntimeError, match=r"needs torch_mlu_ops.*torch_mlu_ops \(Torch-MLU-Ops\) wheel"):
        load_ops()


def test_old_or_incomplete_tmo_is_actionable(clean: None) -> None:
    mlu_sim.install(tmo_version="1.2.0")
    with pytest.raises(CambRuntimeError, match=r"torch_mlu_ops 1.2.0 is too old"):
        load_ops()
    runtime.reset()
    mlu_sim.install(omit=("moe_gen_idx",))
    with pytest.raises(CambRuntimeError, match=r"lacks moe_gen_idx"):
        load_ops()


def test_activate_applies_gpu_migration(clean: None) -> None:
    mlu_sim.install()
    plugin.dlinfer_backend().activate()
    assert torch.mlu.migrated is True


def test_mlu_graph(clean: None) -> None:
    mlu_sim.install()
    graph = plugin.dlinfer_backend().graph
    g = graph.graph_factory()
    assert isinstance(g, torch.mlu.MLUGraph)
    with graph.capture(g, pool=graph.pool_factory()):
        pass
    assert g.calls == ["capture_begin", "capture_end"]
    assert graph.update_before_replay is None
