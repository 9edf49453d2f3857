"""The worker channel over real sockets: what one pass of the loop sends arrives as one frame, in
order; a message that cannot be sent (it does not pickle, or is over the frame size) fails its own
call and nothing else, whichever side sent it."""

from __future__ import annotations

import asyncio
import socket
import threading
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferd.errors import GroupRefused, InvalidInput, ModelError, PayloadTooLarge, Unavailable
from inferd.types import InferRequest, InferResponse, Tensor, Timings
from inferd.workers import channel as channel_module
from inferd.workers import remote as remote_module
from inferd.workers.channel import FrameProtocol, frame
from inferd.workers.codec import pack_request
from inferd.workers.owner import CoreService
from inferd.workers.remote import Channel


async def _exchange(messages: list[Any]) -> tuple[list[Any], int]:
    loop = asyncio.get_running_loop()
    left, right = socket.socketpair()
    received: list[Any] = []
    frames = 0
    done = asyncio.Event()
    receiver = FrameProtocol(lambda m: received.append(m), lambda: None)
    original = receiver.buffer_updated

    def counted(nbytes: int) -> None:
        nonlocal frames
        frames += 1
        original(nbytes)
        if len(received) >= len(messages):
            done.set()

    receiver.buffer_updated = counted  # type: ignore[method-assign]
    sender = FrameProtocol(lambda m: None, lambda: None)
    await loop.connect_accepted_socket(lambda: sender, left)
    await loop.connect_accepted_socket(lambda: receiver, right)
    for message in messages:  # all in one pass of the loop
        sender.send(message)
    await asyncio.wait_for(done.wait(), 5)
    sender.transport.close()
    receiver.transport.close()
    return received, frames


def test_one_pass_of_sends_is_one_frame_in_order() -> None:
    messages = [("ok", n, {"answer": n}) for n in range(50)]
    received, frames = asyncio.run(_exchange(messages))
    assert received == messages
    assert frames == 1


def _split_reads(stream: bytes, chunk: int, protocol: FrameProtocol | None = None,
                 received: list[Any] | None = None) -> list[Any]:
    """What a FrameProtocol takes from ``stream`` when each read brings at most ``chunk`` bytes."""
    received = [] if received is None else received
    protocol = FrameProtocol(received.append, lambda: None) if protocol is None else protocol
    offset = 0
    while offset < len(stream):
        target = protocol.get_buffer(-1)
        n = min(chunk, len(target), len(stream) - offset)
        target[:n] = stream[offset:offset + n]
        protocol.buffer_updated(n)
        offset += n
    return received


@pytest.mark.parametrize("chunk", [1, 7, 4096, 100_000, 1 << 22])
def test_frames_arrive_whole_however_the_reads_split_them(chunk: int) -> None:
    """Small frames (read into the reused buffer, moved to its front as it fills), frames either
    side of the size that gets a buffer of its own, and large ones split anywhere."""
    sizes = [10, 70_000, 3, 300_000, 65_400, 65_600, 5, 2_000_000, 1] + [3_000] * 120
    messages = [("ok", n, np.full(size, n % 251, np.uint8)) for n, size in enumerate(sizes)]
    together = [("ok", 1000 + n, np.full(80_000, n, np.uint8)) for n in range(3)]  # three buffers, one frame
    frames = [b"".join(bytes(part) for part in frame(sent)) for sent in [[m] for m in messages] + [together]]
    if chunk == 1:  # a byte a read: the first seven frames are enough
        frames, messages, together = frames[:7], messages[:7], []
    received = _split_reads(b"".join(frames), chunk)
    assert len(received) == len(messages) + len(together)
    for got, sent in zip(received, messages + together, strict=True):
        assert got[:2] == sent[:2]
        np.testing.assert_array_equal(got[2], sent[2])


