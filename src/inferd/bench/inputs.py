"""Valid request bodies built from a model's metadata: random data of the right shape and datatype."""

from __future__ import annotations

from typing import Any

import numpy as np

from inferd.protocols import kserve_v2, tensors
from inferd.types import numpy_dtype


def sample(datatype: str, shape: list[int], rng: np.random.Generator, given: bytes | None = None) -> np.ndarray:
    """Random data of ``shape``; a BYTES tensor holds ``given`` (a file's bytes) or b"inferd" everywhere."""
    if datatype == "BYTES":
        return np.array([b"inferd" if given is None else given] * int(np.prod(shape)), dtype=object).reshape(shape)
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    dtype = numpy_dtype(datatype)
    if datatype in ("FP16", "FP32", "FP64", "BF16"):
        return rng.standard_normal(shape).astype(np.float32).astype(dtype)
    return rng.integers(0, 100, shape).astype(dtype)


def concrete_shape(shape: list[int], batch: int) -> list[int]:
    """-1 in dim 0 becomes the batch size, any other -1 becomes 1."""
    return [batch if (d == -1 and i == 0) else (1 if d == -1 else d) for i, d in enumerate(shape)]


def request_body(metadata: dict[str, Any], binary: bool, batch: int = 1, seed: int = 0,
                 files: dict[str, bytes] | None = None, classification: int = 0) -> tuple[bytes, int | None]:
    """A v2 infer body for the model, and its JSON header length when ``binary``. ``files`` gives
    BYTES inputs their content (an image, say); ``classification`` asks each output for its top
    classes (Triton's classification extension) instead of the whole tensor."""
    rng = np.random.default_rng(seed)
    entries, chunks = [], []
    for spec in metadata["inputs"]:
        shape = concrete_shape(spec["shape"], batch)
        data = sample(spec["datatype"], shape, rng, (files or {}).get(spec["name"]))
        entry: dict[str, Any] = {"name": spec["name"], "shape": shape, "datatype": spec["datatype"]}
        if binary:
            raw = tensors.to_raw(data, spec["datatype"])
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = tensors.to_json(data, spec["datatype"])
        entries.append(entry)
    payload: dict[str, Any] = {"inputs": entries}
    if binary:
        payload["parameters"] = {"binary_data_output": True}
    if classification:
        payload["outputs"] = [{"name": spec["name"], "parameters": {"classification": classification,
                                                                     "binary_data": binary}}
                              for spec in metadata["outputs"]]
    header = kserve_v2.dumps(payload)
    if not binary:
        return header, None
    return header + b"".join(chunks), len(header)
