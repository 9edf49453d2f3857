"""gRPC calls at once, counted over every front-end worker of ``--workers N``.

gRPC carries many calls on few connections, and the kernel spreads connections (SO_REUSEPORT),
not calls, over the workers: a per-worker share of ``--max-connections`` refused calls far below
the server's total (on 16 cores, a client's 256 calls over 4 connections got RESOURCE_EXHAUSTED
with 8 workers, whose shares were 125 each). So the workers count calls together: a small file in
the model process's private folder (beside the socket they reach it by) holds one int64 slot per
worker, which each worker maps, writes only its own slot of (its calls now) and reads the others'
when a call starts. No lock: a read may
miss a call another worker admits at the same moment, so the total can pass the limit by at most
one call per other worker, which the byte budget (split, and always held) does not.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

SLOT_BYTES = 8
FILE_NAME = "grpc-calls"


class CallSlots:
    """A worker's view of the shared count: ``others()`` and ``publish(own)``."""

    def __init__(self, path: Path, workers: int, mine: int) -> None:
        size = SLOT_BYTES * workers
        # whichever worker comes first creates it; growing a file fills it with zeros
        with path.open("a+b") as file:
            if os.fstat(file.fileno()).st_size < size:
                os.ftruncate(file.fileno(), size)
            self._map = mmap.mmap(file.fileno(), size)
        self._slots = memoryview(self._map).cast("q")
        self._mine = mine
        self._slots[mine] = 0  # a worker started again: the calls of the one before it ended with it

    def others(self) -> int:
        """Calls running now in the other workers."""
        return sum(self._slots) - self._slots[self._mine]

    def publish(self, own: int) -> None:
        self._slots[self._mine] = own