def test_large_tensors_cross_out_of_band_and_arrive_whole(tmp_path: Path) -> None:
    """A large tensor is written from its own memory (the pickle holds only its place), read into
    its frame's own buffer on the other side; large and small calls in one pass answer in order."""
    big = np.arange(3 * 2**20 // 4, dtype=np.float32).reshape(1, -1)
    columns = np.arange(300 * 400, dtype=np.float64).reshape(300, 400).T  # not contiguous
    parts = frame([("infer", 1, pack_request(InferRequest("m", None, [Tensor("x", "FP32", big)])))])
    assert len(parts) == 3 and len(parts[1]) < 1000 and parts[2].nbytes == big.nbytes
    asked = [InferRequest("m", None, [Tensor("x", datatype, data)])
             for datatype, data in (("FP32", big), ("FP32", np.ones((1, 2), np.float32)), ("FP64", columns))] * 3

    async def body(channel: Channel, _: Data) -> None:
        answers = await asyncio.wait_for(asyncio.gather(*(channel.infer(request) for request in asked)), 20)
        for request, answer in zip(asked, answers, strict=True):
            np.testing.assert_array_equal(answer.outputs[0].data, request.inputs[0].data)

    asyncio.run(_with_channel(tmp_path, body))


def _memory_of(array: np.ndarray) -> Any:
    """The object that owns the memory ``array`` views."""
    base: Any = array
    while True:
        if isinstance(base, memoryview):
            base = base.obj
        elif isinstance(base, np.ndarray) and base.base is not None:
            base = base.base
        else:
            return base


def test_each_large_tensor_arrives_aligned_in_memory_of_its_own() -> None:
    """Eight 4 MB answers in one frame: keeping one keeps 4 MB, not the frame; each starts where
    numpy would put it, whatever the pickle before it. Small arrays stay inside the pickle."""
    answers = [("ok", n, np.full((1, 2**20 + n), n, np.float32)) for n in range(8)]
    small = [("ok", 100, np.ones(10)), ("ok", 101, [np.ones(3, np.int8)] * 2000)]  # 2,000 arrays: all in band
    stream = b"".join(b"".join(bytes(part) for part in frame(sent)) for sent in (answers, small))
    assert len(frame(small)) == 2  # head and pickle: no out-of-band buffer
    received = _split_reads(stream, 100_000)
    for (_, got_id, got), (_, sent_id, sent) in zip(received[:8], answers, strict=True):
        assert got_id == sent_id
        np.testing.assert_array_equal(got, sent)
        assert _memory_of(got).nbytes == sent.nbytes
        assert got.ctypes.data % 16 == 0
    assert received[8][2].flags.writeable and len(received[9][2]) == 2000


class _Arrivals:
    """Large tensors sent to one FrameProtocol, counting the buffers it had to allocate."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.received: list[Any] = []
        self.protocol = FrameProtocol(self.received.append, lambda: None)
        calls = self._calls = [0]  # (the patch holds this, not the protocol)
        empty = np.empty

        def counted(*args: Any, **kwargs: Any) -> np.ndarray:
            calls[0] += 1
            return empty(*args, **kwargs)

        monkeypatch.setattr(channel_module.np, "empty", counted)

    @property
    def allocated(self) -> int:
        return self._calls[0]

    def arrive(self, *arrays: np.ndarray) -> list[np.ndarray]:
        _split_reads(b"".join(bytes(part) for part in frame([("ok", 1, a) for a in arrays])), 1 << 20,
                     self.protocol, self.received)
        got = [message[2] for message in self.received]
        self.received.clear()
        for one, sent in zip(got, arrays, strict=True):
            np.testing.assert_array_equal(one, sent)
        return got


def test_memory_of_a_large_tensor_is_used_again_once_no_array_views_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new allocation per tensor costs a page fault per 4 KiB each time; a buffer is taken
    again once the arrays that viewed it are gone, and not while one still does."""
    arrivals = _Arrivals(monkeypatch)
    [first] = arrivals.arrive(np.full(300_000, 1.0))
    [kept] = arrivals.arrive(np.full(300_000, 2.0))  # the first is still alive: other memory
    assert arrivals.allocated == 2
    del first
    arrivals.arrive(np.full(290_000, 3.0))  # the first's buffer, free now
    assert arrivals.allocated == 2 and kept[0] == 2.0


def test_free_buffers_of_other_sizes_make_room_and_keep_no_pool_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a burst of large tensors, smaller ones are still served from buffers used again
    (the oldest free ones go); an array kept after its connection closed keeps no free buffer."""
    arrivals = _Arrivals(monkeypatch)
    arrivals.arrive(*(np.full(2**20, float(n), np.float32) for n in range(40)))  # 4 MB each, dropped
    before = arrivals.allocated
    for n in range(5):
        arrivals.arrive(np.full(2**18, float(n), np.float32))  # 1 MB each, one after another
    assert arrivals.allocated == before + 1
    [kept] = arrivals.arrive(np.full(2**18, 9.0, np.float32))
    pool = weakref.ref(arrivals.protocol._pool)
    arrivals.protocol.connection_lost(None)
    del arrivals
    assert pool() is None and kept[0] == 9.0


def test_a_pass_over_the_frame_size_goes_message_by_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(channel_module, "MAX_FRAME", 1000)
    messages = [("ok", n, b"x" * 600) for n in range(3)]  # each fits, the three together do not
    received, _ = asyncio.run(_exchange(messages))
    assert received == messages


def _response(request: InferRequest, **parameters: Any) -> InferResponse:
    return InferResponse(request.model_name, "1", request.inputs, request.id, parameters, Timings(0, 0, 1))


class TwoArguments(Exception):
    """Pickles as (message,), so unpickling calls it with one argument: it fails on the other side."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"{what} failed: {why}")


class OwnModelError(ModelError):
    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"{what} failed: {why}")


