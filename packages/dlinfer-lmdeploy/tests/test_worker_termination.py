"""A worker ended by the executor (SIGTERM) whose cleanup then fails is not reported as a failed worker.

LMDeploy's worker loop installs a SIGTERM handler that raises ``SystemExit``; a worker stopped inside a shared-memory
send fails afterwards in its ``finally`` (``BufferError: cannot close exported pointers exist``). ``worker_main``
must treat that as the executor's shutdown: no "worker failed" log, no SIGUSR1 to the engine. An error without a
preceding SIGTERM is still a failure. The fake loops below do what LMDeploy's ``ExecutorProc._main_loop`` does; the
SIGTERM is delivered by calling the installed handler (no real signal reaches the test process).
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import pytest

from dlinfer_lmdeploy import workers

INSTALL_HANDLER = signal.signal


class _Loop:
    """A stand-in for LMDeploy's ExecutorProc: installs its SIGTERM handler, optionally receives SIGTERM mid-send,
    then its cleanup raises BufferError."""

    proc_id = 1

    def __init__(self, terminated: bool) -> None:
        self.terminated = terminated

    def _main_loop(self, **kwargs: Any) -> None:
        def handle_sigterm(signum: int, frame: Any) -> None:
            raise SystemExit(0)

        signal.signal(signal.SIGTERM, handle_sigterm)
        try:
            if self.terminated:
                signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # delivered inside a send
        except SystemExit:
            pass
        finally:
            raise BufferError("cannot close exported pointers exist")


@pytest.fixture
def worker_env(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """SIGUSR1 sends recorded instead of sent; the install of dlinfer into LMDeploy skipped; SIGTERM restored."""
    kills: list[tuple[int, int]] = []
    monkeypatch.setattr(workers.os, "kill", lambda pid, sig: kills.append((pid, sig)))
    import dlinfer_lmdeploy

    monkeypatch.setattr(dlinfer_lmdeploy, "install", lambda: None)
    previous = signal.getsignal(signal.SIGTERM)
    yield kills
    signal.signal(signal.SIGTERM, previous)


def test_cleanup_error_after_the_executors_sigterm_ends_the_worker_quietly(worker_env, caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger="dlinfer_lmdeploy"):
        workers.worker_main(_Loop(terminated=True))
    assert worker_env == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "ended by the executor" in caplog.text
    assert signal.signal is INSTALL_HANDLER  # the wrapper is undone


def test_cleanup_error_without_sigterm_is_a_worker_failure(worker_env, caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger="dlinfer_lmdeploy"), pytest.raises(BufferError):
        workers.worker_main(_Loop(terminated=False))
    assert [sig for _, sig in worker_env] == [signal.SIGUSR1]
    assert "LMDeploy worker 1 failed" in caplog.text
