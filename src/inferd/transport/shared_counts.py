"""Counts that the front-end workers of ``--workers N`` keep together: gRPC calls at once and
request bytes held in memory.

Each worker once had a share of ``--max-connections`` and ``--max-inflight-size``. The kernel
spreads connections (SO_REUSEPORT), not what they carry, over the workers: a gRPC client sends
many calls, and large tensors, over one connection, which is one worker's, so a share refused
them far below the server's limit (on 16 cores, a client's 256 calls over 4 connections got
RESOURCE_EXHAUSTED with 8 workers, whose shares were 125 calls each). So each count is a small
file in the model process's private folder (beside the socket the workers reach it by) holding
one int64 slot per worker, which each worker maps, writes only its own slot of and reads the
others' when it admits something. No lock: a read can miss what another worker admits at the same
moment, so a total can pass its limit by what the other workers admit in that moment (one call,
or one body, each). A worker that dies (killed, or killed for hanging) is no longer there to give
back what it held: the model process zeroes its slots as it sees it gone (``forget_worker``).
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

SLOT_BYTES = 8
GRPC_CALLS = "grpc-calls"
INFLIGHT_BYTES = "inflight-bytes"
COUNTS = (GRPC_CALLS, INFLIGHT_BYTES)


class SharedCount:
    """A worker's view of one count: ``others()`` and ``publish(own)``."""

    def __init__(self, path: Path, workers: int, mine: int) -> None:
        size = SLOT_BYTES * workers
        with path.open("a+b") as file:  # whichever worker comes first creates it; growing fills with zeros
            if os.fstat(file.fileno()).st_size < size:
                os.ftruncate(file.fileno(), size)
            self._map = mmap.mmap(file.fileno(), size)
        self._slots = memoryview(self._map).cast("q")
        self._mine = mine
        self._slots[mine] = 0  # a worker started again: what the one before it held ended with it

    def others(self) -> int:
        """The other workers' counts, summed."""
        return sum(self._slots) - self._slots[self._mine]

    def publish(self, own: int) -> None:
        self._slots[self._mine] = own


def worker_counts(folder: Path, workers: int, mine: int) -> tuple[SharedCount, SharedCount]:
    """Worker ``mine``'s gRPC calls and in-flight bytes, counted with the others in ``folder``."""
    return (SharedCount(folder / GRPC_CALLS, workers, mine), SharedCount(folder / INFLIGHT_BYTES, workers, mine))


def forget_worker(folder: Path, number: int) -> None:
    """Zero worker ``number``'s slots once it is dead: its calls and bytes ended with it, and
    its replacement (which zeroes them too) takes seconds to start. Written through a mapping,
    as the workers write: one 8-byte store, never seen half done."""
    for name in COUNTS:
        try:
            file = (folder / name).open("r+b")
        except FileNotFoundError:  # no worker got as far as counting
            continue
        with file:
            size = os.fstat(file.fileno()).st_size
            if size < SLOT_BYTES * (number + 1):
                continue
            with mmap.mmap(file.fileno(), size) as mapped:
                slots = memoryview(mapped).cast("q")
                slots[number] = 0
                slots.release()
