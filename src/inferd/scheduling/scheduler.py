"""The Scheduler: what the core may ask of a scheduled model version, beyond running it."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from inferd.runtimes.base import Arrays, Runtime
from inferd.types import BatchStatistics, CallContext


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    """A scheduler's counters since it was built."""

    instances: int  # executions that may run at once
    busy: int  # executions running now
    queued: int  # requests waiting for an instance
    executions: int  # model calls (one per batch)
    inferences: int  # rows those calls ran (batch sizes added up; 1 per call without a batch dim)
    batches: tuple[BatchStatistics, ...] = field(default=())  # per batch size: executions and their time


class Scheduler(Runtime):
    """A Runtime that schedules another one (an instance pool, a dynamic batcher): it can say how
    many instances it runs and how busy they are, and be resized."""

    # the models (name, version; None = the default) whose answers make this one's: an ensemble's steps
    composed_of: tuple[tuple[str, str | None], ...] = ()
    stateful = False  # requests name their sequence, whose state lives on one instance (the sequence batcher)

    @property
    def group_rows(self) -> int:
        """Rows of requests that may reach ``infer_async`` as one, joined along the batch
        dimension, and be answered exactly as if they had come apart: 0 unless the scheduler
        joins requests so itself (the dynamic batcher)."""
        return 0

    @property
    @abstractmethod
    def instances(self) -> int:
        """Executions that may run at once."""

    @property
    @abstractmethod
    def busy(self) -> int:
        """Executions running now."""

    @abstractmethod
    def resize(self, count: int) -> None:
        """Run ``count`` executions at once from now on (>= 1)."""

    def release_held(self) -> None:
        """The server drains: a batch held back for company goes now (the dynamic batcher's
        ``--batch-wait delay``); nothing to do for the rest."""

    def scale(self, count: int) -> None:
        """A scheduler scaled (the repository's instance update) is resized."""
        self.resize(count)

    @abstractmethod
    def statistics(self) -> SchedulerStats:
        """The counters, read without locking (a snapshot may be a call behind)."""

    async def infer_stream_async(self, inputs: Arrays, context: CallContext) -> AsyncGenerator[Arrays, None]:
        """A request's answers as they come: one, unless the model is decoupled (the instance
        pool streams those). Close the iterator to stop the model early."""
        yield await self.infer_async(inputs, context)
