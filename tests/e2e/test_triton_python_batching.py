"""A Triton Python model under dynamic batching, as Triton runs it: ``execute`` gets one
InferenceRequest per client request the batcher gathered, each with its own rows, parameters, id
and requested outputs, and each response goes back to its own client; an error response fails
that request only. Served by the real server, called concurrently with tritonclient.

The gathering is made certain: a first request holds the model's one instance until the test has
seen every other request waiting in the queue (inferd_queue_depth), so those all run as one batch."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests import models
from tests.conftest import RunningServer, serve

# OUT: the request's rows times its "scale" parameter; COUNT: len(requests) of the execution it
# ran in (one value per request, whatever its rows); ID: its request_id(). A request with "fail"
# gets an error response. A negative input holds the instance: the model says so in the file
# "held" of its folder, then waits for the file "release" there.
GATHERED = """
import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.folder = args["model_repository"]  # this model's folder

    def execute(self, requests):
        if any((pb_utils.get_input_tensor_by_name(r, "IN").as_numpy() < 0).any() for r in requests):
            open(os.path.join(self.folder, "held"), "w").close()
            deadline = time.monotonic() + 60
            while not os.path.exists(os.path.join(self.folder, "release")) and time.monotonic() < deadline:
                time.sleep(0.01)
        responses = []
        for request in requests:
            parameters = json.loads(request.parameters())
            if parameters.get("fail"):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"request {request.request_id()} was asked to fail", pb_utils.TritonError.INVALID_ARG)))
                continue
            made = {"OUT": pb_utils.get_input_tensor_by_name(request, "IN").as_numpy() * parameters.get("scale", 1),
                    "COUNT": np.array([[len(requests)]], np.int32),
                    "ID": np.array([[request.request_id().encode()]], np.object_)}
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, made[name]) for name in request.requested_output_names()],
                parameters={"answers": request.request_id()}))
        return responses
"""

# in an instance process (Triton's config; the default for Python models)
PBTXT = """
name: "{name}"
backend: "python"
max_batch_size: 8
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 2 ] }, { name: "COUNT" data_type: TYPE_INT32 dims: [ 1 ] },
         { name: "ID" data_type: TYPE_STRING dims: [ 1 ] } ]
dynamic_batching { max_queue_delay_microseconds: 500000 }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

# in the server's own process (config.toml, kind "cpu")
TOML = """
backend = "python"
max_batch_size = 8

[dynamic_batching]
max_queue_delay_ms = 500

[instance_group]
kind = "cpu"

[[input]]
name = "IN"
datatype = "FP32"
shape = [2]

[[output]]
name = "OUT"
datatype = "FP32"
shape = [2]

[[output]]
name = "COUNT"
datatype = "INT32"
shape = [1]

[[output]]
name = "ID"
datatype = "BYTES"
shape = [1]
"""

MODELS = ("gathered", "gathered_in_process")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root: Path = tmp_path_factory.mktemp("pb_batching_repo")
    for name in MODELS:
        models.write(root / name / "1/model.py", GATHERED)
    models.write(root / "gathered/config.pbtxt", PBTXT.replace("{name}", "gathered"))
    models.write(root / "gathered_in_process/config.toml", TOML)
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    with serve(repository, grpc=True) as running:
        yield running


def _queued(server: RunningServer, model: str) -> float:
    text = requests.get(f"{server.base}/metrics", timeout=10).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "inferd_queue_depth" and s.labels.get("model") == model)


