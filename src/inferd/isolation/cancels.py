"""A call's cancel as it crosses to its instance process: one shared 8-byte slot into which the
server writes the id of the running call once its client has gone away, and which the process
reads whenever the model asks (Triton's ``request.is_cancelled()``). A slot, not a message: the
process reads its channel only between calls (or between a stream's parts), and a model that
waits for nothing but its client's cancel would never see one."""

from __future__ import annotations

import mmap
import os
import struct
import tempfile

_SLOT = struct.Struct("<q")


class CancelBoard:
    """The server's side creates the slot (``fd`` None) and passes ``fd`` to the process, which
    maps the same one."""

    def __init__(self, fd: int | None = None) -> None:
        self.fd = _new_slot() if fd is None else fd
        self._map = mmap.mmap(self.fd, _SLOT.size)

    def cancel(self, call_id: int) -> None:
        _SLOT.pack_into(self._map, 0, call_id)

    def cancelled(self, call_id: int) -> bool:
        return bool(_SLOT.unpack_from(self._map, 0)[0] == call_id)

    def close(self) -> None:
        self._map.close()
        os.close(self.fd)


def _new_slot() -> int:
    """An anonymous file of one slot (no name left behind, whoever dies first)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("inferd-cancels")
    else:  # not Linux: an unlinked temporary file
        fd, path = tempfile.mkstemp(prefix="inferd-cancels-")
        os.unlink(path)
    os.ftruncate(fd, _SLOT.size)
    return fd
