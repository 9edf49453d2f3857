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
        for corrid, ready in zip(inputs["CORRID"][:, 0], inputs["READY"][:, 0], strict=True):
            if ready:  # direct: sequence 3 runs on slot 1 of lane 0, slot 0 empty (READY false)
                lanes.setdefault(int(corrid), set()).add(lane)
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
    (1, SequenceId("abc", start=True), "sequence batching control 'CORRID' data-type is 'BYTES', but model 'acc' "
                                       "expects 'UINT64' (control input 'CORRID'): send sequence id 'abc' as an "
                                       "integer"),
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
    with pytest.raises(InvalidInput, match=r"sequence batching control 'CORRID' data-type is 'UINT64', but model "
                                           r"'acc' expects 'BYTES' \(control input 'CORRID'\): send sequence id 1 as "
                                           r"a string"):
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
    call(scheduler, 4, SequenceId(2, start=True))  # it may start again (on slot 1: sequence 1 holds slot 0)
    assert runtime.calls[-1][1]["START"].tolist() == [[0], [1]]


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
    # each START from the initial state, not from another's; sequence 4 on slot 1 beside the empty slot 0 (zeros)
    assert runtime.seen == [[[100, 200]], [[0, 0], [100, 200]]]


def test_a_model_that_does_not_return_its_state_output_fails_the_request() -> None:
    scheduler = state_batcher(Accumulating(forget=True))
    with pytest.raises(ModelError, match="did not return its state output 'STATE_OUT'"):
        add(scheduler, [1], SequenceId(1, start=True))


def test_a_sequence_past_its_lifetime_is_forgotten_once_idle_however_recently_used() -> None:
    """TorchServe's sequenceTimeoutMSec (max_sequence_lifetime_us): a sequence used more often than
    its idle limit still ends once it is idle after its lifetime; its next request starts a new one
    (a fresh running sum). Inside its lifetime it goes on."""
    config = SequenceBatching(10_000_000, states=STATES, implicit_start=True, max_sequence_lifetime_us=400_000)
    scheduler = SequenceBatcher(InstancePool(Accumulating(), 1, "acc:1"), config)
    sums = []
    for _ in range(3):  # 0.3 s of use, well inside the 10 s idle limit and the 0.4 s lifetime
        sums.append(int(add(scheduler, [1], SequenceId(7))["OUT"][0, 0]))
        time.sleep(0.1)
    time.sleep(0.25)  # past the lifetime, idle
    sums.append(int(add(scheduler, [1], SequenceId(7))["OUT"][0, 0]))
    assert sums == [1, 2, 3, 1]
    assert scheduler.sequences == 1


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


# -- several sequences in one execution (Triton's oldest and direct strategies) -------------------
def strategy_batcher(runtime: Runtime, strategy: str, count: int = 1, **fields: object) -> SequenceBatcher:
    config = SequenceBatching(1_000_000, CONTROLS if isinstance(runtime, Recording) else (), strategy, **fields)
    return SequenceBatcher(InstancePool(runtime, count, "acc:1"), config)


def rows_of(inputs: Arrays) -> list[tuple[int, int, int, float, bool]]:
    """Each row's (X, CORRID, START, READY, END) as the model got it."""
    return [(int(x), int(corrid), int(start), float(ready), bool(end)) for x, corrid, start, ready, end in zip(
        inputs["X"][:, 0], inputs["CORRID"][:, 0], inputs["START"][:, 0], inputs["READY"][:, 0], inputs["END"][:, 0],
        strict=True)]


async def send_all(scheduler: SequenceBatcher, requests: list[tuple[int, SequenceId]],
                   gap_s: float = 0.0) -> list[Arrays | BaseException]:
    """The requests sent together (or ``gap_s`` apart, in order); their answers or errors."""
    tasks = []
    for value, sequence in requests:
        tasks.append(asyncio.ensure_future(scheduler.infer_async({"X": np.array([[value]], np.int32)},
                                                                 CallContext(sequence=sequence))))
        if gap_s:
            await asyncio.sleep(gap_s)
    return list(await asyncio.gather(*tasks, return_exceptions=True))


