"""Triton's model_warmup: each sample's request run through an instance at load, before the model is
ready, so the first client request does not pay for the framework's deferred start. A sample that
fails makes the load fail with the reason (as Triton: an instance is served only once warmed up).

Inputs are zeros, random values, or a file's raw bytes (row-major; BYTES as 4-byte little-endian
lengths, each followed by its bytes) from the model folder's ``warmup/``."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from inferd.config import WarmupInput, WarmupSample
from inferd.errors import ConfigError, InferdError, describe
from inferd.protocols import tensors
from inferd.runtimes.base import Arrays, LoadContext, Runtime
from inferd.runtimes.ragged import RaggedBatching
from inferd.types import numpy_dtype

_RANDOM = np.random.default_rng(0)


def run_samples(runtime: Runtime, context: LoadContext) -> None:
    """Every warm-up sample of the model's configuration, ``count`` times each (on this instance)."""
    ragged = RaggedBatching(context.config) if context.config.ragged and not runtime.requests_apart else None
    for sample in context.config.warmup_samples:
        arrays = sample_inputs(sample, context)
        if ragged is not None:  # the model takes a batch of one, as the dynamic batcher would give it
            arrays = ragged.join([arrays])
        try:
            for _ in range(sample.count):
                if runtime.decoupled:
                    for _answer in runtime.infer_stream(arrays, threading.Event()):
                        pass
                else:
                    runtime.infer(arrays)
        except Exception as exc:
            reason = exc.message if isinstance(exc, InferdError) else describe(exc)
            raise ConfigError(f"model '{context.name}': model_warmup '{sample.name}' failed: {reason}") from None


def sample_inputs(sample: WarmupSample, context: LoadContext) -> Arrays:
    rows = [sample.batch_size] if context.config.max_batch_size > 0 else []
    folder = context.artifact.parent.parent / "warmup"  # <model>/<version>/<artifact>: the model's folder
    return {given.name: _values(given, rows + list(given.dims), folder, sample, context.name)
            for given in sample.inputs}


def _values(given: WarmupInput, shape: list[int], folder: Path, sample: WarmupSample, model: str) -> np.ndarray:
    if given.source == "file":
        path = folder / given.file
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"model '{model}': model_warmup '{sample.name}': input '{given.name}': cannot read "
                              f"{path} ({exc.strerror})") from None
        try:
            return tensors.from_raw(given.name, given.datatype, shape, raw)
        except InferdError as exc:
            raise ConfigError(f"model '{model}': model_warmup '{sample.name}': {given.name} from {path}: "
                              f"{exc.message}") from None
    if given.datatype == "BYTES":  # Triton's zero (and random) strings: empty ones
        array = np.empty(shape, dtype=object)
        array.fill(b"")
        return array
    dtype = numpy_dtype(given.datatype)
    if given.source == "zero":
        return np.zeros(shape, dtype)
    if dtype.kind == "b":
        return _RANDOM.integers(0, 2, shape).astype(dtype)
    if dtype.kind in "iu":
        return _RANDOM.integers(0, 100, shape).astype(dtype)
    return _RANDOM.random(shape).astype(dtype)

