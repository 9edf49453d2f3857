"""The sequence batcher on a framework-free runtime: controls as Triton delivers them, one lane per
sequence, order, Triton's refusals, idle sequences forgotten."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import numpy as np
import pytest

from inferd.config import InitialState, SequenceBatching, SequenceControl, SequenceState
from inferd.errors import DeadlineExceeded, InvalidInput, ModelError, Unavailable
from inferd.runtimes.base import SEQUENCE_INPUT, Arrays, Runtime, unpack_sequence
from inferd.scheduling.instances import InstancePool
from inferd.scheduling.sequence import SequenceBatcher
from inferd.types import CallContext, SequenceId, TensorSpec
from inferd.validation import sequence_of

CONTROLS = (SequenceControl("START", "START", "INT32"), SequenceControl("END", "END", "BOOL"),
            SequenceControl("READY", "READY", "FP32", (0.0, 2.5)), SequenceControl("CORRID", "CORRID", "UINT64"))


class Recording(Runtime):
    """Records each call's lane and inputs; answers the input back, after ``delay_s``."""

    def __init__(self, delay_s: float = 0.0, controls: tuple[str, ...] = ("START", "END", "READY", "CORRID"),
                 takes_sequence: bool = False) -> None:
        self.inputs = tuple(TensorSpec(n, "INT32", (-1, 1)) for n in ("X", *controls))
        self.outputs = (TensorSpec("X", "INT32", (-1, 1)),)
        self.max_batch_size = 8
        self.takes_sequence = takes_sequence
        self.delay_s = delay_s
        self.calls: list[tuple[int, Arrays]] = []
        self._lock = threading.Lock()

    def infer(self, inputs: Arrays) -> Arrays:
        return self.infer_on(-1, inputs)

    def infer_on(self, lane: int, inputs: Arrays) -> Arrays:
        time.sleep(self.delay_s)
        with self._lock:
            self.calls.append((lane, inputs))
        return {"X": inputs["X"]}


def batcher(runtime: Recording, count: int = 2, idle_us: int = 1_000_000,
            controls: tuple[SequenceControl, ...] = CONTROLS) -> SequenceBatcher:
    return SequenceBatcher(InstancePool(runtime, count, "acc:1"), SequenceBatching(idle_us, controls))


def call(scheduler: SequenceBatcher, value: int, sequence: SequenceId | None,
         deadline: float | None = None) -> Arrays:
    context = CallContext(sequence=sequence, deadline=deadline)
    return asyncio.run(scheduler.infer_async({"X": np.array([[value]], np.int32)}, context))


def test_control_inputs_are_delivered_as_triton_does() -> None:
    runtime = Recording()
    scheduler = batcher(runtime)
    assert [spec.name for spec in scheduler.inputs] == ["X"]  # the controls are the batcher's to give
    call(scheduler, 5, SequenceId(42, start=True))
    call(scheduler, 6, SequenceId(42))
    call(scheduler, 7, SequenceId(42, end=True))
    got = [{name: (array.dtype.name, array.tolist()) for name, array in inputs.items()} for _, inputs in runtime.calls]
    assert got[0] == {"X": ("int32", [[5]]), "START": ("int32", [[1]]), "END": ("bool", [[False]]),
                      "READY": ("float32", [[2.5]]), "CORRID": ("uint64", [[42]])}
    assert [(g["START"][1], g["END"][1]) for g in got] == [([[1]], [[False]]), ([[0]], [[False]]), ([[0]], [[True]])]
    assert scheduler.sequences == 0


def test_each_sequence_keeps_its_lane_and_starts_take_the_emptier_one() -> None:
    runtime = Recording()
    scheduler = batcher(runtime, count=2)
    for sequence in (1, 2, 3):
        call(scheduler, sequence, SequenceId(sequence, start=True))
    for sequence in (3, 2, 1, 3):
        call(scheduler, sequence, SequenceId(sequence))
    lanes: dict[int, set[int]] = {}
    for lane, inputs in runtime.calls:
        lanes.setdefault(int(inputs["CORRID"][0, 0]), set()).add(lane)
    assert lanes == {1: {0}, 2: {1}, 3: {0}}


