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
SMALLEST_KEEP = 1 * 2**20  # below this the thresholds would send more to the system, not less
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc refuses a larger one on 64-bit machines
_M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
OWN_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_THRESHOLDS = (*OWN_VARIABLES, "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")  # any of them fixes glibc's thresholds
_set_here: dict[str, str] = {}  # what keep_freed_memory put in the environment


def users_own_settings() -> bool:
    """Whether the environment already sets glibc's malloc thresholds (the user's settings win)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return "glibc.malloc." in tunables or any(
        name in os.environ and _set_here.get(name) != os.environ[name] for name in _THRESHOLDS)


def keep_freed_memory(size: int) -> bool:
    """Let each of the allocator's heaps keep up to ``size`` bytes free, and take blocks of up to
    half that (at most 32 MiB) from them, in this process and the ones it starts (through the
    environment glibc reads at start). glibc keeps a heap per thread that allocates at once (up
    to 8 per core) and a heap keeps its pages for the life of the process: resident memory stays
    near its peak. False where nothing changed: ``size`` 0, the user's own malloc settings in the
    environment, or a C library without glibc's ``mallopt``."""
    if size <= 0 or users_own_settings():
        return False
    size = min(size, 2**31 - 1)  # mallopt takes an int
    mmap_threshold = min(size // 2, MMAP_THRESHOLD_MAX)
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not (mallopt(_M_MMAP_THRESHOLD, mmap_threshold) and mallopt(_M_TRIM_THRESHOLD, size)):
        return False
    for name, value in zip(OWN_VARIABLES, (str(mmap_threshold), str(size)), strict=True):
        os.environ[name] = _set_here[name] = value
    return True


def without_kept_memory(env: dict[str, str]) -> dict[str, str]:
    """``env`` less what ``keep_freed_memory`` added: for a process whose resident memory is
    measured against a limit (an instance with ``memory_limit_mb``), where memory kept for the
    next call would count as memory used."""
    return {name: value for name, value in env.items() if _set_here.get(name) != value}
