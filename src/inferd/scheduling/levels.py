"""The dynamic batcher's queue by priority level, as Triton's PriorityQueue orders it (core's
scheduler_utils.cc): a request joins the level its ``priority`` asks for, under that level's queue
policy (its bound, its timeout and what the timeout does). The batcher keeps one list; each request
has a rank, 2 × its level, plus 1 once its timeout delayed it, and the list stays ordered by rank,
first come first within a rank. So a batch takes the highest level's requests first and fills up
from the levels below, and a delayed request runs after the requests of its level (and the levels
above) that are still in time, as Triton's DELAY does.

Used only where the model has priority levels or a policy that delays: without, the batcher's queue
is the plain first-come list it always was, at the same cost."""

from __future__ import annotations

import bisect
from collections import Counter
from operator import attrgetter
from typing import Protocol, TypeVar

from inferd.config import DynamicBatching, QueuePolicy
from inferd.errors import QueueFull


class Queued(Protocol):
    level: int
    rank: int


Q = TypeVar("Q", bound=Queued)
_rank = attrgetter("rank")


class PriorityLevels:
    def __init__(self, batching: DynamicBatching, name: str) -> None:
        self._batching = batching
        self._name = name
        self._default = batching.default_policy
        self._own = dict(batching.priority_queue_policy) if batching.priority_levels else {}  # Triton: levels' only
        self._waiting: Counter[int] = Counter()  # requests queued per level, delayed ones too

    @staticmethod
    def needed(batching: DynamicBatching) -> bool:
        """Levels, or one queue whose timeout delays (a level's own policy counts only with levels)."""
        return batching.priority_levels > 0 or batching.timeout_action == "delay"

    def policy(self, level: int) -> QueuePolicy:
        return self._own.get(level, self._default)

    def admit(self, priority: int) -> int:
        """The level a request of this ``priority`` joins; QueueFull when that level is full."""
        level = self._batching.level_of(priority)
        bound = self.policy(level).max_queue_size
        if self._waiting[level] >= bound:
            queue = f"queue for priority level {level}" if level else "queue"
            raise QueueFull(f"model '{self._name}' {queue} is full ({self._waiting[level]} requests waiting"
                            f"{' at that level' if level else ''}, max_queue_size = {bound}); retry later")
        return level

    def join(self, queue: list[Q], waiting: Q) -> None:
        """Queue ``waiting`` (its level set by ``admit``) behind the requests of its rank and above."""
        waiting.rank = 2 * waiting.level
        bisect.insort_right(queue, waiting, key=_rank)
        self._waiting[waiting.level] += 1

    def leave(self, gone: list[Q]) -> None:
        for waiting in gone:
            self._waiting[waiting.level] -= 1
            if not self._waiting[waiting.level]:  # only the levels in use are kept, however many there are
                del self._waiting[waiting.level]

    def delays(self, waiting: Queued) -> bool:
        """Whether the request's queue timeout delays it rather than failing it: its level's policy
        says DELAY and the timeout was the policy's (a request's own deadline on a level without a
        default timeout still fails it, as every deadline does in inferd)."""
        policy = self.policy(waiting.level)
        return policy.timeout_action == "delay" and policy.default_timeout_ms > 0

    def delay(self, queue: list[Q], waiting: Q) -> None:
        """Move ``waiting`` behind the requests of its level that are still in time."""
        queue.remove(waiting)
        waiting.rank = 2 * waiting.level + 1
        bisect.insort_right(queue, waiting, key=_rank)
