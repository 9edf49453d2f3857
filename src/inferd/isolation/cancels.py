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
MAX_REQUESTS = 65536  # a batch's requests with a cancel flag each (one byte); later ones are never told
# the call slot, then the id of the call whose requests the flags are, then one flag per request
_SIZE = 2 * _SLOT.size + MAX_REQUESTS


class CancelBoard:
    """The server's side creates the slot (``fd`` None) and passes ``fd`` to the process, which
    maps the same one. A batch handed over apart has a flag per request besides (each request's
    client may leave on its own): the server clears them when it first writes one for a new call."""

    def __init__(self, fd: int | None = None) -> None:
        self.fd = _new_slot() if fd is None else fd
        self._map = mmap.mmap(self.fd, _SIZE)

    def cancel(self, call_id: int) -> None:
        _SLOT.pack_into(self._map, 0, call_id)

    def cancelled(self, call_id: int) -> bool:
        return bool(_SLOT.unpack_from(self._map, 0)[0] == call_id)

    def cancel_request(self, call_id: int, index: int) -> None:
        """Request ``index`` of call ``call_id`` (the server's side, the call's one thread)."""
        if index >= MAX_REQUESTS:
            return
        if _SLOT.unpack_from(self._map, _SLOT.size)[0] != call_id:  # an earlier call's flags: cleared first
            _SLOT.pack_into(self._map, _SLOT.size, 0)
            self._map[2 * _SLOT.size:] = bytes(MAX_REQUESTS)
            _SLOT.pack_into(self._map, _SLOT.size, call_id)
        self._map[2 * _SLOT.size + index] = 1

    def request_cancelled(self, call_id: int, index: int) -> bool:
        """The call's id is read before the flag: it is written only once the flags are cleared."""
        if self.cancelled(call_id):
            return True
        if index >= MAX_REQUESTS or _SLOT.unpack_from(self._map, _SLOT.size)[0] != call_id:
            return False
        return bool(self._map[2 * _SLOT.size + index])

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
    os.ftruncate(fd, _SIZE)
    return fd
