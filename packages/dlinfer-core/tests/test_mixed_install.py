"""dlinfer-core refuses to import when DeepLink's dlinfer files share its ``dlinfer/`` package.

A temp site dir holds a copy of dlinfer-core's package plus what DeepLink's dlinfer-ascend 0.2.7 wheel installs
(``dlinfer/framework``, ``dlinfer/vendor``, ``dlinfer/ops/__init__.py`` and its dist-info RECORD); a fresh
interpreter with that dir first on the path imports ``dlinfer``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dlinfer

SRC = Path(dlinfer.__file__).parent


def _site(tmp: Path, upstream: bool) -> Path:
    site = tmp / "site"
    shutil.copytree(SRC, site / "dlinfer", ignore=shutil.ignore_patterns("__pycache__"))
    if upstream:
        files = ["dlinfer/framework/__init__.py", "dlinfer/vendor/__init__.py", "dlinfer/ops/__init__.py"]
        for f in files:
            (site / f).parent.mkdir(parents=True, exist_ok=True)
            (site / f).write_text("def rms_norm(hidden_states, weight, epsilon):\n    raise AssertionError\n")
        info = site / "dlinfer_ascend-0.2.7.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dlinfer-ascend\nVersion: 0.2.7\n")
        (info / "RECORD").write_text("".join(f"{f},,\n" for f in ["dlinfer/__init__.py", *files]))
    return site


def _import(site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = "import dlinfer, sys; print(dlinfer.__file__)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_mixed_install_fails_naming_what_to_uninstall(tmp_path: Path) -> None:
    out = _import(_site(tmp_path, upstream=True))
    assert out.returncode != 0
    err = out.stderr
    assert "MixedInstallError" in err and "DeepLink's dlinfer" in err
    assert "framework/" in err and "vendor/" in err and "ops/__init__.py" in err
    assert "installed by dlinfer-ascend 0.2.7" in err
    assert "pip uninstall -y dlinfer-ascend dlinfer-core" in err


def test_clean_copy_imports(tmp_path: Path) -> None:
    site = _site(tmp_path, upstream=False)
    out = _import(site)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(site / "dlinfer" / "__init__.py")  # the copy was the one imported
