"""Greedy generation through lmdeploy.pipeline in a separate process (used for tp>1 tests).

    python -m dlinfer_lmdeploy.testing.generate_cli MODEL N_NEW '{"tp": 2}' PROMPT [PROMPT ...]

Prints one JSON line: {"input_ids": [...], "output_ids": [...]}.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    import dlinfer_lmdeploy  # noqa: F401  (explicit wiring, as in a checkout without the autoload .pth)
    from dlinfer_lmdeploy.testing import runner

    model, n_new, overrides, prompts = argv[0], int(argv[1]), json.loads(argv[2]), argv[3:]
    with runner.open_pipeline(model, runner.engine_config(**overrides)) as pipe:
        ids = [runner.encode(pipe, p) for p in prompts]
        out = runner.generate(pipe, prompts, n_new)
    print("RESULT " + json.dumps({"input_ids": ids, "output_ids": out}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