def test_one_sequences_requests_run_one_at_a_time_in_order() -> None:
    runtime = Recording(delay_s=0.01)
    scheduler = batcher(runtime, count=4)

    async def main() -> None:
        calls = [scheduler.infer_async({"X": np.array([[i]], np.int32)}, CallContext(sequence=SequenceId(9, i == 0)))
                 for i in range(8)]
        await asyncio.gather(*calls)

    asyncio.run(main())
    assert [int(inputs["X"][0, 0]) for _, inputs in runtime.calls] == list(range(8))
    assert {lane for lane, _ in runtime.calls} == {0}


@pytest.mark.parametrize(("value", "sequence", "message"), [
    (1, None, "inference request to model 'acc' must specify a non-zero or non-empty correlation ID"),
    (1, SequenceId(0, start=True), "must specify a non-zero or non-empty correlation ID"),
    (1, SequenceId(77), "inference request for sequence 77 to model 'acc' must specify the START flag on the "
                        "first request of the sequence"),
    (1, SequenceId("abc", start=True), "sequence id 'abc' is a string, but model 'acc' takes it as UINT64"),
])
def test_tritons_refusals(value: int, sequence: SequenceId | None, message: str) -> None:
    scheduler = batcher(Recording())
    with pytest.raises(InvalidInput) as caught:
        call(scheduler, value, sequence)
    assert message in caught.value.message


def test_a_batch_of_two_is_refused() -> None:
    scheduler = batcher(Recording())
    context = CallContext(sequence=SequenceId(1, start=True))
    with pytest.raises(InvalidInput, match="must specify batch-size 1 due to requirements of sequence batcher"):
        asyncio.run(scheduler.infer_async({"X": np.zeros((2, 1), np.int32)}, context))


def test_an_idle_sequence_is_forgotten() -> None:
    scheduler = batcher(Recording(), idle_us=100_000)
    call(scheduler, 1, SequenceId(5, start=True))
    call(scheduler, 1, SequenceId(6, start=True))
    time.sleep(0.25)
    with pytest.raises(InvalidInput, match="must specify the START flag"):
        call(scheduler, 2, SequenceId(5))
    assert scheduler.sequences == 0
    call(scheduler, 3, SequenceId(5, start=True))  # the id may start again
    assert scheduler.sequences == 1


def test_idle_time_counts_from_the_last_answer_not_the_last_arrival() -> None:
    """A request that waits or runs longer than max_sequence_idle_microseconds (behind a restarting
    instance, a slow model) leaves its sequence live: the next request, sent at once, continues it."""
    runtime = Recording(delay_s=0.3)
    scheduler = batcher(runtime, idle_us=200_000)
    call(scheduler, 1, SequenceId(5, start=True))
    assert call(scheduler, 2, SequenceId(5))["X"].tolist() == [[2]]
    assert scheduler.sequences == 1


def test_a_deadline_bounds_the_wait_for_the_sequences_instance() -> None:
    scheduler = batcher(Recording(delay_s=0.3), count=1)
    with pytest.raises(DeadlineExceeded):
        call(scheduler, 1, SequenceId(5, start=True), deadline=time.perf_counter() + 0.05)


def test_python_models_see_the_correlation_id_and_flags() -> None:
    runtime = Recording(controls=(), takes_sequence=True)
    scheduler = batcher(runtime, controls=())
    call(scheduler, 1, SequenceId("a-b", start=True, end=True))
    assert unpack_sequence(runtime.calls[0][1][SEQUENCE_INPUT]) == ("a-b", 3)


@pytest.mark.parametrize(("parameters", "expected"), [
    ({}, None),
    ({"sequence_id": 7, "sequence_start": True}, SequenceId(7, True, False)),
    ({"sequence_id": "x", "sequence_end": True}, SequenceId("x", False, True)),
    ({"sequence_id": 2**64 - 1}, SequenceId(2**64 - 1)),
])
def test_sequence_parameters(parameters: dict[str, object], expected: SequenceId | None) -> None:
    assert sequence_of(parameters) == expected


