"""Choosing the scheduler for a model version from its config: a pool, and a batcher on top."""

from __future__ import annotations

from inferd.config import ModelConfig
from inferd.observability.metrics import ModelMetrics
from inferd.runtimes.base import Runtime
from inferd.scheduling.batcher import DynamicBatcher
from inferd.scheduling.instances import InstancePool


def build_scheduler(runtime: Runtime, config: ModelConfig, name: str, version: str,
                    metrics: ModelMetrics | None = None) -> Runtime:
    batching = config.dynamic_batching
    max_queue = batching.max_queue_size if batching else 1024
    observe_batch = metrics.batch if metrics is not None and batching is None else None
    on_unload = metrics.close if metrics is not None else None
    if metrics is not None and hasattr(runtime, "restarts"):  # process instances
        metrics.restarts = lambda: float(runtime.restarts)  # type: ignore[attr-defined]
    pool = InstancePool(runtime, config.instance_group.count, f"{name}:{version}", max_queue,
                        observe_batch, on_unload)
    if batching is None:
        if metrics is not None:
            metrics.track(lambda: max(pool.pending - pool.busy, 0), lambda: pool.busy)
        return pool
    batcher = DynamicBatcher(pool, batching, metrics.batch if metrics else None)
    if metrics is not None:
        metrics.track(lambda: batcher.queue_depth, lambda: batcher.busy)
    return batcher
