"""tools/devenv.py (the GPU scripts' way to expose the source checkouts' entry points without pip) on the
real pyproject files: the version is dynamic (hatch reads ``__version__``), and the written dist-info must let
``importlib.metadata`` find the ``dlinfer.backends`` entry point the registry discovers."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import PathDistribution
from pathlib import Path

import dlinfer_maca

ROOT = Path(__file__).resolve().parents[3]


def test_devenv_writes_discoverable_dist_info(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "packages/dlinfer-maca/tools/devenv.py"), str(tmp_path),
                    str(ROOT / "packages/dlinfer-core"), str(ROOT / "packages/dlinfer-maca")], check=True)
    infos = {p.name.split("-")[0]: PathDistribution(p) for p in tmp_path.glob("*.dist-info")}
    assert sorted(infos) == ["dlinfer_core", "dlinfer_maca"]
    maca = infos["dlinfer_maca"]
    assert maca.version == dlinfer_maca.__version__
    backends = {ep.name: ep.value for ep in maca.entry_points if ep.group == "dlinfer.backends"}
    assert backends == {"maca": "dlinfer_maca.plugin"}
