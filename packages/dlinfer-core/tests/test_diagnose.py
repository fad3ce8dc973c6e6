"""``dlinfer info`` says why a backend is unavailable; ``dlinfer info --collect-env`` prints a bug report's facts."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import subprocess
import sys
import types

import pytest
import torch

from dlinfer.diagnose import collect_env, unavailable_reason
from dlinfer.errors import PluginError


class _Registry:
    """The two things unavailable_reason reads from a registry: the records and load_ops."""

    def __init__(self, device_type: str, load_error: str | None = None, probe_error: str | None = None) -> None:
        def is_available() -> bool:
            """the ghost card answers on /dev/ghost0"""
            return False

        backend = types.SimpleNamespace(device_type=device_type, is_available=is_available)
        self.records = {"ghost": types.SimpleNamespace(backend=backend, probe_error=probe_error)}
        self.load_error = load_error

    def load_ops(self, name: str) -> dict:
        if self.load_error:
            raise PluginError("ghost", "ghost-dist", "9.9", self.load_error)
        return {}


def test_reason_is_the_plugin_load_error() -> None:
    why = "load_ops() failed: GhostError: ghost-sdk is not installed: pip install ghost-sdk"
    assert unavailable_reason(_Registry("ghost", load_error=why), "ghost") == why


def test_reason_from_the_probe_docstring_and_probe_error() -> None:
    assert unavailable_reason(_Registry("ghost"), "ghost") == (
        "is_available() returned False (it checks: the ghost card answers on /dev/ghost0)"
    )
    assert unavailable_reason(_Registry("ghost", probe_error="is_available() raised OSError: x"), "ghost") == (
        "is_available() raised OSError: x"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_reason_for_a_missing_cuda_device() -> None:
    why = unavailable_reason(_Registry("cuda", load_error="never reached"), "ghost")
    assert why.startswith("no 'cuda' device: torch.cuda.is_available() is False")
    assert ("CPU build" in why) == (torch.version.cuda is None and torch.version.hip is None)


def test_collect_env_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLINFER_DISABLE_PLUGINS", "no_such_plugin_xyz")
    info = collect_env()
    assert info["system"]["python"].split()[0] == platform.python_version()
    assert info["torch"]["torch"] == torch.__version__
    assert info["dlinfer distributions"]["dlinfer-core"] == md.version("dlinfer-core")
    assert "DLINFER_DISABLE_PLUGINS" in info["environment"]


def test_info_cli_prints_reasons_and_env() -> None:
    env = {**os.environ, "TORCH_DEVICE_BACKEND_AUTOLOAD": "0", "DLINFER_DISABLE_PLUGINS": "no_such_plugin_xyz"}
    out = subprocess.run([sys.executable, "-m", "dlinfer", "info", "--collect-env"], env=env, capture_output=True,
                         text=True, timeout=180, check=False)
    assert "## dlinfer distributions" in out.stdout and "no_such_plugin_xyz" in out.stdout, out.stderr[-2000:]
    table = out.stdout.split("\nbackend ", 1)[1].split("\n\n", 1)[0]  # the backends table, not the sections after it
    rows = {line.split()[0]: line for line in table.splitlines()[1:] if " no " in line}
    assert rows, table  # the kit's test hosts lack at least one vendor device (none has all three)
    if "ascend" in rows and importlib_missing("torch_npu"):
        assert "NOT AVAILABLE" in rows["ascend"] and "needs torch_npu" in rows["ascend"]
    for name, line in rows.items():
        assert "NOT AVAILABLE: " in line, f"{name}: unavailable without a reason: {line}"


def importlib_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None
