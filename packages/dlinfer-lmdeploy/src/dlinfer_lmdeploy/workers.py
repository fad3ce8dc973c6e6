"""LMDeploy's multi-process executor on dlinfer devices: wired workers, a dead worker fails the engine, clean exit.

Three replacements (inventory patches ``mp-worker-entry``, ``mp-worker-watchdog``, ``mp-release-deadline``), each
active only when the executor runs a dlinfer device:

* **Every worker imports the adaptor.** LMDeploy spawns its workers with ``ExecutorProc._main_loop`` as the process
  target; a spawned interpreter imports only what unpickling that target needs, so unless the
  ``dlinfer_lmdeploy_autoload.pth`` hook is installed (a pip install; not a ``PYTHONPATH`` checkout) the worker never
  wires dlinfer into LMDeploy and dies in ``try_import_deeplink`` (``No module named 'dlinfer.framework'``). The target
  becomes :func:`worker_main`, a function of this package, so unpickling it imports ``dlinfer_lmdeploy`` first.
  It also notes the executor's SIGTERM (:class:`_TerminationSeen`): LMDeploy's worker then raises ``SystemExit``
  wherever it is, and one stopped inside a shared-memory send fails in its cleanup (``BufferError``); that error
  ends the worker quietly instead of being reported as a worker failure.
* **A worker that dies fails the engine at once.** LMDeploy signals the engine (SIGUSR1, whose handler releases the
  executor and exits the process) only for errors inside a worker's main loop; a worker that fails during start-up
  or is killed (OOM killer) leaves the engine waiting forever on its reply. :func:`worker_main` reports a start-up
  error the same way, and a watchdog thread of the engine process notices a worker process that exited while the
  executor was running, logs its name, pid and exit status, and raises the same signal in the engine's main thread.
  A failure reported while the executor is already shutting down (a worker failing on its way out of a normal
  ``pipe.close()``) is logged and the shutdown continues: it no longer ends the user's process with exit code 1.
* **Shutdown ends.** ``release`` joins the workers without a deadline; a worker whose interpreter is kept alive by
  child processes (e.g. Inductor's compile workers) makes it hang. Workers get ``JOIN_DEADLINE_S`` after SIGTERM,
  then SIGKILL; a failure signal during release is logged and the release goes on; the shared buffers' notifiers,
  which a worker may have left locked or waited on when it died, are set directly and this process's waiters
  woken (:func:`_close_buffers`).

And one for the engine process of ``lmdeploy serve`` (inventory patch ``mp-engine-handshake``): its start-up
handshake no longer dies when LMDeploy's manager shuts down before acknowledging the last release
(:class:`_HandshakeCondition`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Any

from dlinfer_lmdeploy import devices, orphaned_events
from dlinfer_lmdeploy.inventory import replacement

logger = logging.getLogger("dlinfer_lmdeploy")

JOIN_DEADLINE_S = 10.0
NOTIFIER_CLOSE_DEADLINE_S = 5.0
WATCH_INTERVAL_S = 0.5


class _TerminationSeen:
    """Wraps the SIGTERM handler LMDeploy's worker loop installs, noting that the executor asked the worker to end.

    LMDeploy's handler raises ``SystemExit`` wherever the worker is; one stopped inside a shared-memory send then
    fails in its own cleanup (``BufferError: cannot close exported pointers exist``). That is the executor's
    shutdown, not a worker failure: it must not be logged as one or signalled to the engine.
    """

    def __init__(self) -> None:
        self.seen = False
        self._install = signal.signal

    def __enter__(self) -> _TerminationSeen:
        def install(signum: int, handler: Any) -> Any:
            if signum == signal.SIGTERM and callable(handler):
                inner = handler

                def handler(sig: int, frame: Any) -> Any:
                    self.seen = True
                    return inner(sig, frame)

            return self._install(signum, handler)

        signal.signal = install  # this worker process only: LMDeploy's loop installs its handler through it
        return self

    def __exit__(self, *exc: Any) -> None:
        signal.signal = self._install


def worker_main(proc: Any, **kwargs: Any) -> None:
    """Process target of a spawned LMDeploy worker on a dlinfer device: wire dlinfer in, then LMDeploy's loop."""
    import dlinfer_lmdeploy

    dlinfer_lmdeploy.install()
    proc_id = getattr(proc, "proc_id", "?")
    with _TerminationSeen() as terminated:
        try:
            proc._main_loop(**kwargs)
        except Exception as exc:
            if terminated.seen:
                logger.debug("dlinfer-lmdeploy: LMDeploy worker %s ended by the executor (%r in its cleanup)",
                             proc_id, exc)
                return
            logger.exception("dlinfer-lmdeploy: LMDeploy worker %s failed", proc_id)
            os.kill(os.getppid(), signal.SIGUSR1)  # LMDeploy's own "a worker failed" signal: the engine exits
            raise


