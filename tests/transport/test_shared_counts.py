"""The counts --workers N share through mapped files: each worker sees the others' slots, a worker
started again starts its slot at zero, and a dead worker's slots are zeroed by the model process."""

from __future__ import annotations

from pathlib import Path

from inferd.transport.budget import ByteBudget
from inferd.transport.shared_counts import forget_worker, worker_counts


def test_each_worker_sees_the_others_and_a_dead_ones_counts_are_forgotten(tmp_path: Path) -> None:
    views = [worker_counts(tmp_path, 3, number) for number in range(3)]
    for number, (calls, held) in enumerate(views):
        calls.publish(number + 1)
        held.publish((number + 1) * 1000)
    assert views[0][0].others() == 5 and views[2][1].others() == 3000
    forget_worker(tmp_path, 1)  # both counts of worker 1, the others' untouched
    assert views[0][0].others() == 3 and views[0][1].others() == 3000 and views[1][0].others() == 4
    forget_worker(tmp_path / "none", 0)  # no worker counted yet: nothing to do


def test_the_shared_budget_refuses_at_the_servers_limit_and_says_what_all_workers_hold(tmp_path: Path) -> None:
    first, second = (ByteBudget(100, worker_counts(tmp_path, 2, number)[1]) for number in range(2))
    assert first.take(60) and not second.take(50) and second.take(40)
    assert "holds 100 bytes" in first.refusal(1)
    first.give(60)
    assert second.take(60) and not first.take(1)
    worker_counts(tmp_path, 2, 1)  # worker 1 started again: what its predecessor held ended with it
    assert first.take(100)