@pytest.mark.parametrize(("parameters", "message"), [
    ({"sequence_id": -1}, "sequence_id must be an unsigned 64-bit integer or a string, got -1"),
    ({"sequence_id": 1.5}, "got 1.5"),
    ({"sequence_id": True}, "got True"),
    ({"sequence_id": 1, "sequence_start": "yes"}, "parameters.sequence_start must be true or false, got 'yes'"),
])
def test_bad_sequence_parameters(parameters: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        sequence_of(parameters)


class Losing(Recording):
    """Instances that lose their state when told (a process instance crashed or was retired)."""

    def __init__(self) -> None:
        super().__init__()
        self.losses = {0: 0, 1: 0}

    def lane_losses(self, lane: int) -> int:
        return self.losses[lane]


def test_a_sequence_whose_instance_lost_its_state_must_start_again() -> None:
    runtime = Losing()
    scheduler = batcher(runtime, count=2)
    call(scheduler, 1, SequenceId(1, start=True))  # lane 0
    call(scheduler, 2, SequenceId(2, start=True))  # lane 1
    runtime.losses[0] += 1  # lane 0's instance went
    with pytest.raises(InvalidInput, match="sequence 1 to model 'acc' must specify the START flag"):
        call(scheduler, 1, SequenceId(1))
    with pytest.raises(InvalidInput, match="must specify the START flag"):  # forgotten, not refused once
        call(scheduler, 1, SequenceId(1))
    call(scheduler, 2, SequenceId(2))  # the other lane kept its sequence
    call(scheduler, 1, SequenceId(1, start=True))  # a new START binds to the fresh instance
    call(scheduler, 1, SequenceId(1, end=True))
    assert [int(inputs["X"][0, 0]) for _, inputs in runtime.calls] == [1, 2, 2, 1, 1]


def test_a_request_whose_deadline_passed_in_the_lanes_queue_never_runs() -> None:
    """Sequence 2's START waits behind sequence 1 on the one lane and gets its 504: it must not run
    later (the model's state would move for an answer the client never got), and sequence 2 is not
    live (its next request must start again)."""
    runtime = Recording(delay_s=0.3)
    scheduler = batcher(runtime, count=1)

    async def main() -> None:
        first = asyncio.ensure_future(scheduler.infer_async({"X": np.array([[1]], np.int32)},
                                                            CallContext(sequence=SequenceId(1, start=True))))
        await asyncio.sleep(0.05)
        with pytest.raises(DeadlineExceeded):
            await scheduler.infer_async({"X": np.array([[2]], np.int32)},
                                        CallContext(sequence=SequenceId(2, start=True),
                                                    deadline=time.perf_counter() + 0.05))
        await first
        await asyncio.sleep(0.1)

    asyncio.run(main())
    assert [int(inputs["X"][0, 0]) for _, inputs in runtime.calls] == [1]
    assert scheduler.sequences == 1
    with pytest.raises(InvalidInput, match="must specify the START flag"):
        call(scheduler, 3, SequenceId(2))


def test_a_correlation_id_must_fit_the_corrid_input() -> None:
    controls = (SequenceControl("CORRID", "CORRID", "INT32"),)
    runtime = Recording(controls=("CORRID",))
    scheduler = batcher(runtime, controls=controls)
    with pytest.raises(InvalidInput, match=r"sequence id 2147483648 does not fit model 'acc''s INT32 control "
                                           r"input 'CORRID' \(-2147483648\.\.2147483647\)"):
        call(scheduler, 1, SequenceId(2**31, start=True))
    assert scheduler.sequences == 0
    call(scheduler, 1, SequenceId(2**31 - 1, start=True))
    assert runtime.calls[-1][1]["CORRID"].tolist() == [[2**31 - 1]]


def test_a_bytes_correlation_id_must_be_a_string() -> None:
    """As Triton's ValidateCorrelationId: an integer id for a BYTES CORRID is refused; else 1 and "1"
    would be two sequences that the model sees as the one id b"1"."""
    controls = (SequenceControl("CORRID", "CORRID", "BYTES"),)
    runtime = Recording(controls=("CORRID",))
    scheduler = batcher(runtime, controls=controls)
    call(scheduler, 1, SequenceId("1", start=True))
    with pytest.raises(InvalidInput, match=r"sequence id 1 is an integer, but model 'acc' takes it as BYTES "
                                           r"\(control input 'CORRID'\): send a string"):
        call(scheduler, 2, SequenceId(1, start=True))
    assert scheduler.sequences == 1
    call(scheduler, 3, SequenceId("1", end=True))
    assert [inputs["CORRID"].tolist() for _, inputs in runtime.calls] == [[[b"1"]], [[b"1"]]]
    assert [int(inputs["X"][0, 0]) for _, inputs in runtime.calls] == [1, 3]


def test_a_request_whose_client_went_away_while_queued_never_runs() -> None:
    """As the instance pool drops it: a queued sequence request of a client that is gone does not
    run, and a START dropped so leaves its sequence unstarted."""
    runtime = Recording(delay_s=0.3)
    scheduler = batcher(runtime, count=1)
    gone = threading.Event()

    async def main() -> None:
        first = asyncio.ensure_future(scheduler.infer_async({"X": np.array([[1]], np.int32)},
                                                            CallContext(sequence=SequenceId(1, start=True))))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(scheduler.infer_async(
            {"X": np.array([[2]], np.int32)}, CallContext(sequence=SequenceId(2, start=True), cancelled=gone.is_set)))
        await asyncio.sleep(0.05)
        gone.set()
        with pytest.raises(asyncio.CancelledError):
            await second
        await first

    asyncio.run(main())
    assert [int(inputs["X"][0, 0]) for _, inputs in runtime.calls] == [1]
    assert scheduler.sequences == 1


def test_a_start_of_an_id_whose_end_has_not_run_yet_queues_behind_it() -> None:
    """The id's END was queued (not yet run) when its next START came: that START, on a lane lock
    of its own, ran before the first sequence's last requests; it must wait on the same lane."""
    runtime = Recording(delay_s=0.05)
    scheduler = batcher(runtime, count=2)
    flags = [(True, False), (False, False), (False, True), (True, False), (False, True)]

    async def main() -> None:
        await asyncio.gather(*(scheduler.infer_async({"X": np.array([[i]], np.int32)},
                                                     CallContext(sequence=SequenceId(5, start, end)))
                               for i, (start, end) in enumerate(flags)))

    asyncio.run(main())
    assert [(lane, int(inputs["X"][0, 0])) for lane, inputs in runtime.calls] == [(0, i) for i in range(5)]
    assert scheduler.sequences == 0 and not scheduler._ending


def test_a_drain_waits_for_requests_queued_behind_their_sequence() -> None:
    """A version unloading (reload, unload) answers every request of a sequence that was queued
    when it began: the drain waits for them, not only for the one running."""
    runtime = Recording(delay_s=0.05)
    scheduler = batcher(runtime, count=1)

    async def main() -> list[int]:
        tasks = [asyncio.ensure_future(scheduler.infer_async(
            {"X": np.array([[i]], np.int32)}, CallContext(sequence=SequenceId(5, start=i == 0)))) for i in range(5)]
        await asyncio.sleep(0.01)
        await scheduler.drain(5.0)
        assert all(task.done() for task in tasks)
        await asyncio.to_thread(scheduler.unload)
        return [int(answer["X"][0, 0]) for answer in await asyncio.gather(*tasks)]

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]


