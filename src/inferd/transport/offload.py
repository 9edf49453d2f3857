"""Work that grows with the request leaves the event loop: decoding (and inflating) a large body
on a thread keeps every other client's request moving meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

OFF_LOOP_BYTES = 256 * 1024  # below this a thread hop (~70 µs of loop time) costs more than it saves


async def off_loop(size: int, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` on a thread when ``size`` bytes make it long, else right here."""
    if size <= OFF_LOOP_BYTES:
        return function(*args)
    return await asyncio.to_thread(function, *args)
