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
since its last answer (swept as requests come).

A model that batches (max_batch_size > 1) runs the ready requests of its instance's sequences
together, one row per sequence (Triton's strategies, sequence_rows.py): each instance has slots
(``direct``: max_batch_size; ``oldest``: max_candidate_sequences, else max_batch_size), a START
takes a free slot of the instance with the fewest sequences, or waits for one in a backlog (in the
order they came) until a sequence ends or idles out. A free instance runs what is ready at once when
every instance is free (the dynamic batcher's rule); with another one busy it waits up to the
strategy's max_queue_delay_microseconds for a fuller batch (``oldest``: a preferred size, else
max_batch_size; ``direct``: the minimum_slot_utilization share of slots, no wait when that is 0, as
Triton); with ``holds`` (``--batch-wait delay``) it waits so with every instance idle too, as Triton.
Each row gets its own sequence's controls and state; each request gets its own row of the
answer (a Triton Python model gets the ready requests apart, no empty slots, and answers each). A
model that does not batch runs each request alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from inferd.config import SequenceBatching, SequenceControl, SequenceState
from inferd.errors import DeadlineExceeded, InvalidInput, ModelError, QueueFull
from inferd.runtimes.base import (
    SEQUENCE_END,
    SEQUENCE_INPUT,
    SEQUENCE_START,
    Answer,
    Arrays,
    pack_sequence,
    with_request,
)
from inferd.scheduling.batcher import batch_key
from inferd.scheduling.instances import InstancePool
from inferd.scheduling.policy import decide, hold_or_send
from inferd.scheduling.scheduler import Scheduler, SchedulerStats
from inferd.scheduling.sequence_rows import direct_rows, empty_row, join_rows, oldest_rows, split_rows
from inferd.types import CallContext, SequenceId, WorkerStatus, numpy_dtype

log = logging.getLogger("inferd.sequence")
_SWEEP_S = 0.1  # idle sequences are looked for at most this often


@dataclass(slots=True, eq=False)
class _Sequence:
    lane: int  # -1: waiting in the backlog for a slot
    last_used: float  # time.monotonic()
    slot: int = -1  # its slot on its lane's instance (a model that batches), else -1
    losses: int = -1  # the lane's lane_losses when the sequence started (-1: not yet run)
    dropped: bool = False  # its START never ran (deadline, client gone): the requests queued behind it are refused
    states: Arrays | None = None  # its implicit state: the state inputs of its next request (None: not run yet)
    waiting: int = 0  # its requests queued behind the one running (max_queued_per_sequence)
    order: asyncio.Lock = field(default_factory=asyncio.Lock)  # FIFO: requests run as they came
    started: float = 0.0  # time.monotonic() when it started (max_sequence_lifetime_us)


@dataclass(slots=True, eq=False)
class _Ready:
    """A sequence's next request, its arrays complete, waiting on its lane for a batch."""

    sequence: _Sequence
    arrays: Arrays
    key: tuple[object, ...]
    context: CallContext
    enqueued: float  # time.perf_counter()
    future: asyncio.Future[Arrays]

    @property
    def slot(self) -> int:
        return self.sequence.slot


class SequenceBatcher(Scheduler):
    """Runs a pool's runtime sequence by sequence; one thread per instance lane."""

    stateful = True

    def __init__(self, pool: InstancePool, config: SequenceBatching,
                 client_outputs: frozenset[str] = frozenset(), holds: bool = False) -> None:
        """``client_outputs``: the outputs the configuration declares; a state output among them is
        also answered (Triton's way to read a state), the others are the server's alone. ``holds``
        (``--batch-wait delay``): a free instance waits for a fuller batch as Triton's does, even
        with every instance idle (_held_rows)."""
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
        self._lifetime_s = config.max_sequence_lifetime_us / 1e6
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
        self._strategy = config.strategy or "direct"
        self._preserve_ordering = config.preserve_ordering
        self._last_turn: asyncio.Future[None] | None = None  # preserve_ordering: the latest request's answer
        # a model that batches: slots per instance (0: each request runs alone)
        self._slots = 0
        if self.max_batch_size > 1:
            self._slots = (config.max_candidate_sequences if self._strategy == "oldest" else 0) or self.max_batch_size
        self._delay_s, self._preferred = _batch_policy(config, self._strategy, self.max_batch_size)
        self._holds = holds
        self._draining = False  # a held batch goes at once
        self._backlog: list[_Sequence] = []  # sequences waiting for a slot, in the order they came
        self._freed = asyncio.Event()  # set (and replaced) when a slot may have freed
        self._ready: list[list[_Ready]] = [[] for _ in self._lanes]  # per lane, in arrival order
        self._lane_busy = [False] * len(self._lanes)
        self._lane_soon: list[asyncio.TimerHandle | asyncio.Handle | None] = [None] * len(self._lanes)
        self._loop: asyncio.AbstractEventLoop | None = None

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
        turn = self._take_turn() if self._preserve_ordering else None
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
                try:
                    if state.lane < 0 and (sequence.start or not state.dropped):
                        await self._seated(state, context)
                    self._still_kept(sequence, state)
                    arrays = self._arrays(inputs, sequence, state, context)
                    if self._slots:
                        outputs = await self._run_in_batch(state, arrays, context)
                    else:
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
            if self._backlog:  # its sequence may have ended or been dropped: a slot for the next one
                self._wake_backlog()
            if turn is not None:
                await _in_turn(*turn)

    def _take_turn(self) -> tuple[asyncio.Future[None] | None, asyncio.Future[None]]:
        """preserve_ordering: this request's place among every sequence's answers (the one before it, its own)."""
        before, mine = self._last_turn, self._bind_loop().create_future()
        self._last_turn = mine
        return before, mine

    def _arrays(self, inputs: Arrays, sequence: SequenceId, state: _Sequence, context: CallContext) -> Arrays:
        """The request's inputs with its sequence's controls and state (and, for Python models,
        its correlation id and flags, and the request's own facts)."""
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
        return arrays

    def _keep_states(self, state: _Sequence, outputs: Arrays, end: bool) -> Arrays:
        """The state outputs become the sequence's next state inputs (dropped at its END); the
        answer keeps only what the client may see."""
        missing = [s.output_name for s in self._states if s.output_name not in outputs]
        if missing:
            raise ModelError(f"model '{self._pool.name}' did not return its state output '{missing[0]}' "
                             f"(it returned {sorted(outputs)})")
        if end:
            state.states = None
        else:  # a state the client also reads is kept as a copy: the model may change its input in place;
            #    a batch's row too, so that the sequence holds its row, not the batch
            state.states = {s.input_name: outputs[s.output_name] if s.output_name in self._kept_outputs
                            and not self._slots else outputs[s.output_name].copy() for s in self._states}
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
                    raise InvalidInput(f"sequence batching control 'CORRID' data-type is 'UINT64', but model "
                                       f"'{name}' expects 'BYTES' (control input '{control.name}'): send sequence id "
                                       f"{sequence.id} as a string")
                continue
            if isinstance(sequence.id, str):
                raise InvalidInput(f"sequence batching control 'CORRID' data-type is 'BYTES', but model '{name}' "
                                   f"expects '{control.datatype}' (control input '{control.name}'): send sequence id "
                                   f"'{sequence.id}' as an integer")
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
        if state is None and self._slots:
            lane, slot = self._free_slot() if not self._backlog else (-1, -1)  # the backlog goes first
            state = _Sequence(lane, now, slot, started=now)
        elif state is None:
            load = [0] * len(self._lanes)
            for other in self._sequences.values():
                load[other.lane] += 1
            state = _Sequence(load.index(min(load)), now, started=now)
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
        idle = [key for key, state in self._sequences.items() if not state.order.locked() and (
            now - state.last_used > self._idle_s or 0 < self._lifetime_s < now - state.started)]
        for key in idle:
            log.info("model '%s': sequence %s idle over %.0f us (or idle after its %.0f us); released",
                     self._pool.name, key, self._idle_s * 1e6, self._lifetime_s * 1e6)
            self._sequences.pop(key).states = None
        if idle and self._backlog:
            self._wake_backlog()

    # -- slots and the backlog (a model that batches) ----------------------------------------
    def _free_slot(self) -> tuple[int, int]:
        """A free slot (lane, slot) on the instance with the fewest sequences; (-1, -1): none."""
        held: dict[int, set[int]] = {lane: set() for lane in range(self._pool.instances)}
        for state in {id(s): s for s in (*self._sequences.values(), *self._ending.values())}.values():
            if state.lane in held and state.slot >= 0:
                held[state.lane].add(state.slot)
        lane = min(held, key=lambda lane: len(held[lane]))
        if len(held[lane]) >= self._slots:
            return -1, -1
        slot = 0
        while slot in held[lane]:
            slot += 1
        return lane, slot

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        """The loop the lanes' batches are settled on: the server has one (a caller with a loop of
        its own per call, as tests, gets the queue's events made anew)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._freed = loop, asyncio.Event()
            self._lane_soon = [None] * len(self._lanes)
        return loop

    async def _seated(self, state: _Sequence, context: CallContext) -> None:
        """A START waits in the backlog until a sequence ends or idles out and leaves it a slot
        (Triton's backlog); the deadline and the client bound the wait. What frees a slot seats
        the backlog (_wake_backlog); only the backlog's head looks for idle sequences each tick,
        so that a long backlog costs each waiter a glance, not a scan of every sequence."""
        self._bind_loop()
        self._backlog.append(state)
        try:
            while True:
                if self._backlog and self._backlog[0] is state:
                    self._seat_backlog()
                if state.lane >= 0:
                    return
                if self._closed:
                    raise self._pool.unloading()
                if context.is_cancelled():
                    raise asyncio.CancelledError("the client went away")
                wait = _SWEEP_S
                if context.deadline is not None:
                    wait = min(wait, context.deadline - time.perf_counter())
                    if wait <= 0:
                        raise DeadlineExceeded(f"model '{self._pool.name}': the request's deadline passed while "
                                               f"its sequence waited for a free slot ({self._slots} per instance)")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._freed.wait(), wait)
                if state.lane < 0 and self._backlog and self._backlog[0] is state:
                    self._swept = 0.0  # a sequence idle too long leaves its slot
                    self._sweep(time.monotonic())
        finally:
            self._backlog = [waiting for waiting in self._backlog if waiting is not state]

    def _seat_backlog(self) -> None:
        """Free slots go to the backlog's sequences in the order they came."""
        while self._backlog:
            lane, slot = self._free_slot()
            if lane < 0:
                return
            head = self._backlog.pop(0)
            head.lane, head.slot = lane, slot

    def _wake_backlog(self) -> None:
        self._seat_backlog()
        self._freed.set()  # every waiter looks again; later ones wait on a fresh event
        self._freed = asyncio.Event()

    # -- batches (a model that batches) ------------------------------------------------------
    async def _run_in_batch(self, state: _Sequence, arrays: Arrays, context: CallContext) -> Arrays:
        """The request's row of a batch on its sequence's lane: queued as ready, answered with its
        own row. At its deadline it leaves (a row still queued never runs)."""
        enqueued = time.perf_counter()
        if context.deadline is not None and enqueued > context.deadline:
            raise DeadlineExceeded(f"model '{self._pool.name}': the request's deadline passed before it ran")
        loop = self._bind_loop()
        ready = _Ready(state, arrays, batch_key(arrays), context, enqueued, loop.create_future())
        self._ready[state.lane].append(ready)
        self._pool.pending += 1  # the pool's drain waits for it, its statistics count it
        ready.future.add_done_callback(self._pool.finished)
        self._soon(state.lane)
        try:
            if context.deadline is None:
                return await ready.future
            done, _ = await asyncio.wait((ready.future,), timeout=max(context.deadline - time.perf_counter(), 0.0))
        except asyncio.CancelledError:
            self._leave(ready)
            raise
        if not done:
            self._leave(ready)
            raise DeadlineExceeded(f"model '{self._pool.name}': the request's deadline passed while it waited "
                                   "for its sequence's instance")
        return ready.future.result()

    def _leave(self, ready: _Ready) -> None:
        """A row still queued is taken out and never runs; one running keeps its place in the batch."""
        queue = self._ready[ready.sequence.lane]
        if any(other is ready for other in queue):
            queue[:] = [other for other in queue if other is not ready]
            ready.future.cancel()

    def _soon(self, lane: int) -> None:
        """Look at the lane once this loop pass has queued all that came in it (sooner than a
        wait for a fuller batch would: this request may fill it)."""
        handle = self._lane_soon[lane]
        if self._lane_busy[lane] or self._loop is None or (handle is not None and not _is_timer(handle)):
            return
        if handle is not None:
            handle.cancel()
        self._lane_soon[lane] = self._loop.call_soon(self._dispatch, lane)

    def _dispatch(self, lane: int) -> None:
        handle, self._lane_soon[lane] = self._lane_soon[lane], None
        if handle is not None:
            handle.cancel()
        if self._lane_busy[lane] or self._loop is None:
            return
        if self._closed:
            self._fail_ready()
            return
        for ready in self._ready[lane]:
            if ready.context.is_cancelled() and not ready.future.done():
                ready.future.cancel()  # the client went away: it never runs
        queue = self._ready[lane] = [ready for ready in self._ready[lane] if not ready.future.done()]
        if not queue:
            return
        rows: list[_Ready | None]
        if self._holds:
            held = self._held_rows(lane, queue)
            if held is None:
                return
            rows = held
        else:
            decision = decide(len(queue), time.perf_counter() - queue[0].enqueued, 1, sum(self._lane_busy),
                              self.max_batch_size, self._preferred, self._delay_s)
            if not decision.dispatch:
                if decision.wait_s is not None:
                    self._lane_soon[lane] = self._loop.call_later(decision.wait_s, self._dispatch, lane)
                return
            if self._strategy == "oldest":
                rows = list(oldest_rows(queue, self.max_batch_size, self._preferred))
            else:
                rows = list(direct_rows(queue))
        taken = {id(ready) for ready in rows if ready is not None}
        self._ready[lane] = [ready for ready in queue if id(ready) not in taken]
        try:
            future = self._loop.run_in_executor(self._lanes[lane], self._execute_rows, lane, rows)
        except RuntimeError:  # the lane shut: the version unloads
            for row in rows:
                if row is not None:
                    _settle(row, self._pool.unloading())
            return
        self._lane_busy[lane] = True
        future.add_done_callback(lambda done: self._answer_rows(lane, rows, done))

    def _held_rows(self, lane: int, queue: list[_Ready]) -> list[_Ready | None] | None:
        """The lane's next batch as Triton's strategy would take it on a free instance, or None with
        the lane looked at again when the oldest ready request's delay runs out (or a request comes).
        ``direct`` (core 73aad7c3, DirectSequenceBatch::BatcherThread): the slots with a ready request
        go once they are the minimum_slot_utilization share of max_batch_size, or the oldest has waited
        max_queue_delay; with either unset, at once. ``oldest`` batches as Triton's dynamic batcher
        (policy.hold_or_send) over one request per sequence, the preferred sizes its own. While the
        server drains, nothing waits."""
        assert self._loop is not None
        waited = time.perf_counter() - queue[0].enqueued
        if self._strategy == "oldest":
            head = queue[0].key
            compatible = [ready for ready in queue if ready.key == head]
            count, wait_s = hold_or_send([1] * len(compatible), len(compatible) < len(queue), waited,
                                         self.max_batch_size, self._preferred, self._delay_s, self._draining)
            if count:
                return list(compatible[:count])
        else:
            ready_slots = len({ready.slot for ready in queue})
            wait_s = self._delay_s - waited
            if self._draining or not self._preferred or ready_slots >= self._preferred[0] or wait_s <= 0:
                return list(direct_rows(queue))
        self._lane_soon[lane] = self._loop.call_later(wait_s, self._dispatch, lane)
        return None

    def _execute_rows(self, lane: int, rows: list[_Ready | None]) -> tuple[list[_Ready | None], _Executed]:
        """On the lane's thread: the rows still wanted, joined (an empty slot's row where one is
        not, so that every other keeps its slot), and the model's answer (None: no row left). A
        model that takes a batch as its requests gets the wanted ones apart, in slot order, and
        answers each."""
        start = time.perf_counter()
        kept: list[_Ready | None] = []
        for ready in rows:
            wanted = ready
            if ready is not None:
                ready.context.timings.queue += start - ready.enqueued
                if ready.future.done() or ready.context.is_cancelled() or (
                        ready.context.deadline is not None and start > ready.context.deadline):
                    wanted = None
            if wanted is not None or self._strategy == "direct":
                kept.append(wanted)
        while kept and kept[-1] is None:
            kept.pop()
        first = next((ready for ready in kept if ready is not None), None)
        if first is None:
            return kept, None
        if self.requests_apart:
            apart = [ready for ready in kept if ready is not None]
            try:
                return list(apart), self._pool.execute_requests([ready.arrays for ready in apart], lane)
            finally:
                compute = time.perf_counter() - start
                for ready in apart:
                    ready.context.timings.compute += compute
        empty = empty_row(first.arrays, self._controls) if None in kept else {}
        inputs = join_rows([ready.arrays if ready is not None else empty for ready in kept])
        try:
            return kept, self._pool.execute(inputs, lane, requests=sum(ready is not None for ready in kept))
        finally:
            compute = time.perf_counter() - start
            for ready in kept:
                if ready is not None:
                    ready.context.timings.compute += compute

    def _answer_rows(self, lane: int, rows: list[_Ready | None],
                     done: asyncio.Future[tuple[list[_Ready | None], _Executed]]) -> None:
        """Each row's request gets its row of the answer (or the batch's error; a request handed
        over apart its own answer); then the lane looks for its next batch."""
        self._lane_busy[lane] = False
        answered: set[int] = set()
        try:
            kept, outputs = done.result()
            if isinstance(outputs, list):
                for ready, answer in zip(kept, outputs, strict=True):
                    if ready is not None:
                        answered.add(id(ready))
                        _settle(ready, answer)
            elif outputs is not None:
                for ready, part in zip(kept, split_rows(outputs, len(kept), self._pool.name), strict=True):
                    if ready is not None:
                        answered.add(id(ready))
                        _settle(ready, part)
        except BaseException as exc:  # the model's failure (or a bad answer): every row of the batch
            for ready in rows:
                if ready is not None and id(ready) not in answered:
                    answered.add(id(ready))
                    _settle(ready, exc)
        for ready in rows:  # rows dropped before the call (deadline, client gone)
            if ready is not None and id(ready) not in answered:
                _settle(ready, DeadlineExceeded(f"model '{self._pool.name}': the request's deadline passed in "
                                                "the queue; it did not run"))
        self._dispatch(lane)

    def _fail_ready(self) -> None:
        for queue in self._ready:
            for ready in queue:
                _settle(ready, self._pool.unloading())
            queue.clear()

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

    def release_held(self) -> None:
        """From now on a batch goes without waiting for its delay (``holds``)."""
        if self._holds and not self._draining:
            self._draining = True
            for lane in range(len(self._lanes)):
                if self._ready[lane]:
                    self._dispatch(lane)

    async def drain(self, timeout: float) -> None:
        """Every admitted request finishes first, those queued behind their sequence's earlier ones
        too (the pool counts only those handed to a lane); a batch held for company goes at once."""
        deadline = time.monotonic() + timeout
        self.release_held()
        while self._admitted and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await self._pool.drain(max(deadline - time.monotonic(), 0.0))

    def resize(self, count: int) -> None:
        self._pool.resize(count)
        while len(self._lanes) < count:
            self._lanes.append(ThreadPoolExecutor(1, thread_name_prefix=f"inferd-{self._pool.name}-seq"))
            self._ready.append([])
            self._lane_busy.append(False)
            self._lane_soon.append(None)
        if self._backlog and self._loop is not None:  # new instances' slots go to the backlog
            self._loop.call_soon_threadsafe(self._wake_backlog)

    def workers(self) -> list[WorkerStatus]:
        return self._pool.workers()

    @property
    def checks_ready(self) -> bool:
        return self._pool.checks_ready

    def model_ready(self) -> bool:
        return self._pool.model_ready()

    def start_failure(self) -> str:
        return self._pool.start_failure()

    def unload(self) -> None:
        self._closed = True
        if self._loop is not None and not self._loop.is_closed():  # rows still queued past the drain are told
            self._loop.call_soon_threadsafe(self._fail_ready)
        for lane in self._lanes:
            lane.shutdown(wait=True)
        self._pool.unload()

    def describe(self) -> str:
        if self._slots:
            return (f"{self._pool.describe()}, sequence batching ({self._strategy}, {self._slots} sequences per "
                    f"instance, up to {self.max_batch_size} a batch)")
        return f"{self._pool.describe()}, sequence batching"


_Executed = Arrays | list[Answer] | None  # a joined batch's outputs, each request's answer, or nothing run


def _is_timer(handle: asyncio.TimerHandle | asyncio.Handle) -> bool:
    """A wait for a fuller batch (call_later), not a look already due (call_soon): asyncio's
    TimerHandle or uvloop's, which is no subclass of it; both have when()."""
    return isinstance(handle, asyncio.TimerHandle) or hasattr(handle, "when")


def _settle(ready: _Ready, answer: Arrays | BaseException) -> None:
    if ready.future.done():
        return
    if isinstance(answer, BaseException):
        ready.future.set_exception(answer)
    else:
        ready.future.set_result(answer)


def _batch_policy(config: SequenceBatching, strategy: str, max_batch_size: int) -> tuple[float, tuple[int, ...]]:
    """How long a free instance may wait for a fuller batch, and the sizes that end the wait:
    ``oldest``'s preferred sizes (Triton's default: max_batch_size); ``direct``'s share of slots
    (no wait at all without one, as Triton)."""
    delay_s = config.max_queue_delay_us / 1e6
    if strategy == "oldest":
        return delay_s, config.preferred_batch_sizes or (max(max_batch_size, 1),)
    if config.minimum_slot_utilization <= 0:
        return 0.0, ()
    return delay_s, (max(math.ceil(config.minimum_slot_utilization * max_batch_size), 1),)


async def _in_turn(before: asyncio.Future[None] | None, mine: asyncio.Future[None]) -> None:
    """Wait for the answer of the request that came before (preserve_ordering), then let the next one go.
    A request that fails, is refused or is cancelled still takes its turn, so none waits forever."""
    try:
        if before is not None and not before.done():
            await asyncio.shield(before)  # cancelling this answer must not cancel the one before
    finally:
        if not mine.done():
            mine.set_result(None)


def _initial_state(state: SequenceState, max_batch_size: int) -> np.ndarray:
    """A sequence's first state input: the initial_state's data or zeros (empty strings for a BYTES
    state, as Triton's zero_data), with a batch dim of 1 when the model batches (read-only: every
    sequence starts from this one array)."""
    shape = ((1,) if max_batch_size > 0 else ()) + state.start_shape()
    dtype = numpy_dtype(state.datatype)
    initial = state.initial
    if state.datatype == "BYTES":
        array = np.full(shape, b"", dtype=object)
    elif initial is not None and initial.source == "file":
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
