"""Tensors between a server and its instance processes, through shared memory.

Each direction has one growable buffer: a file in ``/dev/shm`` that its writer creates and maps,
and its reader maps once and unlinks (so nothing is left behind, even when a process dies later).
A call writes its arrays one after another, 64-byte aligned, and sends only a small header
(name, dtype, shape, offset) over the pipe. BYTES tensors (numpy object arrays of ``bytes``) are
laid out as the v2 binary extension does (4-byte length, then the bytes, per element); small ones
travel in the header, pickled.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any, cast

import numpy as np

from inferd.protocols.tensors import from_raw, to_raw
from inferd.runtimes.base import Arrays

_ALIGN = 64
_MIN_SIZE = 1 << 20

# (name, dtype, shape, offset, size) for an array in the buffer ("BYTES" as dtype: length-prefixed
# elements, as the v2 binary extension lays them out); (name, None, object array, 0, 0) for a small
# BYTES tensor carried in the header itself
Header = list[tuple[str, "np.dtype[Any] | str | None", object, int, int]]
BYTES = "BYTES"
INLINE_BYTES = 16 * 1024  # BYTES tensors smaller than this travel pickled in the header


def pack_calls(calls: list[Arrays]) -> Arrays:
    """Several calls' tensors as one set (``INDEX/NAME``), written and read in one go: a batch's
    requests handed over apart (Runtime.infer_requests), or their answers."""
    return {f"{index}/{name}": array for index, arrays in enumerate(calls) for name, array in arrays.items()}


def unpack_calls(packed: Arrays, count: int) -> list[Arrays]:
    """``pack_calls`` undone: ``count`` calls' tensors (a call without any comes back empty)."""
    calls: list[Arrays] = [{} for _ in range(count)]
    for key, array in packed.items():
        index, _, name = key.partition("/")
        calls[int(index)][name] = array
    return calls


class SharedMemoryFull(Exception):
    """The shared-memory folder cannot hold a call's tensors."""


def _shm_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def remove_shared_memory(pid: int | None) -> int:
    """Unlink the buffers process ``pid`` made (None: those of every process that is gone); a
    buffer outlives its writer when the reader never mapped it (the writer was killed first)."""
    removed = 0
    for path in Path(_shm_dir()).glob(f"inferd-{pid if pid is not None else '*'}-*"):
        owner = path.name.split("-", 2)[1]
        if not owner.isdigit() or (pid is None and pid_alive(int(owner))):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    return removed


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _close(view: mmap.mmap | None) -> None:
    if view is None:
        return
    with contextlib.suppress(BufferError):  # a model kept an array that views it: it goes with it
        view.close()


class Writer:
    """The writing end: owns the file, grows it (as a new file) when a call needs more room."""

    def __init__(self, tag: str) -> None:
        self._tag = tag
        self.path: str | None = None
        self._map: mmap.mmap | None = None
        self.size = 0

    def write(self, arrays: Arrays) -> tuple[Header, str | None]:
        """Put ``arrays`` in the buffer; returns their header and the new file's path if it grew."""
        encoded = {name: to_raw(a, "BYTES") for name, a in arrays.items() if a.dtype == object}
        placed = {name: raw for name, raw in encoded.items() if len(raw) >= INLINE_BYTES}
        needed = (sum(_aligned(a.nbytes) for a in arrays.values() if a.dtype != object)
                  + sum(_aligned(len(raw)) for raw in placed.values()))
        grown = None
        if needed > self.size:
            grown = self._grow(max(needed, 2 * self.size, _MIN_SIZE))
        header: Header = []
        offset = 0
        for name, array in arrays.items():
            if array.dtype == object and name not in placed:
                header.append((name, None, array, 0, 0))
                continue
            raw = placed.get(name)
            size = len(raw) if raw is not None else array.nbytes
            header.append((name, BYTES if raw is not None else array.dtype, array.shape, offset, size))
            if size == 0:
                continue
            assert self._map is not None
            if raw is not None:
                self._map[offset:offset + size] = raw
            else:
                target = np.ndarray(array.shape, array.dtype, self._map, offset)
                target[...] = array
                del target
            offset += _aligned(size)
        return header, grown

    def _grow(self, size: int) -> str:
        self.close()
        path = os.path.join(_shm_dir(), f"inferd-{os.getpid()}-{self._tag}-{uuid.uuid4().hex[:8]}")
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            # reserve the pages now: a full /dev/shm then fails here with ENOSPC, where a sparse
            # file would kill the writer with SIGBUS on first touch
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, size)
            else:  # pragma: no cover - not Linux
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        except OSError as exc:
            os.close(fd)
            Path(path).unlink(missing_ok=True)
            raise SharedMemoryFull(f"{_shm_dir()} has no room for {size / 2**20:.1f} MiB of tensors ({exc.strerror}); "
                                   "give it more (docker run --shm-size=...) or send smaller requests") from None
        os.close(fd)
        self.path, self.size = path, size
        return path

    def close(self) -> None:
        """Unmap; unlink the file too, in case the reader never got to it."""
        _close(self._map)
        self._map = None
        if self.path is not None:
            Path(self.path).unlink(missing_ok=True)
            self.path = None
        self.size = 0


class Reader:
    """The reading end: maps the writer's file when told its path, then unlinks it."""

    def __init__(self) -> None:
        self._map: mmap.mmap | None = None

    def attach(self, path: str) -> None:
        _close(self._map)
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        Path(path).unlink(missing_ok=True)

    def read(self, header: Header, copy: bool) -> Arrays:
        """The arrays a header describes: views of the buffer, or copies (``copy``) that outlive
        the next call. BYTES tensors are always new arrays of ``bytes``."""
        arrays: Arrays = {}
        for name, dtype, shape_or_array, offset, size in header:
            if dtype is None:
                arrays[name] = cast(np.ndarray, shape_or_array)
                continue
            shape = cast(tuple[int, ...], shape_or_array)
            if 0 in shape:  # nothing to read, and no buffer to read it from if no call sent bytes yet
                arrays[name] = np.empty(shape, object if dtype == BYTES else dtype)
                continue
            assert self._map is not None
            if dtype == BYTES:
                raw = memoryview(self._map)[offset:offset + size]
                arrays[name] = from_raw(name, BYTES, list(shape), raw)
                raw.release()
                continue
            view = np.ndarray(shape, dtype, self._map, offset)
            arrays[name] = view.copy() if copy else view
        return arrays

    def close(self) -> None:
        _close(self._map)
        self._map = None
