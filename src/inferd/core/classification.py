"""Triton's classification extension: an output asked for with ``classification: k`` is answered
as its top k classes per row, ``b"value:index:label"`` (``value:index`` when the output has no
label for it), highest first, as Triton's servers answer it."""

from __future__ import annotations

import numpy as np

from inferd.errors import InvalidInput


def classify(name: str, array: np.ndarray, count: int, labels: tuple[str, ...], batched: bool) -> np.ndarray:
    """``[batch, k]`` BYTES for a batching model, ``[k]`` otherwise."""
    if array.dtype.kind not in "biuf":
        raise InvalidInput(f"output '{name}': classification needs a numeric output, it holds {array.dtype}")
    if batched and array.ndim == 0:
        raise InvalidInput(f"output '{name}': classification needs a batch dimension")
    rows = array.reshape(array.shape[0], -1) if batched else array.reshape(1, -1)
    k = min(count, rows.shape[1])
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :k]
    answer = np.empty((rows.shape[0], k), dtype=object)
    for row, indices in enumerate(order):
        for column, index in enumerate(indices):
            text = f"{float(rows[row, index]):f}:{index}"
            if index < len(labels):
                text += f":{labels[index]}"
            answer[row, column] = text.encode()
    return answer if batched else answer.reshape(k)