class Control:
    async def echo(self, value: Any) -> Any:
        return value

    async def fail(self, error: str) -> Any:
        raise (TwoArguments if error == "plain" else OwnModelError)("step", "no input")

    async def lock(self) -> Any:
        return threading.Lock()


class Data:
    """Echoes each request's inputs; ``group`` is the rows it lets a worker join (0: none)."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.group = 0
        self.groups: list[tuple[int, int]] = []  # (requests, rows) of each joined request taken
        self.answer: Any = None  # a group's answer instead of the echo (an exception is raised)
        self.release = asyncio.Event()
        self.release.set()
        self.cancelled = 0

    def group_rows(self, name: str, version: str | None) -> int:
        return self.group

    async def infer(self, request: InferRequest) -> InferResponse:
        return _response(request)

    async def infer_group(self, request: InferRequest, requests: int) -> InferResponse:
        self.groups.append((requests, request.inputs[0].data.shape[0]))
        if request.inputs[0].data.shape[0] > self.group:  # as DataPlane.infer_group: the model changed
            raise GroupRefused(f"no group of {request.inputs[0].data.shape[0]} rows now")
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if isinstance(self.answer, Exception):
            raise self.answer
        return _response(request) if self.answer is None else self.answer

    async def infer_stream(self, request: InferRequest) -> AsyncIterator[InferResponse]:
        try:
            yield _response(request)
            yield _response(request, lock=threading.Lock())  # does not pickle
            for _ in range(100):
                yield _response(request)
        finally:
            self.closed.set()


async def _knowing_groups(channel: Channel) -> None:
    """Let the channel learn the model's group_rows (asked in the background on first use)."""
    await channel.infer(InferRequest("m", None, [Tensor("x", "FP32", np.ones((1, 3), np.float32))]))
    for _ in range(100):
        if ("m", None) in channel._group_rows:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("group_rows was never answered")


