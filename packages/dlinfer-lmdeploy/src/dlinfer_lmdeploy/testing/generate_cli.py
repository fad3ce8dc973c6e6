"""Greedy generation through lmdeploy.pipeline in a separate process (used for tp>1 tests).

    python -m dlinfer_lmdeploy.testing.generate_cli MODEL N_NEW '{"tp": 2}' PROMPT [PROMPT ...]

Prints one JSON line: {"input_ids": [...], "output_ids": [...]}. :func:`run` runs it in a child process under a
deadline (tp>1 tests and GPU scripts).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dlinfer_lmdeploy.testing.child import GenerationTimeout, emit, run_module

__all__ = ["GenerationTimeout", "main", "run"]


def run(
    model: str | Path,
    n_new: int,
    overrides: Mapping[str, Any],
    prompts: Sequence[str],
    *,
    deadline_s: float,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run this CLI in a child process under a deadline (:func:`dlinfer_lmdeploy.testing.child.run_module`: stacks
    of every process on timeout); return its RESULT ``{"input_ids": [[int]], "output_ids": [[int]]}``."""
    argv = [str(model), str(n_new), json.dumps(dict(overrides)), *prompts]
    return run_module("dlinfer_lmdeploy.testing.generate_cli", argv, deadline_s=deadline_s, env=env,
                      what=f"generation {dict(overrides)}")


def main(argv: list[str]) -> int:
    import dlinfer_lmdeploy  # noqa: F401  (explicit wiring, as in a checkout without the autoload .pth)
    from dlinfer_lmdeploy.testing import runner

    model, n_new, overrides, prompts = argv[0], int(argv[1]), json.loads(argv[2]), argv[3:]
    device = overrides.pop("device_type", "cpu")
    with runner.open_pipeline(model, runner.engine_config(device, **overrides)) as pipe:
        ids = [runner.encode(pipe, p) for p in prompts]
        out = runner.generate(pipe, prompts, n_new)
        emit({"input_ids": ids, "output_ids": out})  # DLINFER_HARD_EXIT=1: ends here, before the engine closes
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
