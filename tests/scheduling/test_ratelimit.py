"""The rate limiter (--rate-limit execution_count): counts, load errors, order, and pools that share
it, on real threads."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import numpy as np
import pytest

from inferd.config import DynamicBatching, RateLimit, RateResource, ResourceCount
from inferd.errors import ConfigError, DeadlineExceeded, Unavailable
from inferd.runtimes.fake import FakeRuntime
from inferd.scheduling.batcher import DynamicBatcher
from inferd.scheduling.ratelimit import Holder, RateLimitedPool, RateLimiter
from inferd.types import CallContext, TensorSpec

SPEC = (TensorSpec("x", "FP32", (-1, 2)),)


def needs(*resources: tuple[str, int] | tuple[str, int, bool], priority: int = 0) -> RateLimit:
    return RateLimit(tuple(RateResource(*r) for r in resources), priority)


def register(limiter: RateLimiter, name: str, limit: RateLimit, devices: tuple[int, ...] = (0,),
             instances: int = 1) -> Holder:
    return limiter.register(name, limit, devices, lambda: instances)


def test_each_resource_has_the_largest_count_asked_for() -> None:
    limiter = RateLimiter()
    register(limiter, "a", needs(("R1", 4), ("R2", 4)))
    register(limiter, "b", needs(("R2", 5), ("R3", 10), ("R4", 5)))
    register(limiter, "c", needs(("R1", 1), ("R3", 7), ("R4", 2)))
    assert limiter.available() == {(0, "R1"): 4, (0, "R2"): 5, (0, "R3"): 10, (0, "R4"): 5}


def test_explicit_counts_per_device_and_global_as_triton_documents_them() -> None:
    limiter = RateLimiter((ResourceCount("R1", 10), ResourceCount("R2", 5, 0), ResourceCount("R2", 8, 1),
                           ResourceCount("R3", 2)))
    register(limiter, "gpu0", needs(("R1", 1), ("R2", 1), ("R3", 1, True)), devices=(0,))
    register(limiter, "gpu1", needs(("R1", 1), ("R2", 1)), devices=(1,))
    assert limiter.available() == {(0, "R1"): 10, (0, "R2"): 5, (None, "R3"): 2, (1, "R1"): 10, (1, "R2"): 8}


def test_a_resource_given_twice_keeps_the_smaller_count() -> None:
    limiter = RateLimiter((ResourceCount("R1", 10), ResourceCount("R1", 6)))
    register(limiter, "a", needs(("R1", 1)))
    assert limiter.available() == {(0, "R1"): 6}


def test_a_need_over_the_explicit_count_fails_the_load_and_leaves_nothing() -> None:
    limiter = RateLimiter((ResourceCount("R1", 2),))
    with pytest.raises(ConfigError, match=r"model 'big': Resource count for \"R1\" is limited to 2 .* minimum "
                                          r"required count is 4"):
        register(limiter, "big", needs(("R1", 4)))
    assert limiter.available() == {}
    register(limiter, "small", needs(("R1", 2)))  # the refused model left no count behind


def test_with_explicit_counts_a_resource_left_out_has_none() -> None:
    limiter = RateLimiter((ResourceCount("R1", 2),))
    with pytest.raises(ConfigError, match=r"Resource count for \"R2\" is limited to 0"):
        register(limiter, "a", needs(("R2", 1)))


def test_a_resource_both_global_and_per_device_is_refused() -> None:
    limiter = RateLimiter()
    register(limiter, "a", needs(("R1", 1, True)))
    with pytest.raises(ConfigError, match=r"model 'b': Resource \"R1\" is present as both global and device-specific"):
        register(limiter, "b", needs(("R1", 1)))


def test_per_device_resources_on_several_gpus_are_refused_global_ones_served() -> None:
    limiter = RateLimiter()
    with pytest.raises(ConfigError, match=r"GPUs \[0, 1\] .* per-device resources \(R1\)"):
        register(limiter, "a", needs(("R1", 1)), devices=(0, 1))
    register(limiter, "b", needs(("G", 1, True)), devices=(0, 1))


def test_counts_follow_the_groups_that_remain() -> None:
    limiter = RateLimiter()
    small = register(limiter, "small", needs(("R1", 2)))
    big = register(limiter, "big", needs(("R1", 4)))
    assert limiter.available() == {(0, "R1"): 4}
    limiter.unregister(big)
    assert limiter.available() == {(0, "R1"): 2}
    limiter.unregister(small)
    assert limiter.available() == {}


def test_two_groups_needing_all_of_a_resource_take_turns() -> None:
    limiter = RateLimiter()
    a = register(limiter, "a", needs(("R1", 4)))
    b = register(limiter, "b", needs(("R1", 4)))
    limiter.acquire(a)
    acquired = threading.Event()

    def second() -> None:
        limiter.acquire(b)
        acquired.set()

    thread = threading.Thread(target=second)
    thread.start()
    assert not acquired.wait(0.3)  # b waits while a holds R1
    limiter.release(a)
    assert acquired.wait(5)
    thread.join()
    assert limiter.held() == {(0, "R1"): 4}
    limiter.release(b)
    assert limiter.held() == {}


def test_priority_weighs_who_is_granted_next() -> None:
    """Executions × priority: after two turns each, priority 1 (rank 2) goes before priority 2
    (rank 4), though the latter waited first."""
    limiter = RateLimiter()
    gate = register(limiter, "gate", needs(("R1", 1)))
    high = register(limiter, "high", needs(("R1", 1), priority=1))
    low = register(limiter, "low", needs(("R1", 1), priority=2))
    for holder in (high, low, high, low):
        limiter.acquire(holder)
        limiter.release(holder)
    limiter.acquire(gate)
    order: list[str] = []

    def wait(holder: Holder) -> None:
        limiter.acquire(holder)
        order.append(holder.name)
        limiter.release(holder)

    threads = [threading.Thread(target=wait, args=(low,))]
    threads[0].start()
    time.sleep(0.1)  # low is queued first
    threads.append(threading.Thread(target=wait, args=(high,)))
    threads[1].start()
    time.sleep(0.1)
    limiter.release(gate)
    for thread in threads:
        thread.join(5)
    assert order == ["high", "low"]


def test_only_the_first_in_order_is_granted() -> None:
    """A large need at the front is not overtaken by a small one that would fit (Triton's order)."""
    limiter = RateLimiter()
    small = register(limiter, "small", needs(("R1", 1)))
    large = register(limiter, "large", needs(("R1", 4)))
    limiter.acquire(small)
    order: list[str] = []

    def wait(holder: Holder) -> None:
        limiter.acquire(holder)
        order.append(holder.name)
        limiter.release(holder)

    first = threading.Thread(target=wait, args=(large,))
    first.start()
    time.sleep(0.1)
    second = threading.Thread(target=wait, args=(small,))
    second.start()
    time.sleep(0.2)
    assert order == []  # 3 of R1 are free, but the large need is first
    limiter.release(small)
    first.join(5)
    second.join(5)
    assert order == ["large", "small"]
    assert limiter.held() == {}


def test_a_waiter_gives_up_when_its_group_unloads_or_its_stop_says_so() -> None:
    limiter = RateLimiter()
    holder = register(limiter, "a", needs(("R1", 1)))
    other = register(limiter, "b", needs(("R1", 1)))
    limiter.acquire(holder)
    errors: list[BaseException] = []

    def wait(stop: object) -> None:
        try:
            limiter.acquire(other, stop)  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    expired = DeadlineExceeded("late")
    thread = threading.Thread(target=wait, args=(lambda: expired,))
    thread.start()
    thread.join(5)
    assert errors == [expired]
    thread = threading.Thread(target=wait, args=(None,))
    thread.start()
    time.sleep(0.1)
    limiter.close(other)
    thread.join(5)
    assert isinstance(errors[-1], Unavailable)
    limiter.release(holder)
    assert limiter.held() == {}  # nobody who gave up holds anything


def fake(delay: float, log: list[tuple[float, float]]) -> FakeRuntime:
    def record(inputs: dict) -> dict:
        start = time.perf_counter()
        time.sleep(delay)
        log.append((start, time.perf_counter()))
        return {"x": inputs["x"] * 2}

    return FakeRuntime(SPEC, SPEC, record, max_batch_size=8)


def limited_pool(limiter: RateLimiter, name: str, log: list[tuple[float, float]], count: int = 2,
                 delay: float = 0.05) -> RateLimitedPool:
    limit = needs(("R1", 4))
    holder = limiter.register(name, limit, (0,), lambda: count)
    return RateLimitedPool(fake(delay, log), count, name, limiter, holder)


def overlapping(log: list[tuple[float, float]]) -> bool:
    spans = sorted(log)
    return any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))