def _infer(server: RunningServer, model: str, wire: str, rows: np.ndarray, request_id: str,
           parameters: dict[str, Any], outputs: tuple[str, ...] = ("OUT", "COUNT", "ID")) -> Any:
    """One client's call: its result, or the InferenceServerException it got."""
    lib: Any = grpcclient if wire == "grpc" else httpclient
    client = lib.InferenceServerClient(server.grpc_url if wire == "grpc" else server.url)
    tensor = lib.InferInput("IN", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    try:
        return client.infer(model, [tensor], request_id=request_id, parameters=parameters,
                            outputs=[lib.InferRequestedOutput(name) for name in outputs])
    except InferenceServerException as exc:
        return exc
    finally:
        client.close()


def _response_id(result: Any) -> str:
    response = result.get_response()
    return str(response["id"] if isinstance(response, dict) else response.id)


def _answers(result: Any) -> str:
    """The ``answers`` response parameter (HTTP's JSON, or gRPC's InferParameter)."""
    response = result.get_response()
    if isinstance(response, dict):
        return str(response["parameters"]["answers"])
    return str(response.parameters["answers"].string_param)


def _gathered(server: RunningServer, folder: Path, model: str,
              members: list[tuple[str, np.ndarray, str, dict[str, Any], tuple[str, ...]]]) -> tuple[Any, list[Any]]:
    """The holding request's result and each member's (wire, rows, id, parameters, outputs), all
    members having waited in the queue together while the holder ran."""
    held, release = folder / model / "held", folder / model / "release"
    held.unlink(missing_ok=True)
    release.unlink(missing_ok=True)
    with ThreadPoolExecutor(len(members) + 1) as pool:
        holder = pool.submit(_infer, server, model, "http", np.full((1, 2), -1, np.float32), "holder", {})
        deadline = time.monotonic() + 30
        while not held.exists():
            assert time.monotonic() < deadline and not holder.done(), "the holding request never ran"
            time.sleep(0.01)
        calls = [pool.submit(_infer, server, model, *member) for member in members]
        while _queued(server, model) < len(members):
            assert time.monotonic() < deadline, f"only {_queued(server, model)} requests queued"
            time.sleep(0.02)
        release.touch()
        return holder.result(timeout=30), [call.result(timeout=30) for call in calls]


@pytest.mark.parametrize("model", MODELS)
def test_gathered_requests_each_reach_execute_with_their_own_facts(server: RunningServer, repository: Path,
                                                                     model: str) -> None:
    """len(requests) is the batch's request count; each request's rows, parameters, id and
    requested outputs are its own, and its response goes to its own client, over HTTP or gRPC."""
    members = [(wire, np.full((n, 2), i + 1, np.float32), f"r{i}", {"scale": 10 * (i + 1)},
                ("OUT", "COUNT", "ID") if i != 2 else ("OUT",))
               for i, (wire, n) in enumerate([("http", 1), ("grpc", 2), ("http", 1), ("grpc", 3)])]
    holder, results = _gathered(server, repository, model, members)
    assert holder.as_numpy("COUNT").tolist() == [[1]] and holder.as_numpy("ID").tolist() == [[b"holder"]]
    for (_, rows, request_id, parameters, outputs), result in zip(members, results, strict=True):
        assert not isinstance(result, Exception), result
        np.testing.assert_array_equal(result.as_numpy("OUT"), rows * parameters["scale"])
        assert _answers(result) == request_id  # its response's own parameters
        if outputs == ("OUT",):  # it asked for OUT alone, and requested_output_names() said so
            assert result.as_numpy("COUNT") is None and result.as_numpy("ID") is None
            continue
        assert result.as_numpy("COUNT").tolist() == [[len(members)]], request_id
        assert result.as_numpy("ID").tolist() == [[request_id.encode()]]
        assert _response_id(result) == request_id


@pytest.mark.parametrize("model", MODELS)
def test_an_error_response_fails_its_request_only(server: RunningServer, repository: Path, model: str) -> None:
    """Triton: a TritonError in one InferenceResponse fails that request; the others of its
    execution are answered."""
    members = [("http" if i % 2 else "grpc", np.full((1, 2), i, np.float32), f"e{i}",
                {"scale": 2, "fail": i == 1}, ("OUT", "COUNT", "ID")) for i in range(3)]
    _, results = _gathered(server, repository, model, members)
    failed = results[1]
    assert isinstance(failed, InferenceServerException)
    assert "request e1 was asked to fail" in str(failed) and failed.status() == "400"
    for i in (0, 2):
        assert not isinstance(results[i], Exception), results[i]
        assert results[i].as_numpy("OUT").tolist() == [[2.0 * i, 2.0 * i]]
        assert results[i].as_numpy("COUNT").tolist() == [[3]]
        assert results[i].as_numpy("ID").tolist() == [[f"e{i}".encode()]]


def test_a_front_end_worker_sends_each_request_apart(repository: Path) -> None:
    """Through a front-end worker (--workers 1) too, each request reaches execute as its own, with
    its id (tests/core/test_planes.py: a worker never joins these models' requests)."""
    with serve(repository, "--workers", "1") as running:
        members = [("http", np.full((1, 2), i, np.float32), f"w{i}", {"scale": 3}, ("OUT", "COUNT", "ID"))
                   for i in range(6)]
        _, results = _gathered(running, repository, "gathered", members)
    for i, result in enumerate(results):
        assert not isinstance(result, Exception), result
        assert result.as_numpy("ID").tolist() == [[f"w{i}".encode()]]
        assert result.as_numpy("COUNT").tolist() == [[len(members)]]
        assert result.as_numpy("OUT").tolist() == [[3.0 * i, 3.0 * i]]


def test_statistics_count_one_execution_for_the_gathered_requests(server: RunningServer, repository: Path) -> None:
    """Triton's statistics: the gathered requests are one execution of their rows together."""
    before = requests.get(f"{server.base}/v2/models/gathered/stats", timeout=10).json()["model_stats"][0]
    members = [("http", np.ones((2, 2), np.float32), f"s{i}", {}, ("OUT",)) for i in range(3)]
    _gathered(server, repository, "gathered", members)
    after = requests.get(f"{server.base}/v2/models/gathered/stats", timeout=10).json()["model_stats"][0]
    assert after["execution_count"] - before["execution_count"] == 2  # the holder's, then the batch's
    assert after["inference_count"] - before["inference_count"] == 1 + 6
    sizes = {entry["batch_size"]: entry["compute_infer"]["count"] for entry in after["batch_stats"]}
    assert sizes.get(6, 0) >= 1

