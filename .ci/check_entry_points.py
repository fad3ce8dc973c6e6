"""Checks, inside a venv holding only the built wheels, that every dlinfer.backends entry point resolves."""

from __future__ import annotations

import importlib.metadata as md
import sys

EXPECTED = {"dlinfer-maca": "maca", "dlinfer-ascend": "ascend", "dlinfer-camb": "camb"}


def main(packages: list[str]) -> int:
    eps = {ep.name: ep for ep in md.entry_points(group="dlinfer.backends")}
    failed = 0
    for dist in packages:
        version = md.version(dist)
        name = EXPECTED.get(dist)
        if name is None:
            print(f"{dist} {version}: installed (no backend entry point expected)")
            continue
        ep = eps.get(name)
        if ep is None:
            print(f"{dist} {version}: MISSING entry point '{name}' in group dlinfer.backends")
            failed += 1
            continue
        obj = ep.load()
        backend = obj.dlinfer_backend()
        print(f"{dist} {version}: entry point {name} -> {ep.value} declares backend '{backend.name}' "
              f"on '{backend.device_type}'")
    from dlinfer.registry import REGISTRY

    REGISTRY.discover()
    print("discovered backends:", ", ".join(REGISTRY.records), "| load errors:", len(REGISTRY.load_errors))
    for rec in REGISTRY.load_errors:
        print(f"  {rec.plugin} ({rec.dist} {rec.version}): {rec.error}")
    import importlib.util

    for module in ("dlinfer", "dlinfer_maca", "dlinfer_ascend", "dlinfer_camb", "dlinfer_lmdeploy"):
        if importlib.util.find_spec(module) is None:
            print(f"MISSING import package {module}")
            failed += 1
    failed += _check_readme_requirements_command()
    return 1 if failed or REGISTRY.load_errors else 0


def _check_readme_requirements_command() -> int:
    """The root README's install step locates LMDeploy's requirements inside the installed dlinfer-lmdeploy wheel
    (before LMDeploy's dependencies exist, so without importing the package): run that command's Python here, in a
    venv holding only the wheels, and compare the file it names with the source tree's."""
    import re
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    found = re.search(r"pip install -r \"\$\(python -c '([^']+)'\)/(requirements-lmdeploy\.txt)\"", readme)
    if found is None:
        print("README.md: no 'pip install -r \"$(python -c ...)/requirements-lmdeploy.txt\"' install step found")
        return 1
    code, name = found.groups()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    shipped = Path(out.stdout.strip()) / name
    if out.returncode != 0 or not shipped.is_file():
        print(f"README requirements step: {code!r} -> {out.stdout.strip()!r} (rc {out.returncode}); "
              f"{shipped} missing. {out.stderr.strip()[-400:]}")
        return 1
    source = root / "packages" / "dlinfer-lmdeploy" / name
    if shipped.read_text() != source.read_text():
        print(f"README requirements step: {shipped} differs from {source}")
        return 1
    print(f"README requirements step resolves to {shipped} (same as the source tree's)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
