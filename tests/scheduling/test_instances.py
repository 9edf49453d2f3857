from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from inferd.errors import DeadlineExceeded, ModelError, QueueFull
from inferd.runtimes.fake import FakeRuntime
from inferd.scheduling.instances import InstancePool
from inferd.types import CallContext, TensorSpec
from tests.conftest import holds_in_one_of

SPEC = (TensorSpec("x", "FP32", (-1, 2)),)


def fake(delay: float = 0.0, fn=lambda inputs: {"x": inputs["x"] * 2}) -> FakeRuntime:
    return FakeRuntime(SPEC, SPEC, fn, max_batch_size=8, delay_s=delay)


def test_count_instances_run_at_once() -> None:
    runtime = fake(delay=0.05)
    pool = InstancePool(runtime, count=3, name="m")

    async def main() -> list[dict]:
        return await asyncio.gather(*(pool.infer_async({"x": np.full((1, 2), i, np.float32)}, CallContext())
                                      for i in range(9)))

    results = asyncio.run(main())
    assert [r["x"][0, 0] for r in results] == [2.0 * i for i in range(9)]
    assert runtime.max_running == 3


def test_full_queue_refuses_at_once() -> None:
    pool = InstancePool(fake(delay=0.2), count=1, name="m", max_queue=2)

    async def main() -> list[object]:
        calls = [pool.infer_async({"x": np.ones((1, 2), np.float32)}, CallContext()) for _ in range(5)]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(main())
    assert sum(isinstance(r, QueueFull) for r in results) == 2
    assert sum(isinstance(r, dict) for r in results) == 3


def test_deadline_passed_in_queue_never_runs() -> None:
    runtime = fake(delay=0.1)
    pool = InstancePool(runtime, count=1, name="m")

    async def main() -> list[object]:
        first = pool.infer_async({"x": np.ones((1, 2), np.float32)}, CallContext())
        late = pool.infer_async({"x": np.ones((1, 2), np.float32)},
                                CallContext(deadline=time.perf_counter() + 0.01))
        return await asyncio.gather(first, late, return_exceptions=True)

    first, late = asyncio.run(main())
    assert isinstance(first, dict)
    assert isinstance(late, DeadlineExceeded)
    assert runtime.calls == [1]


def test_model_exception_becomes_model_error() -> None:
    def boom(inputs):
        raise ValueError("bad weights")

    pool = InstancePool(fake(fn=boom), count=1, name="m")
    with pytest.raises(ModelError, match="bad weights"):
        asyncio.run(pool.infer_async({"x": np.ones((1, 2), np.float32)}, CallContext()))


def test_fast_models_run_inline_and_slow_ones_go_back_to_threads() -> None:
    import threading

    seen: list[str] = []
    delay = {"s": 0.0}

    def fn(inputs):
        seen.append(threading.current_thread().name)
        time.sleep(delay["s"])
        return {"x": inputs["x"]}

    pool = InstancePool(fake(fn=fn), count=1, name="m")

    async def calls(n: int) -> None:
        for _ in range(n):
            await pool.infer_async({"x": np.ones((1, 2), np.float32)}, CallContext())

    asyncio.run(calls(20))
    for _ in range(20):  # a busy machine preempts some measured calls: the average settles with more
        if pool.inline:
            break
        asyncio.run(calls(20))
    assert pool.inline and seen[-1] == threading.main_thread().name  # measured fast: runs inline
    assert not seen[0].startswith("Main")  # the first calls were measured on an instance thread
    delay["s"] = 0.05
    asyncio.run(calls(4))
    assert not pool.inline  # three slow calls in a row: back to threads


def test_an_inline_model_runs_inputs_larger_than_it_was_measured_on_in_a_thread() -> None:
    import threading

    seen: list[str] = []

    def fn(inputs):
        seen.append(threading.current_thread().name)
        return {"x": inputs["x"]}

    pool = InstancePool(fake(fn=fn), count=1, name="m")

    async def call(rows: int) -> None:
        await pool.infer_async({"x": np.ones((rows, 2), np.float32)}, CallContext())

    async def main() -> None:
        for _ in range(20):
            await call(4)
        assert pool.inline and seen[-1] == threading.main_thread().name
        await call(4000)  # one large call: not on the loop, however fast the average is
        assert seen[-1] != threading.main_thread().name
        await call(3)
        assert seen[-1] == threading.main_thread().name

    asyncio.run(main())


