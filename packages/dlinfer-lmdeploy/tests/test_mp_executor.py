"""LMDeploy's mp executor barrier must not block a worker's event loop (the tp=2 CPU deadlock).

Every 32 shared-memory messages the engine and the workers meet at a multiprocessing Barrier.
A worker's event loop also runs the model forward, whose gloo all_reduce blocks until the other
rank joins: if the barrier wait blocks the loop, a rank still needed by the peer's all_reduce
never gets there. These tests stand the peer's all_reduce in with a coroutine that must run
while the barrier waits.
"""

from __future__ import annotations

import asyncio
import copy
import threading

import pytest
import torch.multiprocessing as mp

from dlinfer_lmdeploy import devices


@pytest.fixture
def dlinfer_active(monkeypatch: pytest.MonkeyPatch) -> None:
    import dlinfer_lmdeploy

    dlinfer_lmdeploy.install()
    monkeypatch.setattr(devices, "active", lambda: "cpu")


def test_barrier_wait_leaves_the_event_loop_free(dlinfer_active: None) -> None:
    from lmdeploy.pytorch.engine.executor.mp_executor import NUM_SHARED_BLOCK, Notifier

    sender = Notifier(1, mp.get_context("spawn"))
    receiver = copy.copy(sender)  # another process's view: same events and barrier, own counter
    sender._event_id = receiver._event_id = NUM_SHARED_BLOCK - 1  # the wrap-around message
    peer_ran = threading.Event()
    joined: list[bool] = []

    def send() -> None:
        sender.events[sender._event_id].set()
        # The sender reaches the barrier only after the receiver's loop ran the peer's step
        # (in LMDeploy: the other worker reads the message only after its all_reduce returns).
        joined.append(peer_ran.wait(timeout=3))
        sender.bar.wait(timeout=10)
        for event in sender.events:
            event.clear()
        sender.bar.wait(timeout=10)

    async def peer_step() -> None:
        await asyncio.sleep(0.2)
        peer_ran.set()

    async def main() -> None:
        peer = asyncio.ensure_future(peer_step())
        async with receiver.wait_async():
            pass
        await peer

    thread = threading.Thread(target=send)
    thread.start()
    asyncio.run(asyncio.wait_for(main(), timeout=20))
    thread.join(timeout=20)
    assert joined == [True], "the barrier wait blocked the event loop"
    assert receiver._event_id == 0


def test_multi_block_message_across_the_wrap(dlinfer_active: None) -> None:
    from lmdeploy.pytorch.engine.executor.mp_executor import (
        NUM_SHARED_BLOCK,
        SHARED_BLOCK_SIZE,
        Notifier,
        SharedBuffer,
    )

    notifier = Notifier(1, mp.get_context("spawn"))
    out = SharedBuffer(-1, notifier=notifier)
    into = SharedBuffer(0, notifier=copy.copy(notifier), name=out.name())
    for buf in (out, into):  # a 3-block message that spans blocks 30, 31 and 0
        buf._buf_id = buf.notifier._event_id = NUM_SHARED_BLOCK - 2
    payload = {"data": bytes(range(256)) * (SHARED_BLOCK_SIZE * 5 // 2 // 256)}
    try:
        thread = threading.Thread(target=out.send, args=(payload,), kwargs={"receiver_mask": 1})
        thread.start()
        got = asyncio.run(asyncio.wait_for(into.receive_async(), timeout=20))
        thread.join(timeout=20)
        assert got == payload
        assert into.notifier._event_id == into._buf_id == 1
    finally:
        into.shm.close()
        out.shm.close()
        out.shm.unlink()
