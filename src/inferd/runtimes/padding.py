"""Batches padded up to the sizes a model was compiled or captured for (pure numpy).

A compiled graph or a CUDA graph serves one shape; a batch of ``n`` rows runs as the smallest
built size that holds it, zeros below the real rows, and the answer keeps the first ``n`` rows.
A batch larger than every built size runs in pieces of the largest.
"""

from __future__ import annotations

import bisect

import numpy as np


def chunks(rows: int, sizes: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """``(start, stop, padded)`` pieces covering ``rows`` rows; ``sizes`` ascending, non-empty."""
    largest = sizes[-1]
    pieces = []
    start = 0
    while rows - start > largest:
        pieces.append((start, start + largest, largest))
        start += largest
    left = rows - start
    if left > 0 or not pieces:
        pieces.append((start, rows, sizes[bisect.bisect_left(sizes, left)]))
    return pieces


def pad_rows(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` with zero rows appended up to ``size`` rows (itself when it has them already)."""
    rows = array.shape[0]
    if rows == size:
        return array
    padded = np.zeros((size, *array.shape[1:]), dtype=array.dtype)
    padded[:rows] = array
    return padded