def test_oldest_runs_the_ready_requests_of_several_sequences_as_one_batch_each_with_its_controls() -> None:
    """Sequences 1..4 start while the instance runs sequence 9: their STARTs run as one batch of 4,
    each row with its own CORRID and START, and each answer is its own row; one request per
    sequence per batch (sequence 1's second request runs in the next batch, after its first)."""
    runtime = Recording(delay_s=0.1)
    scheduler = strategy_batcher(runtime, "oldest")

    async def main() -> list[Arrays | BaseException]:
        busy = asyncio.ensure_future(send_all(scheduler, [(90, SequenceId(9, start=True))]))
        await asyncio.sleep(0.03)
        answers = await send_all(scheduler, [(10, SequenceId(1, start=True)), (20, SequenceId(2, start=True)),
                                             (11, SequenceId(1, end=True)), (30, SequenceId(3, start=True)),
                                             (40, SequenceId(4, start=True, end=True))])
        await busy
        return answers

    answers = asyncio.run(main())
    assert [a["X"].tolist() for a in answers if isinstance(a, dict)] == [[[10]], [[20]], [[11]], [[30]], [[40]]]
    assert [rows_of(inputs) for _, inputs in runtime.calls] == [
        [(90, 9, 1, 2.5, False)],
        [(10, 1, 1, 2.5, False), (20, 2, 1, 2.5, False), (30, 3, 1, 2.5, False), (40, 4, 1, 2.5, True)],
        [(11, 1, 0, 2.5, True)]]
    stats = scheduler.statistics()
    assert (stats.executions, stats.inferences) == (3, 6)
    assert scheduler.sequences == 3  # 9, 2 and 3 live; 1 and 4 ended


def test_oldest_takes_at_most_max_batch_size_rows_and_cuts_to_a_preferred_size() -> None:
    runtime = Recording(delay_s=0.1)
    runtime.max_batch_size = 3
    scheduler = strategy_batcher(runtime, "oldest", preferred_batch_sizes=(2,), max_candidate_sequences=8)

    async def main() -> None:
        busy = asyncio.ensure_future(send_all(scheduler, [(0, SequenceId(100, start=True))]))
        await asyncio.sleep(0.03)
        await send_all(scheduler, [(i, SequenceId(i, start=True)) for i in range(1, 6)])
        await busy

    asyncio.run(main())
    assert [[row[0] for row in rows_of(inputs)] for _, inputs in runtime.calls] == [[0], [1, 2], [3, 4], [5]]


def test_direct_keeps_each_sequence_on_its_slots_row_and_fills_empty_slots_as_not_ready() -> None:
    """Sequences 1, 2, 3 take slots 0, 1, 2; a batch runs rows 0 up to the highest slot with a ready
    request; an empty slot's row has READY, START and END false and CORRID 0 (Triton's null request)."""
    runtime = Recording()
    scheduler = strategy_batcher(runtime, "direct")
    for sequence in (1, 2, 3):
        call(scheduler, sequence, SequenceId(sequence, start=True))
    call(scheduler, 22, SequenceId(2))
    call(scheduler, 33, SequenceId(3, end=True))
    call(scheduler, 44, SequenceId(4, start=True))  # slot 2, freed by sequence 3's END
    empty = (0, 0, 0, 0.0, False)
    assert [rows_of(inputs) for _, inputs in runtime.calls] == [
        [(1, 1, 1, 2.5, False)],
        [empty, (2, 2, 1, 2.5, False)],
        [empty, empty, (3, 3, 1, 2.5, False)],
        [empty, (22, 2, 0, 2.5, False)],
        [empty, empty, (33, 3, 0, 2.5, True)],
        [empty, empty, (44, 4, 1, 2.5, False)]]
    stats = scheduler.statistics()
    assert (stats.executions, stats.inferences) == (6, 6)  # empty slots are not inferences
    assert [(b.batch_size, b.compute_infer.count) for b in stats.batches] == [(1, 1), (2, 2), (3, 3)]


