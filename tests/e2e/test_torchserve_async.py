"""A TorchServe handler's ``async def handle`` (TorchServe's async worker, model-config.yaml
``asyncCommunication: true``), served by ``inferd torchserve``."""

from __future__ import annotations

from pathlib import Path

import requests

from tests import ts_archives
from tests.e2e.test_torchserve_cli import torchserve

ASYNC_HANDLER = '''
import asyncio


class Async:
    def initialize(self, context):
        self.lock = None

    async def handle(self, data, context):
        if self.lock is None:  # made on the handler's loop: later calls must run on the same one
            self.lock = asyncio.Lock()
        async with self.lock:
            await asyncio.sleep(0.01)
        return [f"{bytes(row.get('body') or row.get('data')).decode()} awaited" for row in data]
'''


def test_an_async_handle_is_awaited(tmp_path: Path) -> None:
    """TorchServe's async worker (model-config.yaml asyncCommunication: true) awaits ``async def
    handle``; its answers are what the coroutine returns."""
    work, store = tmp_path / "work", tmp_path / "store"
    work.mkdir()
    store.mkdir()
    (work / "handler.py").write_text(ASYNC_HANDLER)
    (work / "empty.pt").write_bytes(b"")
    (work / "model-config.yaml").write_text("minWorkers: 1\nmaxWorkers: 1\nbatchSize: 1\nasyncCommunication: true\n")
    ts_archives.archive(store, "async", work / "empty.pt", str(work / "handler.py"),
                        config_file=work / "model-config.yaml")
    with torchserve(tmp_path, {"model_store": str(store), "load_models": "async.mar",
                               "disable_token_authorization": "true"}) as urls:
        for word in ("first", "second"):
            answer = requests.post(f"{urls['inference']}/predictions/async", data=word.encode(), timeout=30)
            assert (answer.status_code, answer.text) == (200, f"{word} awaited"), answer.text
