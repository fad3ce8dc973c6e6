"""Greedy generation through lmdeploy.pipeline in a separate process (used for tp>1 tests).

    python -m dlinfer_lmdeploy.testing.generate_cli MODEL N_NEW '{"tp": 2}' PROMPT [PROMPT ...]

Prints one JSON line: {"input_ids": [...], "output_ids": [...]}. :func:`run` runs it in a child process under a
deadline (tp>1 tests and GPU scripts).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

STACK_GRACE_S = 5.0
"""Seconds the processes get to print their Python stacks (faulthandler) before they are killed."""


class GenerationTimeout(TimeoutError):
    """The child did not finish within its deadline; the message holds the stacks of every process (stderr tail)."""


def dump_stacks_and_kill(pid: int) -> None:
    """SIGABRT ``pid`` and all its descendants (deepest first: with ``PYTHONFAULTHANDLER=1`` each prints the
    Python stacks of all its threads), wait :data:`STACK_GRACE_S`, then SIGKILL whatever is left."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [*reversed(root.children(recursive=True)), root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGABRT)
    time.sleep(STACK_GRACE_S)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def run(
    model: str | Path,
    n_new: int,
    overrides: Mapping[str, Any],
    prompts: Sequence[str],
    *,
    deadline_s: float,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run this CLI in a child process (its own session) under a deadline; return its RESULT
    (``{"input_ids": [[int]], "output_ids": [[int]]}``).

    Every process of the engine runs with ``PYTHONFAULTHANDLER=1``: on timeout all of them (engine, tp workers)
    print their Python stacks before they are killed, and :class:`GenerationTimeout` carries the stderr tail.
    A non-zero exit or a missing RESULT raises ``RuntimeError`` with the stderr tail.
    """
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONFAULTHANDLER"] = "1"
    cmd = [sys.executable, "-m", "dlinfer_lmdeploy.testing.generate_cli", str(model), str(n_new),
           json.dumps(dict(overrides)), *prompts]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=child_env)
    try:
        out, err = proc.communicate(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        dump_stacks_and_kill(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise GenerationTimeout(
            f"generation {dict(overrides)} did not finish within {deadline_s:.0f}s; stdout tail:\n{out[-3000:]}\n"
            f"stderr tail (stacks of every process):\n{err[-12000:]}"
        ) from None
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:  # LMDeploy logs (workers' errors included) to stdout
        raise RuntimeError(f"generation {dict(overrides)} failed: rc={proc.returncode}\nstdout tail:\n{out[-4000:]}"
                           f"\nstderr tail:\n{err[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


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
