"""TorchServe's streaming answers: a handler that calls send_intermediate_predict_response gets a
chunked /predictions answer, a chunk per intermediate answer as it is sent, then its last one (as
TorchServe's front end answers); archives from the real torch-model-archiver, in one process and
through a front-end worker."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import RunningServer, holds_in_one_of, serve

# TorchServe's own test handler (pytorch/serve test/pytest/test_send_intermediate_prediction_response.py)
HELLO = (
    "\nfrom ts.handler_utils.utils import send_intermediate_predict_response\n\n"
    "def handle(data, context):\n"
    "    if type(data) is list:\n"
    "        for i in range (3):\n"
    "            send_intermediate_predict_response([\"hello\"], context.request_ids, "
    "\"Intermediate Prediction success\", 200, context)\n"
    "        return [\"hello world \"]\n"
)

# tokens sent one by one, SLOW apart, through the other import path; the request names how many
TOKENS = '''
import json
import time

from ts.protocol.otf_message_handler import send_intermediate_predict_response
from ts.torch_handler.base_handler import BaseHandler


class Tokens(BaseHandler):
    def initialize(self, context):
        self.initialized = True

    def handle(self, data, context):
        body = data[0]["body"]  # a dict when sent as application/json, as TorchServe parses it
        count = (json.loads(body) if isinstance(body, (bytes, bytearray)) else body)["tokens"]
        for i in range(count):
            send_intermediate_predict_response([{"token": i}], context.request_ids, "", 200, context)
            time.sleep(0.2)
        return [{"done": count}]
'''

PLAIN = '''
def handle(data, context):
    if data:
        return ["plain answer"]
'''


def archive(store: Path, work: Path, name: str, source: str) -> None:
    handler = work / f"{name}_handler.py"
    handler.write_text(source)
    subprocess.run(["torch-model-archiver", "--model-name", name, "--version", "1.0", "--handler", str(handler),
                    "--export-path", str(store), "-f"], check=True, capture_output=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ts_stream")
    (root / "store").mkdir()
    for name, source in (("hello", HELLO), ("tokens", TOKENS), ("plain", PLAIN)):
        archive(root / "store", root, name, source)
    return root / "store"


@pytest.fixture(scope="module", params=["one-process", "workers", "in-server-threads"])
def server(store: Path, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RunningServer]:
    """Handlers in instance processes (the default) behind one front end or a worker, and on the
    server's own threads (a repository of the same archives, ``kind = "cpu"``)."""
    if request.param == "in-server-threads":
        repo = tmp_path_factory.mktemp("ts_stream_repo")
        for mar in store.glob("*.mar"):
            (repo / mar.stem / "1").mkdir(parents=True)
            shutil.copy(mar, repo / mar.stem / "1" / "model.mar")
            (repo / mar.stem / "config.toml").write_text('[instance_group]\nkind = "cpu"\n')
        with serve(repo) as running:
            yield running
        return
    workers = "1" if request.param == "workers" else "0"
    with serve(None, "--model-store", str(store), "--models", "all", "--workers", workers) as running:
        yield running


@pytest.mark.parametrize(("stream", "expected"), [(True, ["hello", "hello", "hello", "hello world "]),
                                                  (False, ["hellohellohellohello world "])])
def test_torchserves_own_streaming_test(server: RunningServer, stream: bool, expected: list[str]) -> None:
    """test_echo_stream_inference's assertions, with its handler as written."""
    response = requests.post(f"{server.base}/predictions/hello", data=json.dumps(42), stream=stream, timeout=30)
    assert response.status_code == 200
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert [chunk.decode() for chunk in response.iter_content(chunk_size=None) if chunk] == expected


def test_each_intermediate_answer_leaves_when_it_is_sent(server: RunningServer) -> None:
    def once() -> str | None:
        start = time.monotonic()
        arrivals = []
        with requests.post(f"{server.base}/predictions/tokens", json={"tokens": 3}, stream=True,
                           timeout=30) as response:
            assert response.status_code == 200 and response.headers["content-type"] == "application/json"
            for chunk in response.iter_content(chunk_size=None):
                arrivals.append((time.monotonic() - start, json.loads(chunk)))
        assert [item for _, item in arrivals] == [{"token": 0}, {"token": 1}, {"token": 2}, {"done": 3}]
        assert arrivals[-1][0] > 0.4  # (3 x 0.2 s in the handler)
        # the first came before the handler was done
        return None if arrivals[0][0] < 0.4 else f"the first part came after {arrivals[0][0]:.2f} s"

    holds_in_one_of(3, once)


def test_a_handler_without_intermediate_answers_answers_whole(server: RunningServer) -> None:
    response = requests.post(f"{server.base}/predictions/plain", data=b"x", timeout=30)
    assert response.status_code == 200 and response.text == "plain answer"
    assert response.headers["content-length"] == str(len("plain answer"))
    assert "transfer-encoding" not in response.headers


def test_a_client_that_leaves_gets_no_more_chunks_and_the_model_serves_on(server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as raw:
        body = b'{"tokens": 4}'
        raw.sendall(b"POST /predictions/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        first = raw.recv(65536)
        assert first.startswith(b"HTTP/1.1 200") and b'{"token":0}' in first
    answer = requests.post(f"{server.base}/predictions/tokens", json={"tokens": 1}, timeout=30)
    assert answer.status_code == 200 and answer.text == '{"token":0}{"done":1}'