def test_requests_still_queued_when_the_version_unloads_are_told_so() -> None:
    """Past the drain's time, a request still queued behind its sequence is Unavailable (503: retry),
    not an internal error from the lane that shut."""
    runtime = Recording(delay_s=0.1)
    scheduler = batcher(runtime, count=1)

    async def main() -> list[object]:
        tasks = [asyncio.ensure_future(scheduler.infer_async(
            {"X": np.array([[i]], np.int32)}, CallContext(sequence=SequenceId(5, start=i == 0)))) for i in range(4)]
        await asyncio.sleep(0.01)
        await scheduler.drain(0.0)
        await asyncio.to_thread(scheduler.unload)
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    answers = asyncio.run(main())
    assert [int(a["X"][0, 0]) for a in answers if isinstance(a, dict)] == [0]
    assert [type(a) for a in answers[1:]] == [Unavailable] * 3, answers


def test_requests_queued_behind_a_start_that_never_ran_are_refused() -> None:
    """Sequence 2's START misses its deadline behind sequence 1 on the one lane; its next request,
    already queued, must not reach the model as a continuation of a sequence it never saw."""
    runtime = Recording(delay_s=0.3)
    scheduler = batcher(runtime, count=1)

    def x(value: int) -> Arrays:
        return {"X": np.array([[value]], np.int32)}

    async def main() -> list[object]:
        first = asyncio.ensure_future(scheduler.infer_async(x(1), CallContext(sequence=SequenceId(1, start=True))))
        await asyncio.sleep(0.01)
        start = asyncio.ensure_future(scheduler.infer_async(x(2), CallContext(
            sequence=SequenceId(2, start=True), deadline=time.perf_counter() + 0.1)))
        await asyncio.sleep(0.01)
        later = asyncio.ensure_future(scheduler.infer_async(x(3), CallContext(sequence=SequenceId(2))))
        return list(await asyncio.gather(first, start, later, return_exceptions=True))

    _, start, later = asyncio.run(main())
    assert isinstance(start, DeadlineExceeded)
    assert isinstance(later, InvalidInput) and "must specify the START flag" in later.message
    assert [int(inputs["X"][0, 0]) for _, inputs in runtime.calls] == [1]
    call(scheduler, 4, SequenceId(2, start=True))  # it may start again
    assert int(runtime.calls[-1][1]["START"][0, 0]) == 1


