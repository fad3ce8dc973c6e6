"""Plugin declaration, discovery cost, runtime errors, SoC detection and device redirection."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import npu_sim
import pytest
import torch
from dlinfer.plugin import Backend, DeviceGraph
from npu_sim import device as sim_device

from dlinfer_ascend import plugin, runtime, soc
from dlinfer_ascend.runtime import AscendRuntimeError

SIM_SITE = os.path.join(os.path.dirname(npu_sim.__file__), "_site")


def test_declaration() -> None:
    b = plugin.dlinfer_backend()
    assert isinstance(b, Backend)
    assert (b.name, b.device_type, b.kv_layout, b.dist_backend) == ("ascend", "npu", "NHD", "hccl")
    assert b.host_seqlens is True and b.slot_dtype == torch.int32
    assert b.block_sizes == (16, 32, 64, 128, 256, 512)
    assert isinstance(b.graph, DeviceGraph) and b.activate is not None
    assert b.kv_block_shape(128, 8, 64) == (128, 8, 64)


def test_discovery_imports_no_vendor_module_and_inits_no_device() -> None:
    """In a clean interpreter where torch_npu *is* importable: declaring and probing import nothing."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(os.path.dirname(npu_sim.__file__))!r})
        sys.path.insert(0, {SIM_SITE!r})
        from dlinfer.registry import REGISTRY
        REGISTRY.discover()
        rec = REGISTRY.records["ascend"]
        import dlinfer_ascend.runtime as rt
        rt._device_nodes = lambda: True
        assert rec.backend.is_available() is True
        assert "torch_npu" not in sys.modules, "discovery imported torch_npu"
        import torch
        assert not hasattr(torch, "npu"), "discovery touched torch.npu"
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_is_available_needs_a_device_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_device_nodes", lambda: False)
    assert runtime.is_available() is False
    monkeypatch.setattr(runtime, "_device_nodes", lambda: True)
    assert runtime.is_available() is True  # the simulated torch_npu is findable


def test_missing_torch_npu_is_reported_at_load_not_import(no_torch_npu: None) -> None:
    b = plugin.dlinfer_backend()  # declaring still works
    assert b.is_available() is False
    with pytest.raises(AscendRuntimeError, match="torch_npu, which is not installed.*pip install torch-npu"):
        b.load_ops()
    with pytest.raises(AscendRuntimeError, match="CANN"):
        b.activate()


class _BrokenCann:
    """A meta-path finder whose torch_npu fails like a missing CANN toolkit does."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        if name != "torch_npu":
            return None
        import importlib.machinery

        return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec: object) -> None:
        return None

    def exec_module(self, module: object) -> None:
        raise ImportError("libascendcl.so: cannot open shared object file: No such file or directory")


def test_missing_cann_is_reported(fresh_runtime: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "meta_path", [_BrokenCann(), *sys.meta_path])
    with pytest.raises(AscendRuntimeError, match="libascendcl.*set_env.sh"):
        runtime.ensure_runtime()


def test_version_mismatch_is_reported(fresh_runtime: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch_npu

    monkeypatch.setattr(torch_npu, "__version__", "2.1.0.post6")
    with pytest.raises(AscendRuntimeError, match="does not match torch"):
        runtime.ensure_runtime()


@pytest.mark.parametrize(("error", "hint"), [
    ("libatb.so: cannot open shared object file", "nnal/atb/set_env.sh"),
    ("undefined symbol: _ZN3atb9Operation", "versions do not match"),
])
def test_missing_or_mismatched_atb_is_reported(fresh_runtime: None, monkeypatch: pytest.MonkeyPatch,
                                               error: str, hint: str) -> None:
    def fail(path: str) -> None:
        raise OSError(error)

    monkeypatch.setattr(torch.ops, "load_library", fail)
    with pytest.raises(AscendRuntimeError, match=hint):
        runtime.ensure_runtime()


@pytest.mark.parametrize(("version", "family"), [(223, "A2"), (225, "A2"), (250, "A3"), (255, "A3"),
                                                 (202, "310P"), (104, "910"), (999, "unknown")])
def test_soc_classification(version: int, family: str) -> None:
    assert soc.classify(version).family == family


def test_soc_info_after_activation(fresh_runtime: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sim_device.STATE, "soc_version", 253)
    info = plugin.dlinfer_backend().extras["soc_info"]()
    assert info.is_a3 and not info.is_a2 and info.version == 253


def test_cuda_redirection_only_when_ascend_is_activated(fresh_runtime: None) -> None:
    import dlinfer.dispatch as dispatch

    cuda_before, compile_before = torch.cuda, torch.compile
    try:
        dispatch.activate("reference")
        assert torch.cuda is cuda_before and "torch_npu" not in sys.modules
        plugin.dlinfer_backend().load_ops()  # loading ops (conformance kit) patches nothing
        assert torch.cuda is cuda_before
        assert "torch_npu.contrib.transfer_to_npu" not in sys.modules
        dispatch.activate("ascend")
        assert torch.cuda is torch.npu  # redirected through transfer_to_npu
        assert torch.compile is compile_before  # which replaces torch.compile; restored
        import torch.utils._triton as tr

        assert tr.has_triton() is False
    finally:
        dispatch.deactivate()
    # the fixture undoes the (process-global) redirection
