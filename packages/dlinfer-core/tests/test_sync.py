"""Timings (``dlinfer bench``) and kit checks wait for the device on every supported torch, not only >= 2.6."""

from __future__ import annotations

import types

import pytest
import torch

from dlinfer import _sync


def _counter() -> tuple[types.SimpleNamespace, list[str]]:
    calls: list[str] = []
    return types.SimpleNamespace(synchronize=lambda: calls.append("sync")), calls


def test_torch_accelerator_is_used_where_it_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    accel, calls = _counter()
    monkeypatch.setattr(torch, "accelerator", accel, raising=False)
    _sync.synchronize(torch.device("xpu"))
    assert calls == ["sync"]


def test_device_module_before_torch_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch 2.4/2.5 (no torch.accelerator): the device type's module, e.g. torch_mlu's torch.mlu."""
    monkeypatch.delattr(torch, "accelerator", raising=False)
    module, calls = _counter()
    monkeypatch.setattr(torch, "xpu", module, raising=False)
    _sync.synchronize(torch.device("xpu"))
    assert calls == ["sync"]


def test_cpu_waits_for_nothing_and_an_unknown_device_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch, "accelerator", raising=False)
    _sync.synchronize(torch.device("cpu"))
    monkeypatch.setattr(torch, "xpu", types.SimpleNamespace(), raising=False)
    with pytest.raises(RuntimeError, match="cannot synchronize device type 'xpu'"):
        _sync.synchronize(torch.device("xpu"))


def test_bench_and_kit_use_it() -> None:
    from dlinfer import bench
    from dlinfer.testing import runner

    assert bench._sync is _sync.synchronize and runner.synchronize is _sync.synchronize