@replacement("mp-worker-entry")
def _mp_worker_entry(original: Any) -> Any:
    def start(self: Any, **kwargs: Any) -> None:
        if not devices.is_dlinfer_device(kwargs.get("device_type")):
            return original(self, **kwargs)
        assert self._proc is None
        proc = self.mp_ctx.Process(
            target=worker_main, args=(self,), kwargs=kwargs, name=f"ExecutorProc-{self.proc_id}", daemon=True
        )
        proc.start()
        self._proc = proc

    return start


def _exit_status(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}" + (" (out of memory?)" if code == -signal.SIGKILL else "")
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _watch(executor: Any, stopped: threading.Event) -> None:
    main = threading.main_thread().ident
    while not stopped.wait(WATCH_INTERVAL_S):
        for proc in executor.procs:
            p = proc._proc
            if p is not None and p.exitcode is not None and not stopped.is_set():
                logger.error(
                    "dlinfer-lmdeploy: LMDeploy worker %s (pid %s) exited while the engine was running: %s; "
                    "stopping the engine",
                    p.name, p.pid, _exit_status(p.exitcode),
                )
                stopped.set()
                if main is not None:
                    signal.pthread_kill(main, signal.SIGUSR1)
                return


def _on_worker_failure(executor: Any, signum: int, frame: Any) -> None:
    """SIGUSR1 (a worker failed, or the watchdog saw one exit): LMDeploy's handler, unless shutdown is under way.

    LMDeploy's handler stops and releases the executor, then ``os._exit(1)``. A worker torn down by ``release``
    (SIGTERM) may still fail on its way out, e.g. in a collective whose peer has already gone, and report it the
    same way; during a normal ``pipe.close()`` that ended the user's process with exit code 1 after all its work was
    done. Once release has begun, such a report is logged and otherwise ignored: release already ends every worker
    (SIGTERM, then SIGKILL after ``JOIN_DEADLINE_S``), and a failure-driven release still ends in the first
    handler's ``os._exit(1)``. (Killing the workers here instead could kill one inside a lock of the executor's
    shared notifiers, which this process's waiting threads then never get: seen as a hang at interpreter exit.)"""
    if getattr(executor, "_dlinfer_releasing", False):
        logger.warning("dlinfer-lmdeploy: a worker reported a failure while the executor was shutting down; "
                       "the shutdown continues")
        return
    logger.error("dlinfer-lmdeploy: an LMDeploy worker failed; stopping the engine")
    executor.stop()
    executor.release()
    os._exit(1)


@replacement("mp-worker-watchdog")
def _mp_worker_watchdog(original: Any) -> Any:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if not devices.is_dlinfer_device(getattr(self, "device_type", None)):
            return
        signal.signal(signal.SIGUSR1, lambda signum, frame: _on_worker_failure(self, signum, frame))
        self._dlinfer_stopped = threading.Event()
        threading.Thread(
            target=_watch, args=(self, self._dlinfer_stopped), name="dlinfer-worker-watchdog", daemon=True
        ).start()

    return __init__


