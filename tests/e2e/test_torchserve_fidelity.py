"""What a TorchServe handler sees, as TorchServe gives it: a UUID per request, URL-encoded form
fields as UTF-8 bytearrays (archives from the real torch-model-archiver, behind a real server)."""

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


def archive(store: Path, work: Path, name: str, source: str) -> None:
    handler = work / f"{name}_handler.py"
    handler.write_text(source)
    subprocess.run(["torch-model-archiver", "--model-name", name, "--version", "1.0", "--handler", str(handler),
                    "--export-path", str(store), "-f"], check=True, capture_output=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("ts_fidelity")
    (root / "store").mkdir()
    for name, source in (("ids", IDS),):
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
