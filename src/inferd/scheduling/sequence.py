"""The sequence batcher: a stateful model's requests, sequence by sequence (Triton's
sequence_batching).

Each request names its sequence (``CallContext.sequence``). A sequence's first request (START)
takes the instance lane with the fewest live sequences; its later requests run on that lane, one
at a time and in the order they arrived, with the control inputs the configuration asks for
(START, END, READY, CORRID) and its implicit state (Triton's sequence_batching.state: what the
model answered as each state output last time, fed back as the state input; the initial state at
START); with ``implicit_start`` (TorchServe's sequenceBatching) a request of a sequence not yet
known starts it, and ``max_sequences`` and ``max_queued_per_sequence`` (TorchServe's maxNumSequence
and maxSequenceJobQueueSize) refuse a new sequence beyond that many live ones, and a request that
would wait behind that many of its sequence's. A sequence, and the state it holds, is forgotten at
END, or once idle (nothing of it queued or running) longer than ``max_sequence_idle_microseconds``
since its last answer (swept as requests come). Requests of different sequences are not combined
into one execution: each runs as a batch of one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from inferd.config import SequenceBatching, SequenceControl, SequenceState
from inferd.errors import DeadlineExceeded, InvalidInput, ModelError, QueueFull
from inferd.runtimes.base import SEQUENCE_END, SEQUENCE_INPUT, SEQUENCE_START, Arrays, pack_sequence, with_request
from inferd.scheduling.instances import InstancePool
from inferd.scheduling.scheduler import Scheduler, SchedulerStats
from inferd.types import CallContext, SequenceId, WorkerStatus, numpy_dtype

log = logging.getLogger("inferd.sequence")
_SWEEP_S = 0.1  # idle sequences are looked for at most this often


@dataclass(slots=True)
class _Sequence:
    lane: int
    last_used: float  # time.monotonic()
    losses: int = -1  # the lane's lane_losses when the sequence started (-1: not yet run)
    dropped: bool = False  # its START never ran (deadline, client gone): the requests queued behind it are refused
    states: Arrays | None = None  # its implicit state: the state inputs of its next request (None: not run yet)
    waiting: int = 0  # its requests queued behind the one running (max_queued_per_sequence)
    order: asyncio.Lock = field(default_factory=asyncio.Lock)  # FIFO: requests run as they came


class SequenceBatcher(Scheduler):
    """Runs a pool's runtime sequence by sequence; one thread per instance lane."""

    stateful = True

    def __init__(self, pool: InstancePool, config: SequenceBatching,
                 client_outputs: frozenset[str] = frozenset()) -> None:
        """``client_outputs``: the outputs the configuration declares; a state output among them is
        also answered (Triton's way to read a state), the others are the server's alone."""
        self._pool = pool
        self.adopt_metadata(pool)
        self._controls = config.controls
        self._states = config.states
        self.supplied_inputs = {c.name: f"sequence control input {c.kind}" for c in config.controls} | {
            s.input_name: "an implicit state (sequence_batching state), kept by the server for each sequence"
            for s in config.states}
        self.inputs = tuple(spec for spec in pool.inputs if spec.name not in self.supplied_inputs)
        self._kept_outputs = {s.output_name for s in config.states} - client_outputs
        self.outputs = tuple(spec for spec in pool.outputs if spec.name not in self._kept_outputs)
        self._initial = {s.input_name: _initial_state(s, self.max_batch_size) for s in config.states}
        self._idle_s = config.max_sequence_idle_us / 1e6
        self._implicit_start = config.implicit_start
        self._max_sequences, self._max_queued = config.max_sequences, config.max_queued_per_sequence
        self._sequences: dict[int | str, _Sequence] = {}
        # sequences whose END has not run yet: a new START of the same id queues behind it, on its lane
        self._ending: dict[int | str, _Sequence] = {}
        self._lanes = [ThreadPoolExecutor(1, thread_name_prefix=f"inferd-{pool.name}-seq{i}")
                       for i in range(pool.instances)]
        self._swept = time.monotonic()
        self._closed = False
        self._admitted = 0  # requests placed and not yet answered: queued on their sequence, or running

    @property
    def instances(self) -> int:
        return self._pool.instances

    @property
    def busy(self) -> int:
        return self._pool.busy

    @property
    def sequences(self) -> int:
        """Sequences started and neither ended nor idle too long."""
        return len(self._sequences)

    @property
    def state_bytes(self) -> int:
        """Bytes of implicit state held for live sequences (and those whose END is running)."""
        held = {id(s): s for s in (*self._sequences.values(), *self._ending.values())}
        return sum(array.nbytes for s in held.values() if s.states for array in s.states.values())

    def has_queued(self) -> bool:
        """A request waits for its lane (read from any thread: a rate-limited pool asks)."""
        return any(lane._work_queue.qsize() > 0 for lane in self._lanes)

    def statistics(self) -> SchedulerStats:
        return self._pool.statistics()

    def infer(self, inputs: Arrays) -> Arrays:
        return self._pool.infer(inputs)

    async def infer_async(self, inputs: Arrays, context: CallContext) -> Arrays:
        if self._closed:
            raise self._pool.unloading()
        now = time.monotonic()
        self._sweep(now)
        sequence = self._check(inputs, context)
        self._within_limits(sequence, now)
        state = self._place(sequence, now)
        self._admitted += 1
        try:
            state.waiting += 1
            try:
                await state.order.acquire()
            finally:
                state.waiting -= 1
            try:
                if self._closed:  # it queued behind its sequence's earlier requests past the drain
                    raise self._pool.unloading()
                self._still_kept(sequence, state)
                arrays = dict(inputs)
                arrays.update(self._control_values(sequence))
                if self._states:  # each sequence starts from a copy: a model may change its state input in place
                    arrays.update({name: value.copy() for name, value in self._initial.items()}
                                  if sequence.start or state.states is None else state.states)
                if self.takes_sequence:
                    flags = (SEQUENCE_START if sequence.start else 0) | (SEQUENCE_END if sequence.end else 0)
                    arrays[SEQUENCE_INPUT] = pack_sequence(sequence.id, flags)
                if self.takes_request:
                    arrays = with_request(arrays, context)
                try:
                    outputs = await self._run(state.lane, arrays, context)
                    if self._states:
                        outputs = self._keep_states(state, outputs, sequence.end)
                    return outputs
                except (DeadlineExceeded, asyncio.CancelledError):
                    if sequence.start:  # its START was dropped: the next request must start again
                        state.dropped = True
                        if self._sequences.get(sequence.id) is state:
                            del self._sequences[sequence.id]
                    raise
            finally:
                state.order.release()
        finally:
            self._admitted -= 1
            state.last_used = time.monotonic()  # idle from its last answer: waiting and running are not idle
            if sequence.end and self._ending.get(sequence.id) is state:
                del self._ending[sequence.id]

    def _keep_states(self, state: _Sequence, outputs: Arrays, end: bool) -> Arrays:
        """The state outputs become the sequence's next state inputs (dropped at its END); the
        answer keeps only what the client may see."""
        missing = [s.output_name for s in self._states if s.output_name not in outputs]
        if missing:
            raise ModelError(f"model '{self._pool.name}' did not return its state output '{missing[0]}' "
                             f"(it returned {sorted(outputs)})")
        if end:
            state.states = None
        else:  # a state the client also reads is kept as a copy: the model may change its input in place
            state.states = {s.input_name: outputs[s.output_name] if s.output_name in self._kept_outputs
                            else outputs[s.output_name].copy() for s in self._states}
        return {name: value for name, value in outputs.items() if name not in self._kept_outputs}

    def _still_kept(self, sequence: SequenceId, state: _Sequence) -> None:
        """A START binds the sequence to its lane's instance as it is now; a later request whose
        instance went since (a crash, a restart, scaling down) would run on a fresh one that never
        saw the sequence: the sequence is forgotten and the request refused as one without START,
        as is one queued behind a START that never ran."""
        if sequence.start:
            state.dropped = False
        elif state.dropped:
            raise self._not_started(sequence)
        losses = self._pool.lane_losses(state.lane)
        if sequence.start or state.losses < 0:
            state.losses = losses
        elif state.losses != losses:
            log.warning("model '%s': sequence %s lost its state with its instance; it must start again",
                        self._pool.name, sequence.id)
            if self._sequences.get(sequence.id) is state:
                del self._sequences[sequence.id]
            raise self._not_started(sequence)

    def _not_started(self, sequence: SequenceId) -> InvalidInput:
        name = self._pool.name.rpartition(":")[0]
        return InvalidInput(f"inference request for sequence {sequence.id} to model '{name}' must specify "
                            "the START flag on the first request of the sequence")

    def _check(self, inputs: Arrays, context: CallContext) -> SequenceId:
        """Triton's refusals, in its words."""
        sequence = context.sequence
        name = self._pool.name.rpartition(":")[0]
        if sequence is None or not sequence.present():
            raise InvalidInput(f"inference request to model '{name}' must specify a non-zero or non-empty "
                               "correlation ID")
        if self.max_batch_size > 0 and inputs and next(iter(inputs.values())).shape[0] > 1:
            raise InvalidInput(f"inference request to model '{name}' must specify batch-size 1 due to "
                               "requirements of sequence batcher")
        for control in self._controls:
            if control.kind != "CORRID":
                continue
            if control.datatype == "BYTES":
                if isinstance(sequence.id, int):  # 1 and "1" are two sequences: the model must never see both as b"1"
                    raise InvalidInput(f"sequence id {sequence.id} is an integer, but model '{name}' takes it as "
                                       f"BYTES (control input '{control.name}'): send a string")
                continue
            if isinstance(sequence.id, str):
                raise InvalidInput(f"sequence id '{sequence.id}' is a string, but model '{name}' takes it as "
                                   f"{control.datatype} (control input '{control.name}'): send an integer")
            limits = np.iinfo(numpy_dtype(control.datatype))
            if not limits.min <= sequence.id <= limits.max:
                raise InvalidInput(f"sequence id {sequence.id} does not fit model '{name}''s {control.datatype} "
                                   f"control input '{control.name}' ({limits.min}..{limits.max})")
        if not sequence.start and sequence.id not in self._sequences and not self._implicit_start:
            raise self._not_started(sequence)
        return sequence

    def _within_limits(self, sequence: SequenceId, now: float) -> None:
        """TorchServe's refusals (its Model.addJobInGroup): a sequence beyond ``max_sequences`` live
        ones, or a request beyond ``max_queued_per_sequence`` waiting behind its sequence's running
        one. Sequences idle too long are swept first, so that they make room."""
        name = self._pool.name.rpartition(":")[0]
        known = self._sequences.get(sequence.id) or self._ending.get(sequence.id)
        if known is None and self._max_sequences and len(self._sequences) >= self._max_sequences:
            self._swept = 0.0
            self._sweep(now)
            if len(self._sequences) >= self._max_sequences:
                raise QueueFull(f"model '{name}' has {len(self._sequences)} sequences open, its maxNumSequence; "
                                f"sequence {sequence.id} is refused until one ends or is idle "
                                f"{self._idle_s * 1000:.0f} ms")
        if known is not None and self._max_queued and known.waiting >= self._max_queued:
            raise QueueFull(f"model '{name}': sequence {sequence.id} has {known.waiting} requests waiting behind "
                            "the one running, its maxSequenceJobQueueSize; retry once one is answered")

    def _place(self, sequence: SequenceId, now: float) -> _Sequence:
        """The sequence's state: a START takes the least used lane (or keeps the lane of a sequence
        of the same id that never ended, as Triton does, with a warning, or whose END has not run
        yet); END forgets it."""
        state = self._sequences.get(sequence.id)
        if state is None and sequence.start:
            state = self._ending.pop(sequence.id, None)  # the same id's last sequence still ends: after it
        if state is None:
            load = [0] * len(self._lanes)
            for other in self._sequences.values():
                load[other.lane] += 1
            state = _Sequence(load.index(min(load)), now)
        elif sequence.start and sequence.id in self._sequences:
            log.warning("sequence %s for model '%s' has a conflict. The previous sequence did not end before "
                        "this sequence start. Previous sequence will be terminated early.",
                        sequence.id, self._pool.name)
        state.last_used = now
        if sequence.end:
            self._sequences.pop(sequence.id, None)
            self._ending[sequence.id] = state
        else:
            self._sequences[sequence.id] = state
        return state

    def _sweep(self, now: float) -> None:
        if now - self._swept < _SWEEP_S:
            return
        self._swept = now
        idle = [key for key, state in self._sequences.items()
                if now - state.last_used > self._idle_s and not state.order.locked()]
        for key in idle:
            log.info("model '%s': sequence %s idle over %.0f us; released", self._pool.name, key,
                     self._idle_s * 1e6)
            self._sequences.pop(key).states = None

    def _control_values(self, sequence: SequenceId) -> Arrays:
        shape = (1, 1) if self.max_batch_size > 0 else (1,)
        return {control.name: _control_value(control, sequence, shape) for control in self._controls}

    async def _run(self, lane: int, arrays: Arrays, context: CallContext) -> Arrays:
        enqueued = time.perf_counter()
        if context.deadline is not None and enqueued > context.deadline:
            raise DeadlineExceeded(f"model '{self._pool.name}': the request's deadline passed before it ran")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._lanes[lane], self._execute, lane, arrays, context, enqueued)
        self._pool.pending += 1  # the pool's drain waits for it, its statistics count it
        future.add_done_callback(self._pool.finished)
        if context.deadline is None:
            return await future
        done, _ = await asyncio.wait((future,), timeout=max(context.deadline - time.perf_counter(), 0.0))
        if not done:
            raise DeadlineExceeded(f"model '{self._pool.name}': the request's deadline passed while it waited "
                                   "for its sequence's instance")
        return future.result()

    def _execute(self, lane: int, arrays: Arrays, context: CallContext, enqueued: float) -> Arrays:
        start = time.perf_counter()
        context.timings.queue += start - enqueued
        if context.deadline is not None and start > context.deadline:  # answered 504 already: never runs
            raise DeadlineExceeded(f"model '{self._pool.name}': the request's deadline passed after "
                                   f"{(start - enqueued) * 1000:.1f} ms in the queue; it did not run")
        if context.is_cancelled():
            raise asyncio.CancelledError("the client went away")
        try:
            return self._pool.execute(arrays, lane)
        finally:
            context.timings.compute += time.perf_counter() - start

    async def drain(self, timeout: float) -> None:
        """Every admitted request finishes first, those queued behind their sequence's earlier ones
        too (the pool counts only those handed to a lane)."""
        deadline = time.monotonic() + timeout
        while self._admitted and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await self._pool.drain(max(deadline - time.monotonic(), 0.0))

    def resize(self, count: int) -> None:
        self._pool.resize(count)
        while len(self._lanes) < count:
            self._lanes.append(ThreadPoolExecutor(1, thread_name_prefix=f"inferd-{self._pool.name}-seq"))

    def workers(self) -> list[WorkerStatus]:
        return self._pool.workers()

    def unload(self) -> None:
        self._closed = True
        for lane in self._lanes:
            lane.shutdown(wait=True)
        self._pool.unload()

    def describe(self) -> str:
        return f"{self._pool.describe()}, sequence batching"


def _initial_state(state: SequenceState, max_batch_size: int) -> np.ndarray:
    """A sequence's first state input: the initial_state's data or zeros, with a batch dim of 1
    when the model batches (read-only: every sequence starts from this one array)."""
    shape = ((1,) if max_batch_size > 0 else ()) + state.start_shape()
    dtype = numpy_dtype(state.datatype)
    initial = state.initial
    if initial is not None and initial.source == "file":
        array = np.frombuffer(initial.data, dtype=dtype).reshape(shape)
    else:
        array = np.zeros(shape, dtype=dtype)
    array.flags.writeable = False
    return array


def _control_value(control: SequenceControl, sequence: SequenceId, shape: tuple[int, ...]) -> np.ndarray:
    if control.kind == "CORRID":
        if control.datatype == "BYTES":
            value = np.empty(shape, dtype=object)
            value.fill(str(sequence.id).encode())
            return value
        return np.full(shape, sequence.id, dtype=numpy_dtype(control.datatype))
    on = {"START": sequence.start, "END": sequence.end, "READY": True}[control.kind]
    return np.full(shape, control.false_true[1 if on else 0], dtype=numpy_dtype(control.datatype))
