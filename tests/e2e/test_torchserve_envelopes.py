"""What a handler's ``data`` holds under ``inferd torchserve`` (bodies decoded by content type as
TorchServe's worker decodes them, or bytes with ``decode_input_request=false``), TorchServe's
service envelopes (``json``, ``kserve``, ``kservev2``, ``body``), and KServe's predict routes on
the inference address. Archives built with the real torch-model-archiver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import requests
import torch

from tests import ts_archives
from tests.conftest import ROOT
from tests.e2e.test_torchserve_cli import torchserve

# each request's fields as they arrived: the type's name and the value (bytes as latin-1 text)
ECHO_HANDLER = '''
def handle(data, context):
    if data is None:
        return None
    return [{name: [type(value).__name__,
                    bytes(value).decode("latin-1") if isinstance(value, (bytes, bytearray)) else value]
             for name, value in row.items()} for row in data]
'''

ROWS_HANDLER = '''
import torch
from ts.torch_handler.base_handler import BaseHandler


class RowDoubler(BaseHandler):
    """Each row the envelope hands over (a list of 4 numbers, or a v2 input holding them) through the model."""

    def preprocess(self, data):
        rows = [row["data"] if isinstance(row, dict) else row for row in data]
        return torch.tensor(rows, dtype=torch.float32)

    def postprocess(self, data):
        return data.tolist()
'''

X = [[0.5, -1.0, 2.0, 0.25], [1.0, 1.5, -0.5, 3.0]]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``echo`` (a function handler that reports its data) and ``rows`` (the doubler model behind
    a handler that takes an envelope's rows); the doubler's weights stay in ``store/../work``."""
    root = tmp_path_factory.mktemp("envelopes")
    work, models = root / "work", root / "store"
    work.mkdir()
    models.mkdir()
    (work / "echo.py").write_text(textwrap.dedent(ECHO_HANDLER))
    (work / "nothing.bin").write_bytes(b"")
    ts_archives.archive(models, "echo", work / "nothing.bin", str(work / "echo.py"))
    (work / "model.py").write_text(textwrap.dedent(ts_archives.EAGER_MODEL))
    namespace: dict = {}
    exec(textwrap.dedent(ts_archives.EAGER_MODEL), namespace)
    torch.manual_seed(11)
    torch.save(namespace["Doubler"]().state_dict(), work / "doubler.pth")
    (work / "rows.py").write_text(textwrap.dedent(ROWS_HANDLER))
    ts_archives.archive(models, "rows", work / "doubler.pth", str(work / "rows.py"), model_file=work / "model.py")
    return models


def serve(store: Path, workdir: Path, models: str, **properties: str) -> AbstractContextManager[dict[str, str]]:
    return torchserve(workdir, {"model_store": str(store), "load_models": models, "default_workers_per_model": "1",
                                "disable_token_authorization": "true", **properties})


def expected(values: list[list[float]], store: Path) -> list[list[float]]:
    """The doubler run in this process on ``values``."""
    return ts_archives.doubler_in_process(store.parent / "work", values)


def test_bodies_reach_the_handler_as_torchserve_decodes_them(store: Path, tmp_path: Path) -> None:
    with serve(store, tmp_path, "echo.mar") as urls:
        def echo(path: str = "/predictions/echo", **sent: Any) -> Any:
            answer = requests.post(urls["inference"] + path, timeout=30, **sent)
            assert answer.status_code == 200, answer.text
            return answer.json()

        assert echo(json={"values": [1, 2]}) == {"body": ["dict", {"values": [1, 2]}]}
        assert echo(data=b'[1, "a"]', headers={"Content-Type": "application/json; charset=utf-8"}) == {
            "body": ["list", [1, "a"]]}
        assert echo(data="grüß".encode(), headers={"Content-Type": "text/plain; charset=utf-8"}) == {
            "body": ["str", "grüß"]}
        assert echo(data=b"\x00\x01", headers={"Content-Type": "application/octet-stream"}) == {
            "body": ["bytearray", "\x00\x01"]}
        assert echo(data=b"{broken", headers={"Content-Type": "application/json"}) == {
            "body": ["bytearray", "{broken"]}  # what does not parse comes as bytes
        assert echo(files={"data": ("x.json", b'{"k": 1}', "application/json"), "note": ("n.txt", b"hi", "text/plain")},
                    data={"plain": "field"}) == {
            "data": ["dict", {"k": 1}], "note": ["str", "hi"], "plain": ["bytearray", "field"]}
        # KServe's predict paths are predictions too on the inference address
        assert echo("/v1/models/echo:predict", json={"instances": [[1]]}) == {"body": ["dict", {"instances": [[1]]}]}
        assert echo("/v2/models/echo/infer", json={"inputs": []}) == {"body": ["dict", {"inputs": []}]}
        missing = requests.post(urls["inference"] + "/v2/models/nope/infer", json={}, timeout=30)
        assert missing.status_code == 404 and missing.json()["type"] == "ModelNotFoundException"


