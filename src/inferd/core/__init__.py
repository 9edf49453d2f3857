"""The core every transport calls: the data plane (health, metadata, infer) and model control
(index, load, unload, register, scale, describe). Neither knows HTTP or gRPC."""

from __future__ import annotations

from dataclasses import dataclass, field

from inferd.core.control import ModelControl
from inferd.core.dataplane import DataPlane
from inferd.observability.metrics import Metrics
from inferd.observability.tracing import Tracer

__all__ = ["Core", "DataPlane", "ModelControl"]


@dataclass(frozen=True, slots=True)
class Core:
    """What the composition root hands each transport."""

    data: DataPlane
    control: ModelControl
    metrics: Metrics | None = None
    tracer: Tracer = field(default_factory=Tracer)  # Triton's trace extension (the data plane's, in one process)
