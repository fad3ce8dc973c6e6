"""LMDeploy accepts device_type="ascend" through this plugin (simulator installed; no engine is built)."""

from __future__ import annotations

import pytest

pytest.importorskip("lmdeploy")
dlinfer_lmdeploy = pytest.importorskip("dlinfer_lmdeploy")


def test_lmdeploy_accepts_ascend() -> None:
    dlinfer_lmdeploy.install()
    assert "ascend" in dlinfer_lmdeploy.lmdeploy_devices()
    from dlinfer_lmdeploy import devices
    from lmdeploy import PytorchEngineConfig

    assert devices.get("ascend").backend.device_type == "npu"
    cfg = PytorchEngineConfig(device_type="ascend", dtype="bfloat16")
    assert cfg.device_type == "ascend" and cfg.block_size in (16, 32, 64, 128, 256, 512)
    with pytest.raises(ValueError, match="block_size"):
        PytorchEngineConfig(device_type="ascend", block_size=24)
    with pytest.raises(ValueError, match="float32"):
        PytorchEngineConfig(device_type="ascend", dtype="float32")