def test_direct_runs_ready_slots_together_and_a_sequence_ending_frees_only_its_slot() -> None:
    runtime = Recording(delay_s=0.05)
    scheduler = strategy_batcher(runtime, "direct")

    async def main() -> None:
        await send_all(scheduler, [(1, SequenceId(1, start=True)), (2, SequenceId(2, start=True)),
                                   (3, SequenceId(3, start=True))])
        await send_all(scheduler, [(11, SequenceId(1)), (22, SequenceId(2, end=True)), (33, SequenceId(3))])
        await send_all(scheduler, [(111, SequenceId(1)), (44, SequenceId(4, start=True)), (333, SequenceId(3))])

    asyncio.run(main())
    assert [[row[:2] for row in rows_of(inputs)] for _, inputs in runtime.calls] == [
        [(1, 1), (2, 2), (3, 3)], [(11, 1), (22, 2), (33, 3)], [(111, 1), (44, 4), (333, 3)]]


def test_a_start_beyond_the_slots_waits_in_the_backlog_until_a_sequence_ends() -> None:
    """Two slots (max_candidate_sequences = 2) and a third sequence: its START waits (it does not run
    beside them) until sequence 1 ends, then takes its slot; its deadline bounds the wait."""
    runtime = Recording(delay_s=0.02)
    scheduler = strategy_batcher(runtime, "oldest", max_candidate_sequences=2)

    async def main() -> tuple[list[Arrays | BaseException], BaseException | None]:
        await send_all(scheduler, [(1, SequenceId(1, start=True)), (2, SequenceId(2, start=True))])
        late = None
        try:
            await scheduler.infer_async({"X": np.array([[9]], np.int32)}, CallContext(
                sequence=SequenceId(9, start=True), deadline=time.perf_counter() + 0.15))
        except DeadlineExceeded as exc:
            late = exc
        third = asyncio.ensure_future(send_all(scheduler, [(3, SequenceId(3, start=True))]))
        await asyncio.sleep(0.15)
        assert not third.done()
        await send_all(scheduler, [(11, SequenceId(1, end=True))])
        return await third, late

    (answer,), late = asyncio.run(main())
    assert isinstance(answer, dict) and answer["X"].tolist() == [[3]]
    assert late is not None and "waited for a free slot (2 per instance)" in late.message
    assert [[row[1] for row in rows_of(inputs)] for _, inputs in runtime.calls] == [[1, 2], [1], [3]]
    assert scheduler.sequences == 2


def test_a_slot_held_by_an_idle_sequence_goes_to_the_backlog() -> None:
    runtime = Recording()
    config = SequenceBatching(100_000, CONTROLS, "oldest", max_candidate_sequences=1)
    scheduler = SequenceBatcher(InstancePool(runtime, 1, "acc:1"), config)
    call(scheduler, 1, SequenceId(1, start=True))
    started = time.perf_counter()
    call(scheduler, 2, SequenceId(2, start=True))  # waits for sequence 1 to idle out (0.1 s)
    assert 0.09 < time.perf_counter() - started < 2
    with pytest.raises(InvalidInput, match="must specify the START flag"):
        call(scheduler, 1, SequenceId(1))


def test_each_row_gets_its_own_sequences_state_and_keeps_its_own_row_of_the_state_output() -> None:
    """Two sequences' states in one batch (concatenated), split back: each continues from its own.
    States of another shape never share a batch."""
    runtime = Accumulating()
    runtime.seen = []
    states = (SequenceState("STATE_IN", "STATE_OUT", "INT64", (-1,)),)
    scheduler = SequenceBatcher(InstancePool(runtime, 1, "acc:1"), SequenceBatching(1_000_000, states=states,
                                                                                    strategy="oldest"))

    async def main() -> list[list[list[int]]]:
        answers = []
        for round_ in ([([1, 1], SequenceId(1, start=True)), ([10, 10], SequenceId(2, start=True)),
                        ([7], SequenceId(3, start=True))],
                       [([1, 1], SequenceId(1)), ([10, 10], SequenceId(2, end=True)), ([7], SequenceId(3))],
                       [([1, 1], SequenceId(1)), ([5, 5], SequenceId(2, start=True))]):
            got = await asyncio.gather(*(scheduler.infer_async({"X": np.array([values], np.int64)},
                                                               CallContext(sequence=sequence))
                                         for values, sequence in round_))
            answers += [answer["OUT"].tolist() for answer in got]
        return answers

    assert asyncio.run(main()) == [[[1, 1]], [[10, 10]], [[7]], [[2, 2]], [[20, 20]], [[14]], [[3, 3]], [[5, 5]]]
    # sequence 3's input, and sequence 2's after its new START, differ in shape: they run apart
    assert runtime.seen == [[[0], [0]], [[0]], [[1, 1], [10, 10]], [[7]], [[2, 2]], [[0]]]
    assert scheduler.state_bytes == 2 * 8 + 1 * 8 + 2 * 8  # sequences 1, 3 and the new 2


