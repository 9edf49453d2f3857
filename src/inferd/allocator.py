"""How much freed memory the C allocator keeps for the next request.

glibc hands a freed block of 128 KiB or more straight back to the system, and trims the top of its
heap once 128 KiB there is free (it raises both thresholds a little as it goes, not enough for a
server with several large requests in flight). Every large body, tensor and answer then arrives in
fresh pages, and the kernel faults each 4 KiB of them in again: for a 602 KB image over v2 binary
HTTP through a front-end worker that was 82-87 page faults per request and ~13 % of the throughput
(benchmarks/RESULTS.md §16). Fixed thresholds keep such blocks in the heap for the next request.
"""

from __future__ import annotations

import ctypes
import os

DEFAULT_KEEP = 64 * 2**20
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc refuses a larger one on 64-bit machines
_M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_USERS_OWN = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory(size: int) -> bool:
    """Let each of the allocator's heaps keep up to ``size`` bytes free, and take blocks of up to
    half that (at most 32 MiB) from them, in this process and the ones it starts (through the
    environment glibc reads at start). False where nothing changed: ``size`` 0, the user's own
    MALLOC_ settings in the environment (they win), or a C library without glibc's ``mallopt``."""
    if size <= 0 or any(name in os.environ for name in _USERS_OWN):
        return False
    size = min(size, 2**31 - 1)  # mallopt takes an int
    mmap_threshold = min(size // 2, MMAP_THRESHOLD_MAX)
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not (mallopt(_M_MMAP_THRESHOLD, mmap_threshold) and mallopt(_M_TRIM_THRESHOLD, size)):
        return False
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    os.environ["MALLOC_TRIM_THRESHOLD_"] = str(size)
    return True
