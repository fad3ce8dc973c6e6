"""Make source checkouts discoverable as installed distributions without pip (for bare GPU images).

    python packages/dlinfer-maca/tools/devenv.py SITE_DIR packages/dlinfer-core packages/dlinfer-maca
    export PYTHONPATH=SITE_DIR:packages/dlinfer-core/src:packages/dlinfer-maca/src

Writes ``<name>-<version>.dist-info`` (METADATA + entry_points.txt from each pyproject.toml)
into SITE_DIR, so ``importlib.metadata`` finds the ``dlinfer.backends`` and ``pytest11`` entry
points while the code itself is imported from ``src/`` via PYTHONPATH. Used where hatchling's
editable install is unavailable (no network, no build backend on the device image).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib


def _version(pkg: Path, pyproject: dict) -> str:
    """``project.version``, or for ``dynamic = ["version"]`` the ``__version__`` in hatch's version path."""
    proj = pyproject["project"]
    if "version" in proj:
        return proj["version"]
    source = (pkg / pyproject["tool"]["hatch"]["version"]["path"]).read_text()
    found = re.search(r"^__version__\s*=\s*[\"']([^\"']+)[\"']", source, re.M)
    if found is None:
        raise SystemExit(f"devenv: no __version__ in {pkg}'s hatch version path")
    return found.group(1)


def write_stub(site: Path, pkg: Path) -> None:
    pyproject = tomllib.loads((pkg / "pyproject.toml").read_text())
    proj = pyproject["project"]
    name, version = proj["name"], _version(pkg, pyproject)
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, eps in proj.get("entry-points", {}).items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in eps.items()]
        lines.append("")
    for group, key in (("console_scripts", "scripts"),):
        if proj.get(key):
            lines.append(f"[{group}]")
            lines += [f"{k} = {v}" for k, v in proj[key].items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


def main() -> None:
    site = Path(sys.argv[1])
    for pkg in sys.argv[2:]:
        write_stub(site, Path(pkg))


if __name__ == "__main__":
    main()
