"""The response cache: identical requests answered from memory, as Triton's local cache does.

One LRU for the whole server, bounded in bytes (``--cache-size``); only models whose configuration
enables it (``[response_cache] enable = true``) use it. A key is a digest of everything that decides
the answer: the loaded version (a reload starts afresh; an ensemble's steps' versions too), the
signature, every input's name, datatype, shape and bytes, and the requested outputs. Request
parameters other than the signature never reach a model, so they are not part of the key. The data
plane calls it on the event loop only, so it needs no lock.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

Outputs = dict[str, np.ndarray]

ENTRY_OVERHEAD = 256  # bytes an entry costs beyond its tensors (key, dict, array headers): a rough floor


@dataclass(slots=True)
class CacheUsage:
    """The cache as a whole (``/metrics``)."""

    max_bytes: int
    bytes: int = 0
    entries: int = 0
    evictions: int = 0


def request_key(generation: int | str, signature: str, arrays: dict[str, np.ndarray], wanted: list[str]) -> bytes:
    """A 128-bit digest of one request's answer-deciding parts (blake2b: a collision is out of reach)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{generation}\0{signature}\0".encode())
    for name in sorted(arrays):
        array = arrays[name]
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        if array.dtype.kind == "O":
            for item in array.reshape(-1):
                data = item if isinstance(item, bytes) else str(item).encode()
                digest.update(len(data).to_bytes(8, "little"))
                digest.update(data)
        else:
            digest.update(np.ascontiguousarray(array).view(np.uint8).reshape(-1).data)
    for name in wanted:
        digest.update(f"\1{name}".encode())
    return digest.digest()


def outputs_size(outputs: Outputs) -> int:
    size = ENTRY_OVERHEAD
    for array in outputs.values():
        if array.dtype.kind == "O":
            size += sum(len(item) if isinstance(item, bytes | str) else 8 for item in array.reshape(-1))
        size += array.nbytes
    return size


class ResponseCache:
    """Least recently used entries leave first once the bytes would pass ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.usage = CacheUsage(max_bytes)
        self._entries: OrderedDict[bytes, tuple[Outputs, int]] = OrderedDict()

    def get(self, key: bytes) -> Outputs | None:
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: bytes, outputs: Outputs) -> bool:
        """Keep a copy of ``outputs`` (read-only, so no answer can change it); False when it alone is
        larger than the cache."""
        size = outputs_size(outputs)
        usage = self.usage
        if size > usage.max_bytes:
            return False
        old = self._entries.pop(key, None)
        if old is not None:
            usage.bytes -= old[1]
        while self._entries and usage.bytes + size > usage.max_bytes:
            _, (_, freed) = self._entries.popitem(last=False)
            usage.bytes -= freed
            usage.evictions += 1
        kept = {}
        for name, array in outputs.items():
            copy = np.array(array, copy=True)
            copy.setflags(write=False)
            kept[name] = copy
        self._entries[key] = (kept, size)
        usage.bytes += size
        usage.entries = len(self._entries)
        return True

    def __len__(self) -> int:
        return len(self._entries)
