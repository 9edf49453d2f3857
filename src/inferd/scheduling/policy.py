"""Pure batching decisions: numbers in, numbers out; no event loop, no arrays.

By default the batcher is work-conserving (``decide``): when every instance is idle it never waits,
so one client alone sees no batching delay. Batches form from what queues up while instances are
busy. When some instances are busy and one is free, that one may wait up to ``max_queue_delay_ms``
for a fuller batch (a preferred size, or the maximum), because the busy ones are already using the
hardware. With ``--batch-wait delay`` (or a model's own ``batch_wait``) it waits as Triton's does
(``hold_or_send``): a batch short of a preferred size waits for its oldest request's delay, idle
instances or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    dispatch: bool = False  # form a batch now
    wait_s: float | None = None  # otherwise: look again after this long (None: on the next event)


def plan_batch(rows: Sequence[int], max_batch_size: int, preferred: Sequence[int] = ()) -> tuple[int, int]:
    """How many requests from the head of ``rows`` make the next batch, and their total rows.

    Requests are never split: the batch holds whole requests up to ``max_batch_size`` rows. With
    ``preferred`` sizes, the batch is cut back to the largest preferred size it can hit exactly.
    """
    total, count, boundaries = 0, 0, {}
    for size in rows:
        if count and total + size > max_batch_size:
            break
        total += size
        count += 1
        boundaries[total] = count
    if total in preferred:
        return count, total
    for size in sorted(preferred, reverse=True):
        if size in boundaries:
            return boundaries[size], size
    return count, total


def decide(queued_rows: int, oldest_wait_s: float, free: int, busy: int, max_batch_size: int,
           preferred: Sequence[int], max_delay_s: float) -> Decision:
    """Whether a free instance takes a batch now, given the queue and the instances."""
    if queued_rows == 0 or free == 0:
        return Decision()
    target = max(preferred) if preferred else max_batch_size
    remaining = max_delay_s - oldest_wait_s
    if busy == 0 or queued_rows >= target or remaining <= 0:
        return Decision(dispatch=True)
    return Decision(wait_s=remaining)


def hold_or_send(rows: Sequence[int], cut: bool, waited_s: float, max_batch_size: int, preferred: Sequence[int],
                 max_delay_s: float, drain: bool = False) -> tuple[int, float]:
    """Triton's dynamic batcher's choice for a free instance (core 73aad7c3, DynamicBatchScheduler::
    GetDynamicBatch): how many of the queued requests (``rows``, in queue order, one shape; ``cut``:
    a request of another shape follows them) go now, and else how long to wait: ``(count, 0.0)`` or
    ``(0, seconds)``.

    Walking the queue, the batch grows by whole requests up to ``max_batch_size`` rows, noting the
    last point where it hit a preferred size exactly (or, when none was hit before the next request
    would pass the largest preferred size, the point before it). Before the oldest request has
    waited ``max_delay_s`` that point goes at once; after, everything that fits goes. A batch that
    cannot grow (the next request would pass ``max_batch_size``, or is of another shape) or has
    reached the largest preferred size goes at once, as does everything while the server drains, and
    with no delay set (the preferred point first). Without preferred sizes ``max_batch_size`` is the
    one, as Triton fills it in.
    """
    sizes = set(preferred) or {max_batch_size}
    largest = max(sizes)
    total = count = best = 0
    full = False
    for size in rows:
        if count and total + size > largest and not best:
            best = count
        if count and total + size > max_batch_size:
            full = True
            break
        total += size
        count += 1
        if total in sizes:
            best = count
    expired = drain or 0 < max_delay_s <= waited_s
    if best and not expired:
        return best, 0.0
    if expired or full or cut or total >= largest or max_delay_s <= 0:
        return count, 0.0
    return 0, max_delay_s - waited_s


def queue_deadline(requested: float | None, now: float, default_s: float, allow_override: bool) -> float | None:
    """When a request queued at ``now`` expires, by Triton's queue policy (core's scheduler_utils.cc,
    PolicyQueue::Enqueue): the model's default timeout, which the request's own deadline replaces
    only where the model sets ``allow_timeout_override`` and only when it is sooner. A model without a
    default keeps the request's own deadline (Triton ignores it there; inferd keeps every deadline)."""
    if default_s <= 0:
        return requested
    default = now + default_s
    if allow_override and requested is not None and requested < default:
        return requested
    return default


def inline_threshold(usable_cpus: int) -> float:
    """Model calls faster than this (seconds) run on the event loop instead of a thread.

    A thread hop costs the loop ~70 µs of CPU here, more than a fast model's whole call. With a
    single usable CPU the model's thread could not run beside the loop anyway, so inline pays off
    up to a few milliseconds (the longest the loop then stays busy); with more CPUs the thread
    runs in parallel with the loop's parsing, so only really short calls stay inline.
    """
    return 0.002 if usable_cpus <= 1 else 0.0002
