"""How one model version becomes something to serve: its artifact and backend, its device, threads
or processes, warm-up, TensorFlow's other signatures, and the scheduler the composition root wraps
around each (``Wrap``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from inferd.config import MODEL_KIND_BACKENDS, ModelConfig, with_state_tensors
from inferd.errors import ConfigError
from inferd.isolation.process import InstanceSpec, ProcessRuntime
from inferd.repository.layout import find_artifact, is_archive
from inferd.runtimes.base import LoadContext, Runtime
from inferd.runtimes.loader import load_runtime
from inferd.runtimes.spread import DeviceSpread
from inferd.runtimes.warmup import run_samples

S = TypeVar("S", bound=Runtime)

# Wraps a freshly loaded runtime (model name, version) in what serves it: the composition root
# gives scheduling's factory; a registry without one serves the bare runtime.
Wrap = Callable[[Runtime, ModelConfig, str, str], S]


@dataclass(frozen=True, slots=True)
class BuiltVersion(Generic[S]):
    served: S  # the default signature's
    signatures: dict[str, S]  # TensorFlow's other signatures, by name
    default_signature: str  # "" when the model has one signature


def build_version(name: str, version: str, path: Path, config: ModelConfig, wrap: Wrap[S],
                  prefer_tflite: bool = False) -> BuiltVersion[S]:
    """Load a version from its folder (or ``.mar`` archive). Blocks: call it off the event loop.
    ``prefer_tflite``: a model.tflite in the folder wins over its SavedModel (TF Serving's flag)."""
    if is_archive(path):  # a .mar, or a no-archive folder
        artifact, backend = path, "torchserve"
    else:
        artifact, backend = find_artifact(path, config.backend, config.default_model_filename, prefer_tflite)
    group = config.instance_group
    if group.kind == "model" and backend not in MODEL_KIND_BACKENDS:
        raise ConfigError(f"model '{name}': instance_group kind KIND_MODEL (the model keeps its own devices) is "
                          f"served for {' and '.join(MODEL_KIND_BACKENDS)} models; inferd places a {backend} model "
                          "itself: use KIND_CPU or KIND_GPU")
    devices = [f"cuda:{gpu}" for gpu in group.gpus or (0,)] if group.kind == "gpu" else ["cpu"]
    loaded = with_state_tensors(config)  # the runtime takes and gives the states the sequence batcher keeps
    contexts = [LoadContext(name=name, version=version, artifact=artifact, config=loaded, device=device)
                for device in devices]
    # a Python model's KIND_MODEL and KIND_GPU instances are processes, as every other kind's (Triton runs
    # each in a stub process); the model is told the kind and its device (GPU: count on each listed GPU)
    python_processes = backend == "python" and group.kind in ("model", "gpu")
    kind = "process" if python_processes else group.kind or group.resolved_kind(backend)
    if kind == "process":
        spec = InstanceSpec(backend, contexts[0], group.response_timeout_s or math.inf, group.memory_limit_mb,
                            devices=tuple(devices) if group.kind == "gpu" else ())
        runtime: Runtime = ProcessRuntime(spec, group.instances)
        _check_batched_streams(runtime, config, name, backend)
    else:
        runtime = _load_on(backend, contexts)
        _check_batched_streams(runtime, config, name, backend)
        runtime.warmup()
        try:
            run_samples(runtime, contexts[0])
        except BaseException:
            runtime.unload()
            raise
    wrapped: list[S] = []
    try:  # a scheduler may refuse the version (e.g. its rate limiter resources): nothing stays loaded
        signatures: dict[str, S] = {}
        for sig, other in runtime.other_signatures().items():
            signatures[sig] = wrap(other, config, name, f"{version}:{sig}")
            wrapped.append(signatures[sig])
        served = wrap(runtime, config, name, version)
    except BaseException:
        for scheduler in wrapped:
            scheduler.unload()
        runtime.unload()
        raise
    return BuiltVersion(served, signatures, runtime.signature_name)


def _check_batched_streams(runtime: Runtime, config: ModelConfig, name: str, backend: str) -> None:
    """A decoupled model under dynamic batching gets the batch as its requests, each streaming on
    its own (Triton's decoupled execute(requests)): a model that streams one request's answers
    (a generator ``infer``) cannot; it is unloaded and refused with the reason."""
    if config.decoupled and config.dynamic_batching is not None and not runtime.requests_apart:
        runtime.unload()
        raise ConfigError(f"model '{name}': a decoupled model with dynamic_batching must take a batch as its "
                          "requests (a Triton Python model's execute(requests), each answering through its own "
                          f"response sender); this {backend} model streams one request's answers at a time")


def _load_on(backend: str, contexts: list[LoadContext]) -> Runtime:
    """One runtime, or one per listed GPU behind a DeviceSpread (all unloaded if one fails)."""
    runtimes: list[Runtime] = []
    try:
        for context in contexts:
            runtimes.append(load_runtime(backend, context))
    except BaseException:
        for loaded in runtimes:
            loaded.unload()
        raise
    return runtimes[0] if len(runtimes) == 1 else DeviceSpread(runtimes)
