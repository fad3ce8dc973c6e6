"""Runs plugin scenarios in one fresh interpreter (started by the tests with PYTHONPATH=<plugin dirs>).

Usage: ``python harness.py scenarios.json``. Each scenario is ``{"env": {...}, "path": [...], "code": "..."}``;
before it runs, the environment is patched, extra ``sys.path`` entries are appended, the registry is
rediscovered and the dispatch state reset. The code may set ``result`` (JSON-serialisable). Printed as one
JSON object on the last line of stdout: scenario name -> {"result", "error", "error_type", "warnings"}.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import torch

import dlinfer
import dlinfer.ops
from dlinfer import dispatch
from dlinfer.registry import REGISTRY


def records() -> dict:
    """The registry as plain data: backends and load errors."""
    return {
        "backends": {
            name: {"plugin": r.plugin, "dist": r.dist, "version": r.version, "device": r.backend.device_type}
            for name, r in REGISTRY.records.items()
        },
        "errors": [{"plugin": r.plugin, "dist": r.dist, "version": r.version, "error": r.error}
                   for r in REGISTRY.load_errors],
    }


def main() -> None:
    with open(sys.argv[1]) as f:
        scenarios = json.load(f)
    base_env, base_path = dict(os.environ), list(sys.path)
    out = {}
    for name, sc in scenarios.items():
        for key, value in sc.get("env", {}).items():
            if key == "DLINFER_DISABLE_PLUGINS" and os.environ.get(key):
                value = os.environ[key] + "," + value  # keep the foreign plugins blocked
            os.environ[key] = value
        sys.path.extend(sc.get("path", []))
        res: dict = {"result": None, "error": None, "error_type": None}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                REGISTRY.discover(force=True)
                dispatch.deactivate()
                dispatch.STATE.warned.clear()  # each scenario sees its own one-time fallback warnings
                ns = {"dlinfer": dlinfer, "ops": dlinfer.ops, "dispatch": dispatch, "REGISTRY": REGISTRY,
                      "torch": torch, "records": records, "result": None}
                exec(sc["code"], ns)  # noqa: S102 - test scenarios
                res["result"] = ns["result"]
            except Exception as exc:  # noqa: BLE001 - reported to the test
                res["error"], res["error_type"] = str(exc), type(exc).__name__
        res["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
        out[name] = res
        os.environ.clear()
        os.environ.update(base_env)
        sys.path[:] = base_path
    print(json.dumps(out))


if __name__ == "__main__":
    main()