async def _with_channel(tmp_path: Path, body: Any, lost: bool = False) -> None:
    data = Data()
    service = CoreService({"data": data, "control": Control()})
    await service.start(tmp_path / "core.sock")
    channel = Channel(tmp_path / "core.sock")
    await channel.connect()
    try:
        await body(channel, data)
        assert channel.lost.is_set() == lost  # the channel outlived the bad message (unless lost on purpose)
    finally:
        channel.close()
        await service.close()


REQUEST = InferRequest("m", None, [Tensor("x", "FP32", np.ones((1, 2), np.float32))])


async def _beside_a_good_call(channel: Channel, bad: Any) -> Any:
    """The outcome of the ``bad`` call, sent in the same pass as a good one, which must answer."""
    good = channel.call("control", "echo", ("fine",), {})
    answers = await asyncio.wait_for(asyncio.gather(bad, good, return_exceptions=True), 5)
    assert answers[1] == "fine"
    return answers[0]


def test_a_call_that_does_not_pickle_fails_alone(tmp_path: Path) -> None:
    async def body(channel: Channel, _: Data) -> None:
        error = await _beside_a_good_call(channel, channel.call("control", "echo", (threading.Lock(),), {}))
        assert isinstance(error, InvalidInput) and "cannot be handed to the model process" in str(error)
        assert (await channel.infer(REQUEST)).outputs[0].data.tolist() == [[1.0, 1.0]]

    asyncio.run(_with_channel(tmp_path, body))


def test_an_answer_that_does_not_pickle_fails_its_call_alone(tmp_path: Path) -> None:
    async def body(channel: Channel, _: Data) -> None:
        error = await _beside_a_good_call(channel, channel.call("control", "lock", (), {}))
        assert isinstance(error, ModelError) and "could not be sent to the front-end worker" in str(error)

    asyncio.run(_with_channel(tmp_path, body))


def test_a_stream_answer_that_does_not_pickle_ends_the_stream_and_closes_the_model(tmp_path: Path) -> None:
    async def body(channel: Channel, data: Data) -> None:
        taken = []
        with pytest.raises(ModelError, match="could not be sent to the front-end worker"):
            async for answer in channel.stream(REQUEST):
                taken.append(answer)
        assert len(taken) == 1
        await asyncio.wait_for(data.closed.wait(), 5)  # the model's generator was closed, not left waiting

    asyncio.run(_with_channel(tmp_path, body))


def test_the_blocking_line_skips_a_changed_notice() -> None:
    left, right = socket.socketpair()
    left.sendall(b"".join(frame([("changed", 0, None)]) + frame([("changed", 0, None), ("ok", 0, "pong")])))
    right.settimeout(5)
    assert Channel._answer_now(right) == ("ok", "pong")


@pytest.mark.parametrize(("error", "expected"), [("plain", RuntimeError), ("inferd", ModelError)])
def test_an_exception_that_would_not_unpickle_reaches_the_worker_as_its_base(
        tmp_path: Path, error: str, expected: type[Exception]) -> None:
    async def body(channel: Channel, _: Data) -> None:
        raised = await _beside_a_good_call(channel, channel.call("control", "fail", (error,), {}))
        assert type(raised) is expected and "step failed: no input" in str(raised)

    asyncio.run(_with_channel(tmp_path, body))


def test_a_call_over_the_frame_size_is_too_large_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(channel_module, "MAX_FRAME", 2000)

    async def body(channel: Channel, _: Data) -> None:
        error = await _beside_a_good_call(channel, channel.call("control", "echo", (b"x" * 5000,), {}))
        assert isinstance(error, PayloadTooLarge) and "over the channel's frame size of 2000" in str(error)

    asyncio.run(_with_channel(tmp_path, body))


def test_a_blocking_call_that_does_not_pickle_fails_alone(tmp_path: Path) -> None:
    async def body(channel: Channel, _: Data) -> None:
        with pytest.raises(InvalidInput, match="cannot be handed to the model process"):
            channel.call_now("control", "echo", threading.Lock())  # raises before anything is sent

    asyncio.run(_with_channel(tmp_path, body))


