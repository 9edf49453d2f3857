"""A sequence batch's rows (sequence_rows.py): which ready requests make the batch, an empty slot's
row, the join and the split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from inferd.config import SequenceControl
from inferd.errors import ModelError
from inferd.scheduling.sequence_rows import direct_rows, empty_row, join_rows, oldest_rows, split_rows


@dataclass
class Row:
    name: str
    slot: int
    key: tuple[object, ...] = ("x", (1,))


def test_direct_rows_follow_the_slots_from_the_lowest_and_leave_other_shapes_for_later() -> None:
    ready = [Row("c", 3), Row("a", 1), Row("odd", 0, ("x", (2,))), Row("a-later", 1)]
    rows = direct_rows(ready)
    assert [row.name if row else None for row in rows] == ["odd"]  # slot 0 is the first: only its shape
    rows = direct_rows(ready[:2] + ready[3:])
    assert [row.name if row else None for row in rows] == [None, "a", None, "c"]  # one request per slot


def test_oldest_rows_take_the_heads_shape_up_to_the_maximum_and_a_preferred_size() -> None:
    ready = [Row(str(i), i, ("x", (2,)) if i == 1 else ("x", (1,))) for i in range(6)]
    assert [row.name for row in oldest_rows(ready, 4, ())] == ["0", "2", "3", "4"]
    assert [row.name for row in oldest_rows(ready, 4, (3,))] == ["0", "2", "3"]


def test_an_empty_slots_row_is_not_ready_with_corrid_zero_and_zeros() -> None:
    controls = (SequenceControl("S", "START", "BOOL", (0, 1)), SequenceControl("R", "READY", "FP32", (-1.0, 2.5)),
                SequenceControl("C", "CORRID", "BYTES"), SequenceControl("N", "CORRID", "UINT64"))
    first = {"S": np.ones((1, 1), bool), "R": np.full((1, 1), 2.5, np.float32), "C": np.full((1, 1), b"7", object),
             "N": np.full((1, 1), 7, np.uint64), "X": np.ones((1, 3), np.float64), "T": np.full((1, 1), b"t", object)}
    row = empty_row(first, controls)
    assert {name: (array.dtype, array.tolist()) for name, array in row.items()} == {
        "S": (np.dtype(bool), [[False]]), "R": (np.dtype(np.float32), [[-1.0]]), "C": (np.dtype(object), [[b""]]),
        "N": (np.dtype(np.uint64), [[0]]), "X": (np.dtype(np.float64), [[0.0, 0.0, 0.0]]),
        "T": (np.dtype(object), [[b""]])}


def test_join_and_split_are_row_for_row() -> None:
    rows = [{"x": np.full((1, 2), i, np.int32)} for i in range(3)]
    joined = join_rows(rows)
    assert joined["x"].tolist() == [[0, 0], [1, 1], [2, 2]] and join_rows(rows[:1]) is rows[0]
    assert [part["x"].tolist() for part in split_rows({"x": joined["x"] * 2}, 3, "m")] == [[[0, 0]], [[2, 2]], [[4, 4]]]
    with pytest.raises(ModelError, match="returned output 'x' with shape \\[2, 2\\] for a batch of 3 sequences"):
        split_rows({"x": joined["x"][:2]}, 3, "m")