def test_a_batch_larger_than_the_inline_ones_runs_inline_once_it_proved_fast() -> None:
    """A model first measured on small batches (a lone client) and then given larger ones: a larger
    batch runs on a thread, and once one of that size ran faster than the inline threshold, batches
    of that size run inline; one that ran slow keeps its size threaded."""
    def fn(inputs):
        if len(inputs["x"]) >= 10_000:
            time.sleep(0.05)  # a size at which the model is slow
        return {"x": inputs["x"]}

    pool = InstancePool(fake(fn=fn), count=1, name="m")

    async def main() -> None:
        for _ in range(20):
            await pool.submit({"x": np.ones((1, 2), np.float32)})
        assert pool.inline
        larger, slow = {"x": np.ones((32, 2), np.float32)}, {"x": np.ones((10_000, 2), np.float32)}
        assert not pool.runs_inline(larger)
        await pool.submit(larger)
        assert pool.runs_inline(larger)
        await pool.submit(slow)
        assert not pool.runs_inline(slow)

    asyncio.run(main())


def test_a_deadline_is_answered_when_it_passes_not_when_an_instance_frees() -> None:
    pool = InstancePool(fake(delay=0.5), count=1, name="m")

    async def main() -> float:
        first = asyncio.ensure_future(pool.infer_async({"x": np.ones((1, 2), np.float32)}, CallContext()))
        await asyncio.sleep(0.01)
        start = time.perf_counter()
        with pytest.raises(DeadlineExceeded, match="dropped"):
            await pool.infer_async({"x": np.ones((1, 2), np.float32)}, CallContext(deadline=start + 0.05))
        waited = time.perf_counter() - start
        await first
        return waited

    holds_in_one_of(3, lambda: None if (waited := asyncio.run(main())) < 0.3 else f"answered after {waited:.3f} s")


class PartsRuntime(FakeRuntime):
    """Sends ``count`` parts ``gap`` seconds apart, then answers; records what ``emit`` said."""

    parts = True

    def __init__(self, count: int, gap: float = 0.0) -> None:
        super().__init__(SPEC, SPEC, lambda inputs: inputs)
        self.count, self.gap, self.said = count, gap, []

    def infer_parts(self, inputs, emit):
        for i in range(self.count):
            self.said.append(emit({"x": np.array([float(i)], np.float32)}))
            time.sleep(self.gap)
        return {"x": np.array([-1.0], np.float32)}


async def _read(pool: InstancePool, context: CallContext, keep: int | None = None, pause: float = 0.0) -> list[float]:
    got = []
    async for answer in pool.infer_stream_async({"x": np.zeros(1, np.float32)}, context):
        got.append(float(answer["x"][0]))
        await asyncio.sleep(pause)
        if keep is not None and len(got) >= keep:
            break
    return got


def test_parts_come_in_order_before_the_answer() -> None:
    pool = InstancePool(PartsRuntime(5), 1, "parts")
    assert asyncio.run(_read(pool, CallContext())) == [0.0, 1.0, 2.0, 3.0, 4.0, -1.0]
    assert pool.pending == 0


def test_a_reader_that_leaves_stops_the_parts_not_the_call() -> None:
    runtime = PartsRuntime(6, gap=0.02)

    async def leave_early() -> list[float]:
        got = await _read(pool, CallContext(), keep=2)
        while pool.pending:  # the call runs to its end
            await asyncio.sleep(0.01)
        return got

    pool = InstancePool(runtime, 1, "parts")
    assert asyncio.run(leave_early()) == [0.0, 1.0]
    assert runtime.said[:2] == [True, True] and not any(runtime.said[3:])


def test_a_slow_reader_holds_the_model_at_its_next_part() -> None:
    from inferd.scheduling.instances import STREAM_BUFFER

    runtime = PartsRuntime(STREAM_BUFFER * 3)

    async def slow() -> tuple[int, list[float]]:
        stream = pool.infer_stream_async({"x": np.zeros(1, np.float32)}, CallContext())
        first = await anext(stream)
        await asyncio.sleep(0.3)  # the model could send them all meanwhile, were it not held
        ahead = len(runtime.said)
        rest = [float(a["x"][0]) async for a in stream]
        return ahead, [float(first["x"][0]), *rest]

    pool = InstancePool(runtime, 1, "parts")
    ahead, got = asyncio.run(slow())
    assert ahead <= STREAM_BUFFER + 2
    assert got == [*map(float, range(STREAM_BUFFER * 3)), -1.0]


def test_a_deadline_ends_an_answer_in_parts() -> None:
    def once() -> str | None:
        pool = InstancePool(PartsRuntime(20, gap=0.02), 1, "parts")
        started = time.perf_counter()
        with pytest.raises(DeadlineExceeded, match="deadline passed before its answer"):
            asyncio.run(_read(pool, CallContext(deadline=started + 0.1)))
        took = time.perf_counter() - started
        # at the deadline, not when the model is done (0.4 s)
        return None if took < 0.35 else f"ended after {took:.3f} s"

    holds_in_one_of(3, once)
