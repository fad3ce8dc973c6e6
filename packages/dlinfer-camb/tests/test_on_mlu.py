"""Hardware mode must test the real vendor libraries, never the simulator.

On an MLU machine (``DLINFER_HARDWARE=1``, ``nox -s tests-camb``) the first test checks that torch_mlu and
torch_mlu_ops come from the installed packages, not from tests/mlu_sim. The second test runs anywhere: it
collects this directory in hardware mode in a fresh interpreter and checks that the simulator is neither
imported nor collected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
HARDWARE = os.environ.get("DLINFER_HARDWARE") == "1"


@pytest.mark.skipif(not HARDWARE, reason="needs a Cambricon MLU (DLINFER_HARDWARE=1)")
def test_vendor_libraries_are_real_not_the_simulator() -> None:
    import torch_mlu
    import torch_mlu_ops

    for mod in (torch_mlu, torch_mlu_ops):
        path = Path(mod.__file__).resolve()
        assert TESTS not in path.parents, f"{mod.__name__} is loaded from the test simulator: {path}"
    assert "mlu_sim" not in sys.modules


_COLLECT = """
import json, sys, pytest
rc = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "-p", "no:dlinfer", sys.argv[1]])
print(json.dumps({"rc": int(rc), "sim": sorted(m for m in sys.modules if m.split(".")[0] == "mlu_sim")}))
"""


@pytest.mark.skipif(HARDWARE, reason="checks the hardware mode from a CPU run")
def test_hardware_mode_never_imports_or_collects_the_simulator(tmp_path: Path) -> None:
    env = {**os.environ, "DLINFER_HARDWARE": "1"}
    proc = subprocess.run([sys.executable, "-c", _COLLECT, str(TESTS)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300, check=False)
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr
    summary = json.loads(lines[-1])
    assert summary == {"rc": 0, "sim": []}, proc.stdout + proc.stderr
    collected = {Path(line.split("::")[0]).name for line in lines if "::" in line}
    assert collected == {"test_on_mlu.py"}, collected
