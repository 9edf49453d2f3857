from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from inferd.config import DynamicBatching
from inferd.errors import DeadlineExceeded, ModelError, QueueFull
from inferd.runtimes.fake import FakeRuntime
from inferd.scheduling.batcher import DynamicBatcher
from inferd.scheduling.instances import InstancePool
from inferd.types import CallContext, TensorSpec
from tests.conftest import holds_in_one_of

SPEC = (TensorSpec("x", "FP32", (-1, -1)),)


def batcher(delay: float = 0.02, count: int = 1, fn=None, **batching) -> tuple[DynamicBatcher, FakeRuntime]:
    runtime = FakeRuntime(SPEC, SPEC, fn or (lambda i: {"x": i["x"] * 10}), max_batch_size=8,
                          delay_s=delay)
    pool = InstancePool(runtime, count, "m")
    return DynamicBatcher(pool, DynamicBatching(**batching)), runtime


def rows(value: float, n: int = 1, width: int = 2) -> dict[str, np.ndarray]:
    return {"x": np.full((n, width), value, np.float32)}


def test_each_request_gets_exactly_its_rows_and_batches_form() -> None:
    b, runtime = batcher()

    async def main() -> list:
        return await asyncio.gather(*(b.infer_async(rows(i, n=1 + i % 3), CallContext())
                                      for i in range(30)))

    results = asyncio.run(main())
    for i, out in enumerate(results):
        assert out["x"].shape == (1 + i % 3, 2)
        assert np.all(out["x"] == i * 10)
    assert max(runtime.calls) > 1 and all(c <= 8 for c in runtime.calls)
    assert sum(runtime.calls) == sum(1 + i % 3 for i in range(30))


def test_a_lone_request_does_not_wait_out_the_delay() -> None:
    b, runtime = batcher(delay=0.0, max_queue_delay_ms=500)
    start = time.perf_counter()
    asyncio.run(b.infer_async(rows(1), CallContext()))
    assert time.perf_counter() - start < 0.4
    assert runtime.calls == [1]


def test_different_non_batch_shapes_never_share_a_batch() -> None:
    b, _runtime = batcher(fn=lambda i: {"x": i["x"] + i["x"].shape[1]})

    async def main() -> list:
        calls = [b.infer_async(rows(i, width=2 + i % 2), CallContext()) for i in range(10)]
        return await asyncio.gather(*calls)

    for i, out in enumerate(asyncio.run(main())):
        assert out["x"].shape == (1, 2 + i % 2)
        assert np.all(out["x"] == i + 2 + i % 2)


def test_a_failing_model_fails_every_request_of_its_batch_and_then_recovers() -> None:
    def fn(inputs):
        if np.any(inputs["x"] == 13):
            raise ValueError("unlucky")
        return {"x": inputs["x"]}

    b, _ = batcher(fn=fn)

    async def main() -> list:
        first = asyncio.gather(*(b.infer_async(rows(v), CallContext()) for v in (1, 13, 2)),
                               return_exceptions=True)
        results = await first
        results.append(await b.infer_async(rows(5), CallContext()))
        return results

    results = asyncio.run(main())
    assert any(isinstance(r, ModelError) and "unlucky" in str(r) for r in results)
    assert results[-1]["x"][0, 0] == 5


def test_wrong_batch_output_is_a_model_error_for_all() -> None:
    b, _ = batcher(fn=lambda i: {"x": i["x"][:1]})

    async def main() -> list:
        return await asyncio.gather(*(b.infer_async(rows(v), CallContext()) for v in range(4)),
                                    return_exceptions=True)

    results = asyncio.run(main())
    assert any(isinstance(r, ModelError) and "dim 0 must be the batch" in str(r) for r in results)


def test_queue_full_answers_at_once() -> None:
    b, _ = batcher(delay=0.2, max_queue_size=2)

    async def main() -> list:
        return await asyncio.gather(*(b.infer_async(rows(i), CallContext()) for i in range(6)),
                                    return_exceptions=True)

    results = asyncio.run(main())  # all six arrive in one loop pass: two fit the queue
    assert sum(isinstance(r, QueueFull) for r in results) == 4
    assert sum(isinstance(r, dict) for r in results) == 2


def test_deadline_expires_in_the_queue_and_never_runs() -> None:
    def once() -> str | None:
        b, runtime = batcher(delay=0.2)

        async def main() -> float:
            first = asyncio.ensure_future(b.infer_async(rows(1), CallContext()))
            await asyncio.sleep(0.01)
            start = time.perf_counter()
            late = b.infer_async(rows(2), CallContext(deadline=time.perf_counter() + 0.02))
            with pytest.raises(DeadlineExceeded, match="did not run"):
                await late
            took = time.perf_counter() - start
            await first
            return took

        took = asyncio.run(main())
        assert runtime.calls == [1]
        return None if took < 0.15 else f"answered after {took:.3f} s"  # at its deadline, not at dispatch (0.2 s)

    holds_in_one_of(3, once)