def test_pools_of_two_models_sharing_a_resource_never_run_at_once() -> None:
    limiter = RateLimiter()
    log: list[tuple[float, float]] = []
    first, second = limited_pool(limiter, "a", log), limited_pool(limiter, "b", log)
    batched = DynamicBatcher(second, DynamicBatching(max_queue_delay_ms=0))

    async def main() -> None:
        calls = [scheduler.infer_async({"x": np.ones((1, 2), np.float32)}, CallContext())
                 for _ in range(6) for scheduler in (first, batched)]
        await asyncio.gather(*calls)

    asyncio.run(main())
    assert len(log) >= 4 and not overlapping(log)
    assert limiter.held() == {}
    for pool in (first, second):
        pool.unload()
    assert limiter.available() == {}


def test_a_call_whose_deadline_passes_while_waiting_never_runs() -> None:
    limiter = RateLimiter()
    log: list[tuple[float, float]] = []
    slow, other = limited_pool(limiter, "slow", log, delay=0.5), limited_pool(limiter, "other", log)

    async def main() -> list[object]:
        busy = asyncio.ensure_future(slow.infer_async({"x": np.ones((1, 2), np.float32)}, CallContext()))
        await asyncio.sleep(0.1)
        late = other.infer_async({"x": np.ones((1, 2), np.float32)}, CallContext(deadline=time.perf_counter() + 0.1))
        return await asyncio.gather(busy, late, return_exceptions=True)

    busy, late = asyncio.run(main())
    assert isinstance(busy, dict)
    assert isinstance(late, DeadlineExceeded)
    time.sleep(0.2)
    assert len(log) == 1 and limiter.held() == {}


