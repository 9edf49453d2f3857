"""The core every transport calls: the data plane (health, metadata, infer) and model control
(index, load, unload, register, scale, describe). Neither knows HTTP or gRPC."""

from __future__ import annotations

from dataclasses import dataclass

from inferd.core.control import ModelControl
from inferd.core.dataplane import DataPlane
from inferd.observability.metrics import Metrics

__all__ = ["Core", "DataPlane", "ModelControl"]


@dataclass(frozen=True, slots=True)
class Core:
    """What the composition root hands each transport."""

    data: DataPlane
    control: ModelControl
    metrics: Metrics | None = None