def _close_buffers(buffers: list[Any]) -> None:
    """Close LMDeploy's shared-memory buffers once every worker has exited, and wake this process's waiters.

    The segment is closed (kept mapped if the interrupted main thread still holds a view of it: ``BufferError``)
    and unlinked. LMDeploy's ``notifier.close()`` sets each event through its condition, which blocks for good when
    a worker died inside the notifier: stopped by SIGTERM inside ``Event.set`` (it keeps the event's lock) or killed
    while waiting (``notify_all`` waits for it to wake). The engine's reply waiters, default-executor threads that
    the interpreter joins at exit, then never wake and the process hangs after its work is done (seen at tp=2 on
    the CPU and at tp=4). Every worker has exited here, so each event is set and its waiters woken directly
    (:func:`dlinfer_lmdeploy.orphaned_events.set_and_wake`); the barrier is aborted in a daemon thread with a
    deadline, as is ``Event.set`` for an event whose layout that function does not know.
    """
    leftover: list[Any] = []
    for buf in buffers:
        if buf.is_closed:
            continue
        with contextlib.suppress(BufferError):
            buf.shm.close()
        if buf.is_create:
            with contextlib.suppress(FileNotFoundError):
                buf.shm.unlink()
        buf.is_closed = True
        leftover += [event.set for event in buf.notifier.events if not orphaned_events.set_and_wake(event)]
        leftover.append(buf.notifier.bar.abort)
    closer = threading.Thread(target=lambda: [close() for close in leftover], daemon=True,
                              name="dlinfer-notifier-close")
    closer.start()
    closer.join(NOTIFIER_CLOSE_DEADLINE_S)
    if closer.is_alive():
        logger.warning("dlinfer-lmdeploy: executor notifiers not closed within %.0fs (a killed worker was waiting "
                       "on them); continuing", NOTIFIER_CLOSE_DEADLINE_S)


@replacement("mp-release-deadline")
def _mp_release_deadline(original: Any) -> Any:
    def release(self: Any) -> None:
        stopped = getattr(self, "_dlinfer_stopped", None)
        if stopped is None:
            return original(self)
        if getattr(self, "_dlinfer_releasing", False):  # already under way
            return None
        self._dlinfer_releasing = True
        stopped.set()
        for proc in self.procs:
            proc.close()
        for proc in self.procs:
            p = proc._proc
            if p is None:
                continue
            p.join(JOIN_DEADLINE_S)
            if p.exitcode is None:
                logger.warning("dlinfer-lmdeploy: worker %s did not exit within %.0fs of SIGTERM; killing it",
                               p.name, JOIN_DEADLINE_S)
                p.kill()
                p.join()
        _close_buffers([self.comm_buf, *self.ret_bufs])
        return None

    return release


class _HandshakeCondition:
    """LMDeploy's manager ``Condition`` proxy, as the engine process uses it once to publish its RPC port.

    The parent wakes on ``notify``, reads the port and shuts the manager down while this process may still be
    waiting for the manager's reply to ``release``: the reply never comes (``EOFError``/``ConnectionError``).
    The handshake is complete by then (the parent has the port), so that lost reply is ignored here; an error
    while entering or inside the block is raised as usual.
    """

    def __init__(self, proxy: Any) -> None:
        self._proxy = proxy

    def __enter__(self) -> Any:
        return self._proxy.__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            self._proxy.__exit__(*exc)
        except (EOFError, ConnectionError) as lost:
            if exc[0] is not None:
                raise
            logger.debug("dlinfer-lmdeploy: manager gone before the handshake's release reply (%s)", lost)

    def notify(self, n: int = 1) -> None:
        self._proxy.notify(n)


@replacement("mp-engine-handshake")
def _mp_engine_handshake(original: Any) -> Any:
    def _mp_proc(shared_dict: Any, condition: Any, model_path: str, engine_config: Any = None, **kwargs: Any) -> Any:
        if engine_config is not None and devices.is_dlinfer_device(getattr(engine_config, "device_type", None)):
            condition = _HandshakeCondition(condition)
        return original(shared_dict, condition, model_path, engine_config, **kwargs)

    _mp_proc.__module__ = original.__module__  # pickled by reference for the spawned engine process
    _mp_proc.__qualname__ = original.__qualname__
    _mp_proc.__name__ = original.__name__
    return _mp_proc