def test_unloading_a_pool_frees_its_waiting_calls_and_its_counts() -> None:
    limiter = RateLimiter()
    log: list[tuple[float, float]] = []
    slow, waiting = limited_pool(limiter, "slow", log, delay=0.5), limited_pool(limiter, "waiting", log)

    async def main() -> list[object]:
        busy = asyncio.ensure_future(slow.infer_async({"x": np.ones((1, 2), np.float32)}, CallContext()))
        await asyncio.sleep(0.1)
        stuck = asyncio.ensure_future(waiting.infer_async({"x": np.ones((1, 2), np.float32)}, CallContext()))
        await asyncio.sleep(0.1)
        started = time.perf_counter()
        await asyncio.to_thread(waiting.unload)
        assert time.perf_counter() - started < 0.3  # it did not wait for slow's call to end
        return await asyncio.gather(busy, stuck, return_exceptions=True)

    busy, stuck = asyncio.run(main())
    assert isinstance(busy, dict)
    assert isinstance(stuck, Unavailable)
    assert limiter.held() == {}
    slow.unload()
    assert limiter.available() == {}


def test_a_failing_model_gives_its_resources_back() -> None:
    limiter = RateLimiter()
    holder = limiter.register("bad", needs(("R1", 1)), (0,), lambda: 1)

    def fail(inputs: dict) -> dict:
        raise RuntimeError("boom")

    pool = RateLimitedPool(FakeRuntime(SPEC, SPEC, fail, max_batch_size=8), 1, "bad", limiter, holder)

    async def main() -> list[object]:
        return await asyncio.gather(*(pool.infer_async({"x": np.ones((1, 2), np.float32)}, CallContext())
                                      for _ in range(3)), return_exceptions=True)

    assert all("boom" in str(result) for result in asyncio.run(main()))
    assert limiter.held() == {}
    pool.unload()


def test_priority_counts_for_groups_of_one_instance() -> None:
    """A group whose next call waits gets back in line before the choice (Triton stages it again):
    with one instance each, priority 1 runs twice for each run of priority 2, not turn about."""
    limiter = RateLimiter()
    order: list[str] = []

    def pool(name: str, priority: int, delay: float) -> RateLimitedPool:
        def record(inputs: dict) -> dict:
            order.append(name)
            time.sleep(delay)
            return inputs

        holder = limiter.register(name, needs(("R1", 1), priority=priority), (0,), lambda: 1)
        return RateLimitedPool(FakeRuntime(SPEC, SPEC, record, max_batch_size=8), 1, name, limiter, holder)

    gate, high, low = pool("gate", 1, 0.3), pool("high", 1, 0.01), pool("low", 2, 0.01)

    async def main() -> None:
        def call(scheduler: RateLimitedPool) -> asyncio.Future[dict]:
            return asyncio.ensure_future(scheduler.infer_async({"x": np.ones((1, 2), np.float32)}, CallContext()))

        calls = [call(gate)]
        await asyncio.sleep(0.05)
        calls += [call(low) for _ in range(6)]
        await asyncio.sleep(0.05)
        calls += [call(high) for _ in range(6)]
        await asyncio.gather(*calls)

    asyncio.run(main())
    assert order[0] == "gate"
    assert order[1:10] == ["low", "high", "high", "low", "high", "high", "low", "high", "high"]
    assert limiter.held() == {}