def _rows(first: float, rows: int, width: int = 3) -> InferRequest:
    data = np.arange(first, first + rows * width, dtype=np.float32).reshape(rows, width)
    return InferRequest("m", None, [Tensor("x", "FP32", data)], id=f"r{first:g}")


def test_requests_of_one_pass_go_as_one_and_each_gets_its_own_rows(tmp_path: Path) -> None:
    """Requests that reach the channel in one pass with the same shapes join into one request of
    at most ``group_rows`` rows; each answer holds exactly its own rows and its own id. A request
    of other shapes, with a deadline of its own, or as large as a batch goes alone."""
    async def body(channel: Channel, data: Data) -> None:
        data.group = 8
        await _knowing_groups(channel)
        asked = [_rows(n * 100, rows) for n, rows in enumerate((1, 2, 3, 1, 3, 2))]  # 12 rows: 7 + 5
        other = InferRequest("m", None, [Tensor("x", "FP32", np.ones((1, 5), np.float32))], id="wide")
        timed = InferRequest("m", None, [Tensor("x", "FP32", np.ones((1, 3), np.float32))], id="timed",
                             timeout_us=10**7)
        whole = _rows(9000, 8)
        answers = await asyncio.wait_for(
            asyncio.gather(*(channel.infer(r) for r in [*asked, other, timed, whole])), 10)
        for request, answer in zip([*asked, other, timed, whole], answers, strict=True):
            assert answer.id == request.id
            np.testing.assert_array_equal(answer.outputs[0].data, request.inputs[0].data)
        assert data.groups == [(4, 7), (2, 5)]  # the rest went alone, as plain requests

    asyncio.run(_with_channel(tmp_path, body))


def test_a_group_that_fails_fails_every_member_and_a_wrong_answer_is_refused(tmp_path: Path) -> None:
    async def body(channel: Channel, data: Data) -> None:
        data.group = 32
        await _knowing_groups(channel)
        data.answer = ModelError("model 'm' failed: boom")
        errors = await asyncio.gather(*(channel.infer(_rows(n, 1)) for n in range(3)), return_exceptions=True)
        assert all(isinstance(e, ModelError) and "boom" in str(e) for e in errors)
        data.answer = InferResponse("m", "1", [Tensor("y", "FP32", np.ones((2, 1), np.float32))], None, {},
                                    Timings(0, 0, 1))  # 2 rows for a group of 3
        errors = await asyncio.gather(*(channel.infer(_rows(n, 1)) for n in range(3)), return_exceptions=True)
        assert all(isinstance(e, ModelError) and "for a batch of 3 rows" in str(e) for e in errors)

    asyncio.run(_with_channel(tmp_path, body))


def test_a_group_is_cancelled_in_the_model_process_only_once_no_member_waits(tmp_path: Path) -> None:
    async def body(channel: Channel, data: Data) -> None:
        data.group = 32
        await _knowing_groups(channel)
        data.release.clear()
        calls = [asyncio.ensure_future(channel.infer(_rows(n, 1))) for n in range(3)]
        while not data.groups:
            await asyncio.sleep(0.01)
        calls[0].cancel()
        calls[1].cancel()
        await asyncio.sleep(0.2)
        assert data.cancelled == 0  # one member still waits
        calls[2].cancel()
        for _ in range(100):
            if data.cancelled:
                break
            await asyncio.sleep(0.02)
        assert data.cancelled == 1
        data.release.set()
        data.groups.clear()
        answer = await asyncio.wait_for(channel.infer(_rows(7, 1)), 5)  # the channel still serves
        assert answer.id == "r7"

    asyncio.run(_with_channel(tmp_path, body))


