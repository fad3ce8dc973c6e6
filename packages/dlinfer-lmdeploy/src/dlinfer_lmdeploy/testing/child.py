"""Run an engine in a child process under a deadline: tp>1 tests, GPU scripts and benchmarks.

A tp>1 engine spawns worker processes; a hang anywhere (a collective waiting for a dead rank, a worker that never
exits) must fail the caller fast and say where every process was. :func:`run_module` runs ``python -m MODULE ARGV``
in its own session with ``PYTHONFAULTHANDLER=1`` and NVLink multicast off, parses the ``RESULT <json>`` line the
child prints, and on timeout SIGABRTs every descendant (each prints the Python stacks of all its threads) before it
kills the process group. :func:`emit` prints the result; with ``DLINFER_HARD_EXIT=1`` it then ends the child at
once without closing the engine (the parent kills what is left): a workaround for engines whose shutdown hangs
after the work is done (LMDeploy's own ``cuda`` at tp>1 with the mp executor: ``pipe.close()`` joins workers kept
alive by Inductor compile workers).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

STACK_GRACE_S = 5.0
"""Seconds the processes get to print their Python stacks (faulthandler) before they are killed."""

MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
"""NVLink multicast off in every process of the engine (the lent multi-GPU machines require it)."""

HARD_EXIT_ENV = "DLINFER_HARD_EXIT"


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


def run_command(
    cmd: Sequence[str], *, deadline_s: float, env: Mapping[str, str] | None = None, what: str = ""
) -> tuple[int, str, str]:
    """``cmd`` in a child process (its own session) under a deadline, NVLink multicast off; ``(rc, stdout, stderr)``.

    Raises :class:`GenerationTimeout` (stacks of every process in the message) on timeout. Whatever the child leaves
    in its process group (workers after a hard exit) is killed when it ends.
    """
    what = what or " ".join(cmd)[:200]
    child_env = {**(os.environ if env is None else env), **MULTICAST_OFF, "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=child_env)
    try:
        out, err = proc.communicate(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        dump_stacks_and_kill(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise GenerationTimeout(
            f"{what} did not finish within {deadline_s:.0f}s; stdout tail:\n{out[-3000:]}\n"
            f"stderr tail (stacks of every process):\n{err[-12000:]}"
        ) from None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out, err


_EXCEPTION_LINE = re.compile(r"^\s*(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception): \S.*$", re.MULTILINE)


def first_error(*texts: str) -> str | None:
    """The first ``SomeError: message`` line (a traceback's last line) of the first text that has one: in an engine
    whose worker fails, the others are torn down and fail after it, so the first error printed is the cause and
    the tail of the output often holds only the later ones."""
    for text in texts:
        found = _EXCEPTION_LINE.search(text)
        if found:
            return found.group(0).strip()
    return None


def run_module(
    module: str,
    argv: Sequence[str],
    *,
    deadline_s: float,
    env: Mapping[str, str] | None = None,
    what: str = "",
) -> dict[str, Any]:
    """``python -m module *argv`` through :func:`run_command`; return its RESULT json.

    Raises :class:`GenerationTimeout` on timeout, ``RuntimeError`` with the first error printed
    (:func:`first_error`), the stdout tail (LMDeploy logs there, workers' errors included) and the stderr tail on a
    non-zero exit or no RESULT.
    """
    what = what or f"{module} {' '.join(argv)[:200]}"
    rc, out, err = run_command([sys.executable, "-m", module, *argv], deadline_s=deadline_s, env=env, what=what)
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if rc != 0 or not lines:
        raise RuntimeError(f"{what} failed: rc={rc}\nfirst error: {first_error(out, err)}\nstdout tail:\n"
                           f"{out[-4000:]}\nstderr tail:\n{err[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def emit(result: Any) -> None:
    """Print ``RESULT <json>``; with ``DLINFER_HARD_EXIT=1`` end the process at once (no engine shutdown)."""
    print("RESULT " + json.dumps(result), flush=True)
    if os.environ.get(HARD_EXIT_ENV) == "1":
        sys.stderr.flush()
        os._exit(0)
