"""The rows of a sequence batch (Triton's direct and oldest strategies), pure: which ready requests
of an instance's sequences make the next execution, and how their arrays join and split.

Each ready request is one row (the sequence batcher refuses a request of more). ``oldest`` takes
the oldest ready requests, one per sequence, as the dynamic batcher takes a queue's head; ``direct``
puts each sequence on the row of its slot, rows 0 up to the highest slot with a ready request, and
fills a slot without one with an empty row: its READY, START and END controls false, CORRID 0,
every other input and state zeros shaped as the batch's first request's (Triton copies that request
"as null", its data left unset; zeros here, so an execution is the same each time). Requests whose
arrays differ from the first's in shape or type (a ragged input, a state that grew) wait for a
later batch, as Triton's required_equal_inputs keeps them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

import numpy as np

from inferd.config import SequenceControl
from inferd.errors import ModelError
from inferd.runtimes.base import Arrays
from inferd.scheduling.policy import plan_batch


class ReadyRow(Protocol):
    @property
    def key(self) -> tuple[object, ...]: ...  # rows join only when their keys are equal

    @property
    def slot(self) -> int: ...  # the sequence's slot on its instance


Row = TypeVar("Row", bound=ReadyRow)


def oldest_rows(ready: Sequence[Row], max_batch_size: int, preferred: Sequence[int]) -> list[Row]:
    """The next batch of ``ready`` (in arrival order): the oldest rows that join with the first,
    up to ``max_batch_size``, cut back to a preferred size it reaches."""
    head = ready[0]
    compatible = [row for row in ready if row.key == head.key][:max_batch_size]
    count, _ = plan_batch([1] * len(compatible), max_batch_size, preferred)
    return compatible[:count]


def direct_rows(ready: Sequence[Row]) -> list[Row | None]:
    """The next batch of ``ready`` by slot: row i is slot i's oldest ready request (None: an empty
    slot), up to the highest slot with one; the lowest slot's request is the one the others must
    join with."""
    first = min(ready, key=lambda row: row.slot)
    by_slot: dict[int, Row] = {}
    for row in ready:
        if row.key == first.key and row.slot not in by_slot:
            by_slot[row.slot] = row
    return [by_slot.get(slot) for slot in range(max(by_slot) + 1)]


def empty_row(first: Arrays, controls: Sequence[SequenceControl]) -> Arrays:
    """An empty slot's arrays, shaped as ``first`` (one row): controls false (READY too), CORRID 0."""
    kinds = {control.name: control for control in controls}
    row: Arrays = {}
    for name, array in first.items():
        control = kinds.get(name)
        if array.dtype == object:
            row[name] = np.full(array.shape, b"", dtype=object)
        elif control is not None and control.kind != "CORRID":
            row[name] = np.full(array.shape, control.false_true[0], dtype=array.dtype)
        else:
            row[name] = np.zeros(array.shape, dtype=array.dtype)
    return row


def join_rows(rows: Sequence[Arrays]) -> Arrays:
    """One batch of one-row arrays (a single row is passed as it is)."""
    if len(rows) == 1:
        return rows[0]
    return {name: np.concatenate([row[name] for row in rows]) for name in rows[0]}


def split_rows(outputs: Arrays, count: int, model: str) -> list[Arrays]:
    """Row i of every output, for each of the batch's ``count`` rows (views)."""
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != count:
            raise ModelError(f"model '{model}' returned output '{name}' with shape {list(array.shape)} for a "
                             f"batch of {count} sequences; dim 0 must be the batch")
    return [{name: array[i:i + 1] for name, array in outputs.items()} for i in range(count)]
