"""The server's side of an instance process's model-calls socket (isolation/calls.py), over a real
socket pair, with the server's own metrics behind it."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any, cast

import pytest

from inferd.core.model_calls import LoopModelCalls
from inferd.isolation import calls
from inferd.isolation.channel import Channel
from inferd.observability.metrics import Metrics
from inferd.runtimes import model_calls
from inferd.types import MetricUpdate


def test_a_metric_the_server_cannot_record_leaves_the_calls_loop_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """An update whose fields make recording raise (not an InferdError) is logged and skipped: the
    loop that also carries the instance's BLS calls keeps reading its socket."""
    metrics = Metrics()
    loop = asyncio.new_event_loop()
    try:
        model_calls.install(LoopModelCalls(cast(Any, None), cast(Any, None), loop, metrics))
        server_side, instance_side = socket.socketpair()
        thread = calls.serve(server_side, "m")
        instance = Channel(instance_side)
        broken = MetricUpdate("requests", "", "counter", cast(Any, 5), "increment", 1.0)  # labels that are no pairs
        good = MetricUpdate("requests", "requests seen", "counter", (("route", "a"),), "increment", 2.0)
        instance.send(("metric", 0, broken))
        instance.send(("metric", 0, good))
        deadline = time.monotonic() + 5
        while b'requests{route="a"} 2\n' not in metrics.exposition() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b'requests{route="a"} 2\n' in metrics.exposition()
        assert thread.is_alive()
        instance_side.close()
        thread.join(5)
        assert not thread.is_alive()
    finally:
        model_calls.install(None)
        loop.close()