def test_a_request_expiring_behind_others_leaves_them_queued_in_order() -> None:
    """A batch leaves from the queue's front; a request whose deadline passes behind others leaves
    from its middle, and those around it keep their places and rows."""
    b, runtime = batcher(delay=0.1)

    async def main() -> None:
        first = asyncio.ensure_future(b.infer_async(rows(1), CallContext()))
        await asyncio.sleep(0.01)  # it runs; the rest wait behind it
        ahead = asyncio.ensure_future(b.infer_async(rows(2, n=2), CallContext()))
        late = asyncio.ensure_future(b.infer_async(rows(3), CallContext(deadline=time.perf_counter() + 0.02)))
        behind = asyncio.ensure_future(b.infer_async(rows(4, n=3), CallContext()))
        await asyncio.sleep(0.05)
        assert isinstance(late.exception(), DeadlineExceeded)
        assert b.statistics().queued == 2
        await first
        assert (await ahead)["x"].tolist() == [[20, 20]] * 2
        assert (await behind)["x"].tolist() == [[40, 40]] * 3

    asyncio.run(main())
    assert runtime.calls == [1, 5]  # the late request never ran; the two around it ran together


def test_default_timeout_applies() -> None:
    b, _runtime = batcher(delay=0.2, default_timeout_ms=20)

    async def main() -> list:
        first = asyncio.ensure_future(b.infer_async(rows(0), CallContext()))
        await asyncio.sleep(0.01)  # the first runs; the next two wait behind it
        late = [asyncio.ensure_future(b.infer_async(rows(i), CallContext())) for i in (1, 2)]
        return [await first, *await asyncio.gather(*late, return_exceptions=True)]

    results = asyncio.run(main())
    assert isinstance(results[0], dict)
    assert all(isinstance(r, DeadlineExceeded) for r in results[1:])


def test_a_disconnected_client_is_dropped_before_it_runs() -> None:
    b, runtime = batcher(delay=0.1)
    gone = {"flag": False}

    async def main() -> None:
        first = asyncio.ensure_future(b.infer_async(rows(1), CallContext()))
        await asyncio.sleep(0.01)
        dropped = asyncio.ensure_future(b.infer_async(rows(2), CallContext(cancelled=lambda: gone["flag"])))
        kept = asyncio.ensure_future(b.infer_async(rows(3), CallContext()))
        gone["flag"] = True
        await first
        assert (await kept)["x"][0, 0] == 30
        assert dropped.cancelled()

    asyncio.run(main())
    assert sum(runtime.calls) == 2


def test_instances_run_batches_in_parallel() -> None:
    b, runtime = batcher(delay=0.05, count=3)

    async def main() -> None:
        await asyncio.gather(*(b.infer_async(rows(i, n=8), CallContext()) for i in range(6)))

    asyncio.run(main())
    assert runtime.max_running == 3


def test_a_lone_client_of_an_inline_model_runs_at_once_and_company_still_batches(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A model fast enough to run inline but not trivial: while requests come one per loop pass
    they skip the queue (no queue time at all); requests arriving together batch again."""
    from inferd.scheduling import instances

    monkeypatch.setattr(instances, "TRIVIAL_S", 0.0)  # no model is trivial: this one is merely inline
    b, runtime = batcher(delay=0.0, max_queue_delay_ms=50)

    async def main() -> tuple[list[float], list[int]]:
        for _ in range(20):  # the pool measures the model and decides it runs inline
            await b.infer_async(rows(1), CallContext())
            await asyncio.sleep(0)
        assert b.pool.inline and not b.pool.trivial
        queued = []
        for _ in range(5):
            context = CallContext()
            await b.infer_async(rows(1), context)
            queued.append(context.timings.queue)
            await asyncio.sleep(0)
        runtime.calls.clear()
        await asyncio.gather(*(b.infer_async(rows(i), CallContext()) for i in range(8)))
        return queued, list(runtime.calls)

    queued, together = asyncio.run(main())
    assert queued[1:] == [0.0] * 4  # after the first, none waited in the queue
    assert len(together) <= 2 and sum(together) == 8  # at most the first ran alone


class _ApartRuntime(FakeRuntime):
    """Takes a batch as its requests (as Triton Python models do) and answers each with one value
    of its own, whatever its rows: the batcher must neither join nor split."""

    requests_apart = True

    def __init__(self) -> None:
        super().__init__(SPEC, SPEC, lambda i: i, max_batch_size=8)
        self.executions: list[list[int]] = []  # the rows of each request, per execution

    def infer_requests(self, requests: list) -> list:
        self.executions.append([len(r["x"]) for r in requests])
        time.sleep(0.05)
        return [ValueError("unlucky") if r["x"][0, 0] == 13 else {"x": r["x"][:1, :1] * 10} for r in requests]


def test_a_runtime_taking_requests_apart_gets_each_and_answers_each() -> None:
    runtime = _ApartRuntime()
    b = DynamicBatcher(InstancePool(runtime, 1, "m"), DynamicBatching())

    async def main() -> list:
        first = asyncio.ensure_future(b.infer_async(rows(1), CallContext()))
        await asyncio.sleep(0.01)  # it runs; the next four wait behind it, then go as one execution
        rest = [b.infer_async(rows(v, n=n), CallContext()) for v, n in ((2, 1), (3, 2), (13, 3), (4, 1))]
        return [await first, *await asyncio.gather(*rest, return_exceptions=True)]

    results = asyncio.run(main())
    assert runtime.executions == [[1], [1, 2, 3, 1]]
    assert [r["x"].tolist() if isinstance(r, dict) else None for r in results] == [
        [[10.0]], [[20.0]], [[30.0]], None, [[40.0]]]
    assert isinstance(results[3], ModelError) and "unlucky" in str(results[3])  # its own error alone
    stats = b.statistics()
    assert (stats.executions, stats.inferences) == (2, 1 + 1 + 2 + 1)  # the failed request's rows not counted
