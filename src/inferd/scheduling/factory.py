"""Choosing the scheduler for a model version from its config: a pool, and a batcher on top."""

from __future__ import annotations

from collections.abc import Callable

from inferd.config import ModelConfig
from inferd.errors import ConfigError
from inferd.observability.metrics import ModelMetrics
from inferd.runtimes.base import Runtime
from inferd.runtimes.ragged import RaggedBatching
from inferd.scheduling.batcher import DynamicBatcher
from inferd.scheduling.instances import InstancePool
from inferd.scheduling.ratelimit import RateLimitedPool, RateLimiter
from inferd.scheduling.scheduler import Scheduler
from inferd.scheduling.sequence import SequenceBatcher


def build_scheduler(runtime: Runtime, config: ModelConfig, name: str, version: str,
                    metrics: ModelMetrics | None = None, limiter: RateLimiter | None = None,
                    batch_wait: str = "work-conserving") -> Scheduler:
    """``limiter``: the server's rate limiter (``--rate-limit execution_count``), or None (off);
    ``batch_wait``: the server's ``--batch-wait``, for a dynamic or sequence batcher whose model sets none."""
    batching = config.dynamic_batching
    max_queue = batching.max_queue_size if batching else 1024
    observe_batch = metrics.batch if metrics is not None and batching is None else None
    on_unload = metrics.close if metrics is not None else None
    if metrics is not None and runtime.out_of_process:  # process instances restart
        metrics.restarts = lambda: float(runtime.restarts)
    pool = _pool(runtime, config, f"{name}:{version}", max_queue, observe_batch, on_unload, limiter)
    scheduler: Scheduler = pool
    try:
        if batching is not None:
            scheduler = DynamicBatcher(pool, batching, metrics.batch if metrics else None,
                                       _ragged(runtime, config, name),
                                       holds=batching.waits(config.parameters, batch_wait))
        elif config.sequence_batching is not None:
            scheduler = SequenceBatcher(pool, config.sequence_batching,
                                        frozenset(tensor.name for tensor in config.outputs),
                                        holds=config.sequence_batching.waits(config.parameters, batch_wait))
    except BaseException:
        if isinstance(pool, RateLimitedPool):  # refused: its group leaves the limiter's counts
            pool.leave()
        raise
    if isinstance(pool, RateLimitedPool) and isinstance(scheduler, DynamicBatcher | SequenceBatcher):
        pool.more_waiting = scheduler.has_queued  # its calls wait there, not in the pool
    if metrics is not None:
        metrics.track(lambda: scheduler.statistics().queued, lambda: scheduler.busy)
    return scheduler


def _pool(runtime: Runtime, config: ModelConfig, name: str, max_queue: int, observe_batch: Callable[[int], None] | None,
          on_unload: Callable[[], None] | None, limiter: RateLimiter | None) -> InstancePool:
    """The instances; rate limited when the limiter is on and the group lists resources to hold
    (registering may fail the load: the server cannot give what the group asks for)."""
    group = config.instance_group
    limit = group.rate_limiter
    if limiter is None or limit is None or not limit.resources:
        return InstancePool(runtime, group.instances, name, max_queue, observe_batch, on_unload)
    devices = group.gpus if group.kind == "gpu" and group.gpus else (0,)  # CPU instances: device 0, as Triton
    pools: list[InstancePool] = []
    holder = limiter.register(name, limit, devices, lambda: pools[0].instances if pools else group.instances)
    pools.append(RateLimitedPool(runtime, group.instances, name, limiter, holder, max_queue, observe_batch, on_unload))
    return pools[0]


def _ragged(runtime: Runtime, config: ModelConfig, name: str) -> RaggedBatching | None:
    """The ragged join and split, where the configuration asks for them (check_ragged_batching holds)."""
    if not config.ragged:
        return None
    if runtime.requests_apart and (config.batch_inputs or config.batch_outputs):
        raise ConfigError(f"model '{name}': batch_input and batch_output are not served for a model that takes a "
                          "batch as its requests (Python models): each request keeps its own inputs and outputs")
    return RaggedBatching(config)
