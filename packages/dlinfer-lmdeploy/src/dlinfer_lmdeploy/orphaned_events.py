"""Set a ``multiprocessing`` Event whose other users have died, and wake this process's waiters.

LMDeploy's multi-process executor passes replies through shared memory and signals them with ``mp.Event`` objects.
Its workers end on SIGTERM by raising ``SystemExit`` wherever they are, and are SIGKILLed if they do not exit. A
worker stopped inside ``Event.set`` keeps the event's lock; one killed while waiting stays counted as a sleeper of the
event's condition. ``Event.set`` then never returns in the engine process (it blocks on the lock, or in
``notify_all`` waiting for the dead sleeper to wake), and the engine's own waiters, default-executor threads that the
interpreter joins at exit, never wake: the process hangs after its work is done.

:func:`set_and_wake` is for the point where every other process that used the event has exited. It does not go
through the condition's protocol, which assumes every participant is alive: a lock held by another process is
released, the flag is set, and every waiter counted by the condition is woken without waiting for it to answer.
The event must not be used by several processes afterwards.

Relies on CPython's ``multiprocessing.synchronize`` layout (``Event._cond``, ``_flag``; ``Condition._lock``,
``_sleeping_count``, ``_woken_count``, ``_wait_semaphore``) and ``SemLock._count``/``_get_value`` (not on macOS);
:func:`set_and_wake` returns False where that layout is not found.
"""

from __future__ import annotations

import time
from typing import Any

LOCK_SETTLE_S = 0.2
"""A lock seen held by another process twice this far apart is taken as orphaned (its holder has exited)."""


def _orphaned(semlock: Any) -> bool:
    """Held (value 0) and by no thread of this process (``_count`` is this process's hold count)."""
    return semlock._get_value() == 0 and semlock._count() == 0


def set_and_wake(event: Any, *, lock_timeout_s: float = 1.0) -> bool:
    """Set ``event`` and wake every thread of this process waiting on it; only once the other processes that
    used it have exited. Returns False (nothing changed) where the event's layout is not CPython's on Linux, or
    its lock stays held by a thread of this process for ``lock_timeout_s``."""
    try:
        cond, flag = event._cond, event._flag
        lock = cond._lock._semlock
        sleeping, woken, wait_sem = cond._sleeping_count, cond._woken_count, cond._wait_semaphore
        lock._get_value(), lock._count()
    except (AttributeError, NotImplementedError):
        return False
    if _orphaned(lock):
        time.sleep(LOCK_SETTLE_S)  # a thread of this process may be between sem_wait and counting its hold
        if _orphaned(lock):
            lock.release()  # its holder has exited; a Lock (not an RLock) may be released by anyone
    if not lock.acquire(True, lock_timeout_s):
        return False
    try:
        flag.acquire(False)
        flag.release()
        # waiters not yet woken, this process's and dead ones; a dead one's wake-up is never taken, which is harmless
        pending = sleeping._semlock._get_value() - woken._semlock._get_value()
        for _ in range(max(0, pending)):
            wait_sem.release()
    finally:
        lock.release()
    return True
