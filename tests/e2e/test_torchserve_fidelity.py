"""What a TorchServe handler sees, as TorchServe gives it: a UUID per request, URL-encoded form
fields as UTF-8 bytearrays, and the ``ts.torch_handler.request_envelope`` modules to call
directly (archives from the real torch-model-archiver, behind a real server)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import RunningServer, serve

# each request's id (both ways a handler reads it) and its fields' types and UTF-8 text
IDS = '''
import json


def handle(data, context):
    if data:
        return [json.dumps({"id": context.get_request_id(i), "listed": context.request_ids[i],
                            "fields": {name: [type(value).__name__, bytes(value).decode("utf-8")]
                                       for name, value in row.items()}})
                for i, row in enumerate(data)]
'''

# TorchServe's envelopes called by the handler itself, as some handlers do
ENVELOPES = '''
from ts.torch_handler.request_envelope.base import BaseEnvelope
from ts.torch_handler.request_envelope.body import BodyEnvelope
from ts.torch_handler.request_envelope.json import JSONEnvelope
from ts.torch_handler.request_envelope.kserve import KServeEnvelope
from ts.torch_handler.request_envelope.kservev2 import KServev2Envelope


def double(rows, context):
    return [row * 2 for row in rows]


class Tagged(BaseEnvelope):
    def parse_input(self, data):
        return [row["body"]["value"] for row in data]

    def format_output(self, data):
        return [{"tagged": value, "same": self._handle_fn is double} for value in data]


def handle(data, context):
    if not data:
        return None
    assert all(issubclass(kind, BaseEnvelope) for kind in (BodyEnvelope, KServeEnvelope, KServev2Envelope))
    envelope = JSONEnvelope if "instances" in data[0]["body"] else Tagged
    return envelope(double).handle(data, context)
'''


def archive(store: Path, work: Path, name: str, source: str) -> None:
    handler = work / f"{name}_handler.py"
    handler.write_text(source)
    subprocess.run(["torch-model-archiver", "--model-name", name, "--version", "1.0", "--handler", str(handler),
                    "--export-path", str(store), "-f"], check=True, capture_output=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("ts_fidelity")
    (root / "store").mkdir()
    for name, source in (("ids", IDS), ("envelopes", ENVELOPES)):
        archive(root / "store", root, name, source)
    with serve(None, "--model-store", str(root / "store"), "--models", "all") as running:
        yield running


def ids_of(server: RunningServer, **kwargs) -> dict:
    response = requests.post(f"{server.base}/predictions/ids", timeout=30, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def test_each_request_gets_a_fresh_uuid_as_its_id(server: RunningServer) -> None:
    """TorchServe's front end makes a random UUID per request (its Session); a client's
    x-request-id header is not taken."""
    first, second = ids_of(server, data=b"a"), ids_of(server, data=b"b", headers={"x-request-id": "mine"})
    for answer in (first, second):
        assert answer["id"] == answer["listed"]
        assert str(uuid.UUID(answer["id"])) == answer["id"]
    assert first["id"] != second["id"]


def test_url_encoded_fields_are_utf8_bytearrays(server: RunningServer) -> None:
    answer = ids_of(server, data={"name": "café ☕", "plus": "a+b c"})
    assert answer["fields"] == {"name": ["bytearray", "café ☕"], "plus": ["bytearray", "a+b c"]}


def test_a_handler_calls_torchserves_envelopes_itself(server: RunningServer) -> None:
    response = requests.post(f"{server.base}/predictions/envelopes", json={"instances": [1, 2]}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [2, 4]}
    tagged = requests.post(f"{server.base}/predictions/envelopes", json={"value": 5}, timeout=30)
    assert tagged.status_code == 200 and tagged.json() == {"tagged": 10, "same": True}
