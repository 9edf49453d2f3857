"""Triton's system shared-memory extension: regions of POSIX shared-memory objects that clients
register by name, and tensors read from and written to them instead of travelling in the request.

Off unless the server runs with ``--allow-client-shm`` (as Triton since 2.60): a registered key lets
a client make the server read and write that object. The server never maps a region: a client that
truncates its object would make a mapped read fault and take the server down (SIGBUS). It reads with
``preadv`` and writes with ``pwrite`` on the object's descriptor instead, so a shrunken object is
an error for that request only. Regions live in the process that runs the data plane (the model
process under ``--workers``), so tensors in shared memory never cross the workers' channel.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass

from inferd.errors import AlreadyRegistered, InvalidInput, NotFound, PayloadTooLarge, Unavailable
from inferd.protocols import tensors
from inferd.types import InferRequest, SharedMemoryRef, SharedMemoryRegion, Tensor

DISABLED = "Client shared memory is disabled. Start the server with '--allow-client-shm=true' to enable."
MAX_REGIONS = 1024  # each holds a descriptor open
_INLINE_BYTES = 1 << 20  # larger reads run on a thread (on a descriptor of their own)
_KEY = re.compile(r"/?[^/\x00]{1,255}")
_DEVICE = "/dev/shm"
_OWN_PREFIX = "inferd-"  # isolation/shm.py's buffers, as Triton keeps its own prefix from clients


@dataclass(frozen=True, slots=True)
class Region:
    place: SharedMemoryRegion
    fd: int  # the object's, open from register to unregister

    @property
    def name(self) -> str:
        return self.place.name

    @property
    def offset(self) -> int:
        return self.place.offset

    @property
    def byte_size(self) -> int:
        return self.place.byte_size


class SharedMemoryRegions:
    def __init__(self, allowed: bool, max_request_bytes: int, max_held_bytes: int | None = None) -> None:
        self.allowed = allowed
        self._max_request_bytes = max_request_bytes
        # the bytes read from regions that requests hold at once (--max-inflight-size): a small request
        # naming a large region must not let many at once fill the server's memory
        self._max_held_bytes = max_request_bytes if max_held_bytes is None else max_held_bytes
        self._held = 0
        self._regions: dict[str, Region] = {}
        self.registered: Mapping[str, Region] = self._regions  # empty (false) while none is: nothing to pin
        self._pins: dict[str, int] = {}  # requests in flight that name each region
        self._doomed: set[str] = set()  # unregistered while pinned: removed when the last request is done

    # -- the extension's API ----------------------------------------------------------------
    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self._check_allowed()
        if not name:
            raise InvalidInput("'region name' is necessary to register system shared memory region")
        if name in self._regions:
            raise AlreadyRegistered(f"shared memory region '{name}' already in manager")
        if len(self._regions) >= MAX_REGIONS:
            raise Unavailable(f"failed to register shared memory region '{name}': {MAX_REGIONS} regions are "
                              "registered already; unregister one first")
        for what, value in (("offset", offset), ("byte_size", byte_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidInput(f"failed to register shared memory region '{name}': {what} must be an integer "
                                   f">= 0, got {value!r}")
        fd = _open(name, key)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidInput(f"Invalid shared memory region: '{key}' (not a shared-memory object)")
            if offset + byte_size > info.st_size:
                raise InvalidInput(f"failed to register shared memory region '{name}': invalid args: offset {offset} "
                                   f"+ byte_size {byte_size} runs past the end of '{key}' ({info.st_size} bytes)")
        except BaseException:
            os.close(fd)
            raise
        self._regions[name] = Region(SharedMemoryRegion(name, key, offset, byte_size), fd)

    def unregister(self, name: str | None) -> None:
        """One region, or every one (``None``); a name not registered is no error, as in Triton."""
        self._check_allowed()
        for region in list(self._regions.values()) if name is None else [self._regions.get(name)]:
            if region is None:
                continue
            if self._pins.get(region.name):  # as Triton's: after the requests in flight that use it
                self._doomed.add(region.name)
            else:
                self._remove(region.name)

    def _remove(self, name: str) -> None:
        os.close(self._regions.pop(name).fd)

    def pin(self, request: InferRequest) -> list[str]:
        """The registered regions a request names, held for it until ``unpin``: an unregister meanwhile
        takes effect once the last request holding the region is done, and they answer (Triton's
        "will be unregistered after in-flight requests complete")."""
        if not self._regions:  # most servers: nothing registered, nothing to look for
            return []
        places = [t.shared for t in request.inputs] + [o.shared for o in request.outputs or ()]
        names = [place.region for place in places if place is not None and place.region in self._regions]
        for name in names:
            self._pins[name] = self._pins.get(name, 0) + 1
        return names

    def unpin(self, names: list[str]) -> None:
        for name in names:
            left = self._pins[name] - 1
            if left:
                self._pins[name] = left
                continue
            del self._pins[name]
            if name in self._doomed:
                self._doomed.discard(name)
                self._remove(name)

    def status(self, name: str | None) -> list[SharedMemoryRegion]:
        if name is None:
            return [region.place for region in self._regions.values()]
        region = self._regions.get(name)
        if region is None:
            raise NotFound(f"Unable to find system shared memory region: '{name}'")
        return [region.place]

    def close(self) -> None:
        for region in self._regions.values():
            os.close(region.fd)
        self._regions.clear()
        self._pins.clear()
        self._doomed.clear()

    # -- tensors ------------------------------------------------------------------------------
    async def read_inputs(self, inputs: list[Tensor]) -> int:
        """Each input whose bytes are in a region gets them as its data (in place). Returns the bytes
        read, held against --max-inflight-size until the request gives them back with ``release``."""
        total = sum(t.shared.byte_size for t in inputs if t.shared is not None)
        if total > self._max_request_bytes:
            raise PayloadTooLarge(f"the request's inputs in shared memory hold {total} bytes, more than the "
                                  f"{self._max_request_bytes} a request may (--max-body-size)")
        if self._held + total > self._max_held_bytes:
            raise Unavailable(f"requests hold {self._held} bytes read from shared memory and this one's {total} "
                              f"more would pass the limit of {self._max_held_bytes} (--max-inflight-size); "
                              "retry shortly")
        self._held += total
        try:
            await self._read(inputs)
        except BaseException:
            self.release(total)
            raise
        return total

    def release(self, held: int) -> None:
        """A request that read ``held`` bytes from shared memory is done with them."""
        self._held -= held

    async def _read(self, inputs: list[Tensor]) -> None:
        for tensor in inputs:
            ref = tensor.shared
            if ref is None:
                continue
            region = self._within(ref, f"input '{tensor.name}'")
            if ref.byte_size <= _INLINE_BYTES:
                raw = _read(region.fd, region.offset + ref.offset, ref.byte_size, region)
            else:  # its own descriptor: an unregister meanwhile closes the region's, not this one
                fd = os.dup(region.fd)
                try:
                    raw = await asyncio.to_thread(_read, fd, region.offset + ref.offset, ref.byte_size, region)
                finally:
                    os.close(fd)
            tensor.data = tensors.from_raw(tensor.name, tensor.datatype, list(tensor.data.shape), memoryview(raw))
            tensor.shared = None

    def write_output(self, tensor: Tensor, ref: SharedMemoryRef) -> Tensor:
        """The output written into its region; what the answer carries instead (no data)."""
        region = self._within(ref, f"output '{tensor.name}'")
        raw = tensors.raw_view(tensor.data, tensor.datatype)
        if len(raw) > ref.byte_size:
            raise InvalidInput(f"shared memory size specified with the request for output '{tensor.name}' "
                               f"({ref.byte_size} bytes) should be at least {len(raw)} bytes to hold the results")
        written = os.pwrite(region.fd, raw, region.offset + ref.offset)
        if written != len(raw):
            raise InvalidInput(f"output '{tensor.name}': only {written} of {len(raw)} bytes could be written to "
                               f"shared memory region '{ref.region}'")
        return Tensor(tensor.name, tensor.datatype, tensor.data, ref)

    def _within(self, ref: SharedMemoryRef, what: str) -> Region:
        self._check_allowed()
        region = self._regions.get(ref.region)
        if region is None:
            raise InvalidInput(f"{what}: Unable to find shared memory region: '{ref.region}'")
        if ref.offset < 0 or ref.byte_size < 0 or ref.offset + ref.byte_size > region.byte_size:
            raise InvalidInput(f"{what}: {_out_of_bounds(ref, region.byte_size)}")
        return region

    def _check_allowed(self) -> None:
        if not self.allowed:
            raise InvalidInput(DISABLED)


def _out_of_bounds(ref: SharedMemoryRef, size: int) -> str:
    """Triton's three words for a place outside its region (shared_memory_manager.cc), then the numbers."""
    numbers = f"(offset {ref.offset} + byte size {ref.byte_size} > {size} bytes)"
    if ref.offset >= size:
        return f"Invalid offset for shared memory region: '{ref.region}' {numbers}"
    if ref.offset + ref.byte_size >= 2**64:
        return (f"Integer overflow detected: byte_size ({ref.byte_size}) + offset ({ref.offset}) exceeds maximum "
                f"value ({2**64 - 1}) for region '{ref.region}'")
    return f"Invalid offset + byte size for shared memory region: '{ref.region}' {numbers}"


def _open(name: str, key: str) -> int:
    """The object as shm_open(key) finds it: a file of /dev/shm, never a link."""
    if not isinstance(key, str) or not _KEY.fullmatch(key) or key.lstrip("/") in (".", ".."):
        raise InvalidInput(f"cannot register shared memory region '{name}' - invalid shm key '{key}': it is not a "
                           "shared-memory object's key (\"/name\")")
    if key.lstrip("/").startswith(_OWN_PREFIX):  # the server's own buffers (instance processes' tensors)
        raise InvalidInput(f"failed to register shared memory region '{name}': keys starting '/{_OWN_PREFIX}' "
                           "are the server's own")
    try:
        return os.open(os.path.join(_DEVICE, key.lstrip("/")), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidInput(f"Unable to open shared memory region: '{key}' ({exc.strerror})") from None


def _read(fd: int, position: int, size: int, region: Region) -> bytearray:
    buffer = bytearray(size)
    view, done = memoryview(buffer), 0
    while done < size:
        count = os.preadv(fd, [view[done:]], position + done)
        if count == 0:
            raise InvalidInput(f"shared memory region '{region.name}' ('{region.place.key}') holds fewer bytes than "
                               "registered: the object was truncated")
        done += count
    return buffer

