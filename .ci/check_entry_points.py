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
    return 1 if failed or REGISTRY.load_errors else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
