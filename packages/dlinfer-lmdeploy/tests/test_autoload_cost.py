"""The ``.pth`` autoload runs at every interpreter start: it imports nothing heavy and still wires LMDeploy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("typing", "importlib.abc", "importlib.resources", "pathlib", "torch", "lmdeploy", "dlinfer")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    # -S: no site-packages .pth (whose installed copy of the module may be older than this checkout's)
    prelude = f"import sys; sys.path.insert(0, {str(SRC)!r}); import dlinfer_lmdeploy_autoload; "
    return subprocess.run([sys.executable, "-S", "-c", prelude + code], capture_output=True, text=True, timeout=240,
                          check=False)


def test_autoload_imports_nothing_heavy() -> None:
    out = _run(f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]


def test_autoload_wires_lmdeploy_when_imported() -> None:
    import site

    paths = [p for p in site.getsitepackages() if Path(p).is_dir()]
    # the site dirs (their .pth files: editable installs) after the autoload module from this checkout
    out = _run(f"import site; [site.addsitedir(p) for p in {paths!r}]; import lmdeploy; "
               "m = sys.modules.get('dlinfer_lmdeploy'); "
               "print(m is not None and m.installed())")
    assert out.returncode == 0 and out.stdout.strip().endswith("True"), out.stderr[-3000:]
