"""Engine shutdown after a worker died inside LMDeploy's shared-buffer notifier (the tp=2 CI hang at exit).

LMDeploy's workers end on SIGTERM by raising ``SystemExit`` wherever they are; one stopped inside ``Event.set``
keeps the event's lock, one killed while waiting stays counted as a sleeper. The engine process waits for replies in
default-executor threads (``Notifier.wait_async``), which the interpreter joins at exit; LMDeploy's
``notifier.close()`` cannot wake them (it blocks on the dead worker's lock or sleeper). ``_close_buffers`` must wake
them, so the engine process exits. Each scenario runs in a child interpreter under a deadline: a hang fails the
test instead of the job.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("lmdeploy")

CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys, time
    import multiprocessing as mp

    def die_holding_lock(event, ready):  # a worker stopped inside Event.set: the lock is never released
        event._cond._lock.acquire()
        os.kill(os.getpid(), signal.SIGKILL)

    def wait_to_be_killed(event, ready):  # a worker killed while waiting: a sleeper that never wakes
        ready.set()
        event.wait()

    if __name__ == "__main__":  # the spawned workers import only what is above
        from lmdeploy.pytorch.engine.executor.mp_executor import Notifier, SharedBuffer
        from dlinfer_lmdeploy import workers
        scenario = sys.argv[1]
        ctx = mp.get_context("spawn")
        notifier = Notifier(1, ctx)
        buf = SharedBuffer(-1, notifier)
        loop = asyncio.new_event_loop()
        # the engine's waiters: default-executor threads, joined by the interpreter at exit
        waits = [loop.run_in_executor(None, notifier.events[i].wait) for i in range(3)]
        time.sleep(0.5)
        target = die_holding_lock if scenario == "lock" else wait_to_be_killed
        ready = ctx.Event()
        worker = ctx.Process(target=target, args=(notifier.events[1], ready), daemon=True)
        worker.start()
        if scenario == "sleeper":
            assert ready.wait(120)
            time.sleep(1.0)
            worker.kill()
        worker.join()
        print("worker exit", worker.exitcode, flush=True)
        t0 = time.monotonic()
        workers._close_buffers([buf])
        woken = loop.run_until_complete(asyncio.wait_for(asyncio.gather(*waits), 10))
        print("WOKEN", woken, "%.1fs" % (time.monotonic() - t0), flush=True)
    """
)


@pytest.mark.parametrize("scenario", ["lock", "sleeper"])
def test_engine_waiters_wake_and_process_exits_after_a_worker_died_in_the_notifier(scenario, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    try:
        proc = subprocess.run([sys.executable, str(script), scenario], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as e:
        out, err = (b.decode() if isinstance(b, bytes) else b or "" for b in (e.stdout, e.stderr))
        pytest.fail(f"engine process did not exit within 60s (scenario {scenario}):\n{out}\n{err[-3000:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "WOKEN [True, True, True]" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert "not closed within" not in proc.stderr, proc.stderr[-3000:]