class Accumulating(Runtime):
    """OUT = STATE_OUT = STATE_IN + X (INT64 [1, n]); ``forget`` leaves the state output out."""

    def __init__(self, forget: bool = False) -> None:
        self.inputs = (TensorSpec("X", "INT64", (-1, -1)), TensorSpec("STATE_IN", "INT64", (-1, -1)))
        self.outputs = (TensorSpec("OUT", "INT64", (-1, -1)), TensorSpec("STATE_OUT", "INT64", (-1, -1)))
        self.max_batch_size = 4
        self.forget = forget
        self.seen: list[list[list[int]]] = []

    def infer(self, inputs: Arrays) -> Arrays:
        self.seen.append(inputs["STATE_IN"].tolist())
        total = inputs["STATE_IN"] + inputs["X"]
        return {"OUT": total} if self.forget else {"OUT": total, "STATE_OUT": total}


STATES = (SequenceState("STATE_IN", "STATE_OUT", "INT64", (-1,)),)


def state_batcher(runtime: Runtime, idle_us: int = 1_000_000, client_outputs: frozenset[str] = frozenset(),
                  initial: InitialState | None = None) -> SequenceBatcher:
    states = tuple(dataclasses.replace(s, initial=initial) for s in STATES)
    return SequenceBatcher(InstancePool(runtime, 1, "acc:1"), SequenceBatching(idle_us, states=states), client_outputs)


def add(scheduler: SequenceBatcher, values: list[int], sequence: SequenceId) -> Arrays:
    context = CallContext(sequence=sequence)
    return asyncio.run(scheduler.infer_async({"X": np.array([values], np.int64)}, context))


def test_implicit_state_is_fed_back_per_sequence_and_freed_at_its_end() -> None:
    runtime = Accumulating()
    scheduler = state_batcher(runtime)
    assert [s.name for s in scheduler.inputs] == ["X"] and [s.name for s in scheduler.outputs] == ["OUT"]
    assert "implicit state" in scheduler.supplied_inputs["STATE_IN"]
    answer = add(scheduler, [1, 2], SequenceId(1, start=True))
    assert {name: value.tolist() for name, value in answer.items()} == {"OUT": [[1, 2]]}  # zeros of [1, 1] to start
    assert add(scheduler, [5], SequenceId(2, start=True))["OUT"].tolist() == [[5]]
    assert scheduler.state_bytes == 3 * 8
    assert add(scheduler, [10, 10], SequenceId(1))["OUT"].tolist() == [[11, 12]]
    assert add(scheduler, [1], SequenceId(2, end=True))["OUT"].tolist() == [[6]]
    assert scheduler.state_bytes == 2 * 8  # sequence 2 ended: only sequence 1's state is held
    assert add(scheduler, [1], SequenceId(2, start=True))["OUT"].tolist() == [[1]]  # a new sequence starts afresh
    assert add(scheduler, [0, 0], SequenceId(1, end=True))["OUT"].tolist() == [[11, 12]]
    assert runtime.seen[0] == [[0]]


