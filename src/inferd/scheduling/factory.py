"""Choosing the scheduler for a model version from its config: a pool, and a batcher on top."""

from __future__ import annotations

from inferd.config import ModelConfig
from inferd.errors import ConfigError
from inferd.observability.metrics import ModelMetrics
from inferd.runtimes.base import Runtime
from inferd.runtimes.ragged import RaggedBatching
from inferd.scheduling.batcher import DynamicBatcher
from inferd.scheduling.instances import InstancePool
from inferd.scheduling.scheduler import Scheduler
from inferd.scheduling.sequence import SequenceBatcher


def build_scheduler(runtime: Runtime, config: ModelConfig, name: str, version: str,
                    metrics: ModelMetrics | None = None) -> Scheduler:
    batching = config.dynamic_batching
    max_queue = batching.max_queue_size if batching else 1024
    observe_batch = metrics.batch if metrics is not None and batching is None else None
    on_unload = metrics.close if metrics is not None else None
    if metrics is not None and runtime.out_of_process:  # process instances restart
        metrics.restarts = lambda: float(runtime.restarts)
    pool = InstancePool(runtime, config.instance_group.instances, f"{name}:{version}", max_queue,
                        observe_batch, on_unload)
    scheduler: Scheduler = pool
    if batching is not None:
        scheduler = DynamicBatcher(pool, batching, metrics.batch if metrics else None, _ragged(runtime, config, name))
    elif config.sequence_batching is not None:
        scheduler = SequenceBatcher(pool, config.sequence_batching,
                                    frozenset(tensor.name for tensor in config.outputs))
    if metrics is not None:
        metrics.track(lambda: scheduler.statistics().queued, lambda: scheduler.busy)
    return scheduler


def _ragged(runtime: Runtime, config: ModelConfig, name: str) -> RaggedBatching | None:
    """The ragged join and split, where the configuration asks for them (check_ragged_batching holds)."""
    if not config.ragged:
        return None
    if runtime.requests_apart and (config.batch_inputs or config.batch_outputs):
        raise ConfigError(f"model '{name}': batch_input and batch_output are not served for a model that takes a "
                          "batch as its requests (Python models): each request keeps its own inputs and outputs")
    return RaggedBatching(config)