def test_a_model_failure_fails_every_row_of_its_batch_and_a_bad_answer_is_the_models_error() -> None:
    class Failing(Recording):
        def infer_on(self, lane: int, inputs: Arrays) -> Arrays:
            time.sleep(self.delay_s)
            if 13 in inputs["X"]:
                raise ValueError("thirteen")
            if 14 in inputs["X"]:
                return {"X": inputs["X"][:1]}
            return {"X": inputs["X"]}

    scheduler = strategy_batcher(Failing(delay_s=0.05), "oldest")

    async def main() -> list[Arrays | BaseException]:
        busy = asyncio.ensure_future(send_all(scheduler, [(0, SequenceId(100, start=True))]))
        await asyncio.sleep(0.02)
        first = await send_all(scheduler, [(1, SequenceId(1, start=True)), (13, SequenceId(2, start=True))])
        second = await send_all(scheduler, [(2, SequenceId(1)), (14, SequenceId(2))])
        third = await send_all(scheduler, [(3, SequenceId(1))])
        await busy
        return first + second + third

    one, thirteen, two, fourteen, three = asyncio.run(main())
    assert isinstance(one, ModelError) and isinstance(thirteen, ModelError) and "thirteen" in str(thirteen)
    assert isinstance(two, ModelError) and "dim 0 must be the batch" in str(fourteen)
    assert isinstance(three, dict) and three["X"].tolist() == [[3]]  # the sequence goes on


def test_a_free_instance_waits_for_a_fuller_batch_only_while_another_is_busy() -> None:
    """max_queue_delay_microseconds 200 ms: with every instance free a request runs at once (the
    work-conserving rule); with the other instance busy it waits the delay for company first."""
    runtime = Recording(delay_s=0.3)
    scheduler = strategy_batcher(runtime, "oldest", count=2, max_queue_delay_us=200_000, max_candidate_sequences=8)

    async def main() -> tuple[float, float]:
        started = time.perf_counter()
        await send_all(scheduler, [(1, SequenceId(1, start=True))])
        alone = time.perf_counter() - started
        busy = asyncio.ensure_future(send_all(scheduler, [(11, SequenceId(1))]))  # lane 0 busy
        await asyncio.sleep(0.02)
        started = time.perf_counter()
        await send_all(scheduler, [(2, SequenceId(2, start=True))])  # lane 1, free
        waited = time.perf_counter() - started
        await busy
        return alone, waited

    alone, waited = asyncio.run(main())
    assert alone < 0.45 and waited > 0.45, (alone, waited)
    assert [lane for lane, _ in runtime.calls] == [0, 0, 1]


def test_a_new_instance_gives_its_slots_to_the_backlog() -> None:
    """Two slots on the one instance, both held: a third START waits; scaling to two instances
    seats it on the new one."""
    runtime = Recording()
    runtime.max_batch_size = 2
    scheduler = strategy_batcher(runtime, "direct")

    async def main() -> Arrays:
        await send_all(scheduler, [(1, SequenceId(1, start=True)), (2, SequenceId(2, start=True))])
        third = asyncio.ensure_future(send_all(scheduler, [(3, SequenceId(3, start=True))]))
        await asyncio.sleep(0.1)
        assert not third.done()
        await asyncio.to_thread(scheduler.resize, 2)
        (answer,) = await asyncio.wait_for(third, 1.0)
        assert isinstance(answer, dict)
        return answer

    assert asyncio.run(main())["X"].tolist() == [[3]]
    assert [(lane, rows_of(inputs)[-1][1]) for lane, inputs in runtime.calls] == [(0, 2), (1, 3)]