def test_members_still_forming_fail_when_the_model_process_goes(tmp_path: Path) -> None:
    async def body(channel: Channel, data: Data) -> None:
        data.group = 32
        await _knowing_groups(channel)
        calls = [asyncio.ensure_future(channel.infer(_rows(n, 1))) for n in range(3)]
        await asyncio.sleep(0)  # the members wait in this pass's group
        channel._on_lost()
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
        assert all(isinstance(r, Unavailable) for r in results)

    asyncio.run(_with_channel(tmp_path, body, lost=True))


def test_members_that_cannot_be_joined_fail_alone_and_the_channel_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(arrays: list[Any]) -> Any:
        raise MemoryError("no room to join")

    async def body(channel: Channel, data: Data) -> None:
        data.group = 32
        await _knowing_groups(channel)
        monkeypatch.setattr(remote_module, "_join", broken)
        errors = await asyncio.wait_for(asyncio.gather(*(channel.infer(_rows(n, 1)) for n in range(3)),
                                                       return_exceptions=True), 5)
        assert all(isinstance(e, InvalidInput) and "no room to join" in str(e) for e in errors)
        assert channel._pending == {}  # nothing left waiting for an answer that will never come
        monkeypatch.undo()
        answers = await asyncio.wait_for(asyncio.gather(*(channel.infer(_rows(n, 1)) for n in range(3))), 5)
        assert [a.id for a in answers] == ["r0", "r1", "r2"]

    asyncio.run(_with_channel(tmp_path, body))


def test_a_group_the_model_no_longer_takes_goes_again_one_by_one(tmp_path: Path) -> None:
    """The worker's group_rows is kept a moment; when the model's batch size fell meanwhile, the
    model process refuses the group and each member is sent again alone, and answered."""
    async def body(channel: Channel, data: Data) -> None:
        data.group = 8
        await _knowing_groups(channel)
        data.group = 2  # changed in the model process, no notice to the worker
        asked = [_rows(n * 10, 1) for n in range(4)]
        answers = await asyncio.wait_for(asyncio.gather(*(channel.infer(r) for r in asked)), 5)
        for request, answer in zip(asked, answers, strict=True):
            assert answer.id == request.id
            np.testing.assert_array_equal(answer.outputs[0].data, request.inputs[0].data)
        assert data.groups == [(4, 4)]  # refused once; the members then went as plain requests

    asyncio.run(_with_channel(tmp_path, body))


def test_parameters_of_other_types_never_share_a_group(tmp_path: Path) -> None:
    """True == 1 == 1.0 in Python; a group goes with its first member's parameters, so these must
    not share one."""
    async def body(channel: Channel, data: Data) -> None:
        data.group = 32
        await _knowing_groups(channel)
        asked = []
        for n, value in enumerate([1, True, 1.0, 1, True, 1.0]):
            request = _rows(n, 1)
            request.parameters = {"p": value}
            asked.append(request)
        await asyncio.wait_for(asyncio.gather(*(channel.infer(r) for r in asked)), 5)
        assert sorted(data.groups) == [(2, 2), (2, 2), (2, 2)]

    asyncio.run(_with_channel(tmp_path, body))


def test_the_folders_of_killed_model_processes_are_removed(tmp_path: Path) -> None:
    """A model process killed with SIGKILL leaves its folder (socket, settings with the token):
    the next server removes those of processes that are gone, and no other."""
    import os
    import subprocess
    import sys

    from inferd.workers.owner import FOLDER_PREFIX, remove_leftovers

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    dead = tmp_path / f"{FOLDER_PREFIX}{ended.pid}-abc"
    alive = tmp_path / f"{FOLDER_PREFIX}{os.getpid()}-def"
    unnamed = tmp_path / f"{FOLDER_PREFIX}xyz"  # not ours to judge
    for folder in (dead, alive, unnamed):
        folder.mkdir()
        (folder / "settings.pickle").write_bytes(b"secret")
    assert remove_leftovers(str(tmp_path)) == 1
    assert not dead.exists() and alive.exists() and unnamed.exists()