def test_an_idle_sequences_state_is_freed() -> None:
    scheduler = state_batcher(Accumulating(), idle_us=50_000)
    add(scheduler, [1, 2, 3], SequenceId(7, start=True))
    assert scheduler.state_bytes == 24
    time.sleep(0.15)
    with pytest.raises(InvalidInput, match="must specify the START flag"):  # the sweep runs as requests come
        add(scheduler, [1], SequenceId(7))
    assert scheduler.state_bytes == 0 and scheduler.sequences == 0


def test_a_start_gets_the_initial_state_and_a_declared_state_output_is_answered() -> None:
    runtime = Accumulating()
    initial = InitialState("i", "INT64", (2,), "file", "i.bin", np.array([100, 200], "<i8").tobytes())
    scheduler = state_batcher(runtime, client_outputs=frozenset({"OUT", "STATE_OUT"}), initial=initial)
    assert [s.name for s in scheduler.outputs] == ["OUT", "STATE_OUT"]
    answer = add(scheduler, [1, 1], SequenceId(3, start=True))
    assert answer["OUT"].tolist() == [[101, 201]] and answer["STATE_OUT"].tolist() == [[101, 201]]
    add(scheduler, [1, 1], SequenceId(4, start=True))
    assert runtime.seen == [[[100, 200]], [[100, 200]]]  # each START from the initial state, not from another's


def test_a_model_that_does_not_return_its_state_output_fails_the_request() -> None:
    scheduler = state_batcher(Accumulating(forget=True))
    with pytest.raises(ModelError, match="did not return its state output 'STATE_OUT'"):
        add(scheduler, [1], SequenceId(1, start=True))


def test_implicit_start_starts_a_sequence_with_its_first_request() -> None:
    """TorchServe's sequenceBatching: a sequence starts with its first request, no START flag, and
    keeps its lane; without implicit_start that request is refused."""
    runtime = Recording(controls=())
    scheduler = SequenceBatcher(InstancePool(runtime, 2, "acc:1"), SequenceBatching(implicit_start=True))
    for value, sequence_id in ((1, "a"), (2, "b"), (3, "a"), (4, "b")):
        call(scheduler, value, SequenceId(sequence_id))
    lanes = [lane for lane, _ in runtime.calls]
    assert lanes[0] == lanes[2] != lanes[1] == lanes[3] and scheduler.sequences == 2
    with pytest.raises(InvalidInput, match="must specify the START flag"):
        call(batcher(Recording(controls=()), controls=()), 1, SequenceId("a"))


def test_torchserves_limits_refuse_a_sequence_too_many_and_a_request_that_would_wait_too_long() -> None:
    """max_sequences (maxNumSequence): a new sequence beyond that many live ones is refused until one
    ends; max_queued_per_sequence (maxSequenceJobQueueSize): with one request running and one
    waiting, the next of that sequence is refused at once, while other sequences go on."""
    runtime = Recording(delay_s=0.3, controls=())
    limits = SequenceBatching(implicit_start=True, max_sequences=2, max_queued_per_sequence=1)
    scheduler = SequenceBatcher(InstancePool(runtime, 2, "acc:1"), limits)

    async def run() -> tuple[list[object], list[object]]:
        def send(value: int, key: str, end: bool = False) -> asyncio.Task[Arrays]:
            context = CallContext(sequence=SequenceId(key, end=end))
            return asyncio.ensure_future(scheduler.infer_async({"X": np.array([[value]], np.int32)}, context))

        first = [send(1, "a"), send(2, "a"), send(3, "a"), send(4, "b"), send(5, "c")]
        crowded = await asyncio.gather(*first, return_exceptions=True)
        await send(6, "b", end=True)
        return crowded, [await send(7, "c")]

    crowded, after = asyncio.run(run())
    assert [type(r).__name__ for r in crowded] == ["dict", "dict", "QueueFull", "dict", "QueueFull"]
    assert "maxSequenceJobQueueSize" in str(crowded[2]) and "maxNumSequence" in str(crowded[4])
    assert isinstance(crowded[2], Unavailable)  # a refusal the client may retry (503, TorchServe's code)
    assert [a["X"].tolist() for a in after] == [[[7]]]  # b ended: c has room
