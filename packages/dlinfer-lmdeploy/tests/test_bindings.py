"""The patch inventory covers every LMDeploy module that binds a patched function by value.

``from lmdeploy.utils import get_max_batch_size`` copies the function into the importing module;
a module imported before the adaptor patches keeps the original (``lmdeploy serve api_server
--device cpu`` asserted in ``get_max_batch_size`` that way). The source scan finds every such
module, and a fresh interpreter that imports LMDeploy's CLI the way the ``lmdeploy`` script does
must hold no unpatched original anywhere.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from dlinfer_lmdeploy import inventory


@pytest.mark.parametrize("patch", inventory.PATCHES, ids=lambda p: p.name)
def test_every_by_name_binding_is_listed(patch: inventory.Patch) -> None:
    assert inventory.unlisted_bindings(patch) == []


def test_scan_finds_the_cli_serve_binding() -> None:
    """The scan is not vacuous: without its also_bound_in list the max-batch-size patch misses cli.serve."""
    patch = next(p for p in inventory.PATCHES if p.name == "max-batch-size")
    bare = dataclasses.replace(patch, also_bound_in=(), bound_unpatched=())
    missing = inventory.unlisted_bindings(bare)
    assert "lmdeploy.cli.serve" in missing and "lmdeploy.pytorch.engine.config_builder" in missing
    problems = inventory.probe_all(bindings=True)
    assert problems == [], problems


_CLI_ORDER = """
import lmdeploy.cli.entrypoint  # what the `lmdeploy` console script imports first
import lmdeploy.cli.serve, lmdeploy.vl.engine, lmdeploy.pytorch.engine.config_builder
import dlinfer_lmdeploy
from dlinfer_lmdeploy import inventory
assert dlinfer_lmdeploy.installed()
stale = inventory.stale_bindings()
assert stale == [], stale
print("max_batch_size", lmdeploy.cli.serve.get_max_batch_size("cpu"))
"""


def test_no_stale_binding_after_the_cli_imports() -> None:
    env = {**os.environ, "DLINFER_LMDEPLOY_AUTOLOAD": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _CLI_ORDER], env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    size = int(out.stdout.split("max_batch_size")[1].split()[0])
    assert size > 0