def test_decode_input_request_false_gives_the_handler_bytes(store: Path, tmp_path: Path) -> None:
    with serve(store, tmp_path, "echo.mar", decode_input_request="false") as urls:
        answer = requests.post(urls["inference"] + "/predictions/echo", json={"a": 1}, timeout=30)
        assert answer.json() == {"body": ["bytearray", '{"a": 1}']}
        answer = requests.post(urls["inference"] + "/predictions/echo", data=b"hi", timeout=30,
                               headers={"Content-Type": "text/plain"})
        assert answer.json() == {"body": ["bytearray", "hi"]}


def test_kservev2_envelope_answers_the_open_inference_protocol(store: Path, tmp_path: Path) -> None:
    """KServe's TorchServe runtime: service_envelope=kservev2 and ``/v2/models/{m}/infer``."""
    body = {"id": "req-7", "inputs": [{"name": "input-0", "shape": [4], "datatype": "FP32", "data": X[0]}]}
    with serve(store, tmp_path, "rows.mar", service_envelope="kservev2") as urls:
        for path in ("/v2/models/rows/infer", "/predictions/rows"):  # the envelope is the model's, on every route
            answer = requests.post(urls["inference"] + path, json=body, timeout=30)
            assert answer.status_code == 200, answer.text
            got = answer.json()
            assert got == {"id": "req-7", "model_name": "rows", "model_version": "1.0", "outputs": [
                {"name": "input-0", "datatype": "FP64", "data": expected([X[0]], store)[0],
                 "shape": [3]}]}
        no_id = requests.post(urls["inference"] + "/v2/models/rows/infer", json={"inputs": body["inputs"]}, timeout=30)
        assert no_id.status_code == 200 and no_id.json()["id"]  # the request's own id


@pytest.mark.parametrize(("envelope", "path", "body", "answer"), [
    ("kserve", "/v1/models/rows:predict", {"instances": X}, lambda y: {"predictions": y}),
    ("json", "/predictions/rows", {"instances": X}, lambda y: {"predictions": y}),
    ("body", "/predictions/rows", X[0], lambda y: y[0]),
])
def test_envelopes_unwrap_rows_and_wrap_answers(store: Path, tmp_path: Path, envelope: str, path: str,
                                                body: object, answer: Callable[[Any], Any]) -> None:
    with serve(store, tmp_path, "rows.mar", service_envelope=envelope) as urls:
        got = requests.post(urls["inference"] + path, json=body, timeout=30)
        assert got.status_code == 200, got.text
        rows = X if isinstance(body, dict) else [X[0]]
        assert json.loads(got.text) == answer(expected(rows, store))  # the same floats: the same model and torch


def test_an_unknown_envelope_stops_the_start_with_its_name(tmp_path: Path) -> None:
    (tmp_path / "config.properties").write_text("service_envelope=seldon\ndisable_token_authorization=true\n")
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT / "src"))}
    done = subprocess.run([sys.executable, "-m", "inferd", "torchserve", "--start", "--ts-config",
                           str(tmp_path / "config.properties")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "service_envelope=seldon: expected one of body, json, kserve, kservev2" in done.stderr
