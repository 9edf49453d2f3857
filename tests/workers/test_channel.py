"""The worker channel's framing over a real socket pair: what one pass of the loop sends arrives
as one frame, in order, and one message that does not pickle spoils none of the others."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

from inferd.workers.channel import FrameProtocol, read_frame


async def _exchange(messages: list[Any]) -> tuple[list[Any], int]:
    loop = asyncio.get_running_loop()
    left, right = socket.socketpair()
    received: list[Any] = []
    frames = 0
    done = asyncio.Event()
    receiver = FrameProtocol(lambda m: received.append(m), lambda: None)
    original = receiver.data_received

    def counted(data: bytes) -> None:
        nonlocal frames
        frames += 1
        original(data)
        if len(received) >= len(messages):
            done.set()

    receiver.data_received = counted  # type: ignore[method-assign]
    sender = FrameProtocol(lambda m: None, lambda: None)
    await loop.connect_accepted_socket(lambda: sender, left)
    await loop.connect_accepted_socket(lambda: receiver, right)
    for message in messages:  # all in one pass of the loop
        sender.send(message)
    await asyncio.wait_for(done.wait(), 5)
    sender.transport.close()
    receiver.transport.close()
    return received, frames


def test_one_pass_of_sends_is_one_frame_in_order() -> None:
    messages = [("ok", n, {"answer": n}) for n in range(50)]
    received, frames = asyncio.run(_exchange(messages))
    assert received == messages
    assert frames == 1


def test_a_message_that_does_not_pickle_becomes_an_error_for_its_call_alone() -> None:
    unpicklable = ("ok", 7, threading.Lock())
    received, _ = asyncio.run(_exchange([("ok", 6, "six"), unpicklable, ("ok", 8, "eight")]))
    assert received[0] == ("ok", 6, "six") and received[2] == ("ok", 8, "eight")
    kind, call_id, error = received[1]
    assert (kind, call_id) == ("err", 7)
    assert isinstance(error, RuntimeError) and "does not pickle" in str(error) and "lock" in str(error)


def test_the_blocking_line_reads_one_frame_of_messages() -> None:
    async def send_one(sock: socket.socket) -> None:
        sender = FrameProtocol(lambda m: None, lambda: None)
        await asyncio.get_running_loop().connect_accepted_socket(lambda: sender, sock)
        sender.send(("ok", 0, [1, 2, 3]))
        await asyncio.sleep(0.05)
        sender.transport.close()

    left, right = socket.socketpair()
    asyncio.run(send_one(left))
    right.settimeout(5)
    assert read_frame(right) == [("ok", 0, [1, 2, 3])]
