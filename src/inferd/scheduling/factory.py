"""Choosing the scheduler for a model version from its config: pool, then batcher on top."""

from __future__ import annotations

from inferd.config import ModelConfig
from inferd.runtimes.base import Runtime
from inferd.scheduling.instances import InstancePool


def build_scheduler(runtime: Runtime, config: ModelConfig, name: str, version: str) -> Runtime:
    batching = config.dynamic_batching
    max_queue = batching.max_queue_size if batching else 1024
    return InstancePool(runtime, config.instance_group.count, f"{name}:{version}", max_queue)
