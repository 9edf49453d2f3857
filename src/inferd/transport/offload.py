"""Work that grows with the request leaves the event loop: decoding (and inflating) a large body
on a thread keeps every other client's request moving meanwhile.

Inflating is the one job whose size the sender does not pay for (a 250 KB gzip bomb is 256 MiB of
work), so it runs on a thread of its own, one body at a time, at a lower CPU priority: bombs queue
behind each other instead of taking every core, and the loop thread wins the CPU they would share.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

OFF_LOOP_BYTES = 256 * 1024  # below this a thread hop (~70 µs of loop time) costs more than it saves
INFLATE_NICE = 10  # the inflating thread's niceness, added to the server's: about 1/10 of a shared core

_inflater: ThreadPoolExecutor | None = None


async def off_loop(size: int, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` on a thread when ``size`` bytes make it long, else right here."""
    if size <= OFF_LOOP_BYTES:
        return function(*args)
    return await asyncio.to_thread(function, *args)


async def inflate_off_loop(size: int, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` (an inflation of up to ``size`` bytes) on the inflating thread when
    ``size`` makes it long, else right here."""
    global _inflater
    if size <= OFF_LOOP_BYTES:
        return function(*args)
    if _inflater is None:
        _inflater = ThreadPoolExecutor(1, thread_name_prefix="inferd-inflate", initializer=_lower_priority)
    return await asyncio.get_running_loop().run_in_executor(_inflater, lambda: function(*args))


def _lower_priority() -> None:
    """Linux nices threads one by one (a thread id is a process id to setpriority)."""
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + INFLATE_NICE)
