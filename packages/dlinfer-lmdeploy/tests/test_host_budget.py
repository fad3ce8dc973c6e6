"""The CPU device offers LMDeploy a bounded host budget divided by tp; an unavailable device says why."""

from __future__ import annotations

import types

import psutil
import pytest

from dlinfer_lmdeploy import cpu_device

GIB = 1 << 30


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Set the host's available memory and the tp world size seen by the CPU device."""

    def set_host(available: int, world: int = 1, total: int = 64 * GIB) -> None:
        vm = types.SimpleNamespace(available=available, total=total)
        monkeypatch.setattr(psutil, "virtual_memory", lambda: vm)
        monkeypatch.setattr(cpu_device, "_world_size", lambda: world)

    monkeypatch.delenv(cpu_device.HOST_BUDGET_ENV, raising=False)
    return set_host


@pytest.mark.parametrize("world", [1, 2, 4])
def test_default_budget_is_bounded_and_split_over_tp(host, world: int) -> None:  # type: ignore[no-untyped-def]
    host(48 * GIB, world)
    free, total = cpu_device._mem_get_info()
    assert total == 64 * GIB
    assert free == (2 * GIB) // world  # capped at 2 GiB, not 80 % of 48 GiB per worker
    host(GIB, world)
    assert cpu_device._mem_get_info()[0] == (GIB // 4) // world  # a quarter of what is available


def test_env_budget(host, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(cpu_device.HOST_BUDGET_ENV, "6")
    host(48 * GIB, 2)
    assert cpu_device._mem_get_info()[0] == 3 * GIB
    host(4 * GIB, 1)
    assert cpu_device._mem_get_info()[0] == 4 * GIB  # never more than is available
    monkeypatch.setenv(cpu_device.HOST_BUDGET_ENV, "-1")
    with pytest.raises(ValueError, match="DLINFER_CPU_MEMORY_GIB must be a positive number of GiB, got '-1'"):
        cpu_device._mem_get_info()


def test_world_size_without_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    assert cpu_device._world_size() == 1


def test_unavailable_device_says_why() -> None:
    """--device ascend on a host without torch_npu: the DeviceError carries the plugin's own reason."""
    import importlib.util

    from dlinfer_lmdeploy import devices

    if "ascend" not in devices.devices() or importlib.util.find_spec("torch_npu") is not None:
        pytest.skip("needs dlinfer-ascend installed and torch_npu absent")
    with pytest.raises(devices.DeviceError, match=r"is not available on this machine: .*needs torch_npu"):
        devices.activate("ascend")
