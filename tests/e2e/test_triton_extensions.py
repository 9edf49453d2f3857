"""Triton's extensions with Triton's own clients against the real server: statistics, model
configuration, the whole repository index, load with a configuration override, health bodies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from tests import models
from tests.conftest import RunningServer, serve

BATCHED = """
max_batch_size = 16
[dynamic_batching]
max_queue_delay_ms = 2
preferred_batch_sizes = [4, 8]
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("triton_ext")
    (root / "mlp/1").mkdir(parents=True)
    torch.onnx.export(models.mlp(), (torch.randn(2, 8),), str(root / "mlp/1/model.onnx"), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False)
    models.write(root / "mlp/config.toml", BATCHED)
    models.write(root / "double/1/model.py", models.PYTHON_MODEL)
    models.write(root / "double/config.toml", models.PYTHON_CONFIG)
    models.write(root / "never_loaded/1/model.py", models.PYTHON_MODEL)
    models.write(root / "never_loaded/config.toml", models.PYTHON_CONFIG)
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    with serve(repo, "--model-control", "explicit", "--load-model", "mlp", "--load-model", "double",
               grpc=True) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: RunningServer) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.url)


@pytest.fixture(scope="module")
def grpc(server: RunningServer) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.grpc_url)


def _x(module: object, rows: int) -> object:
    tensor = module.InferInput("x", [rows, 8], "FP32")  # type: ignore[attr-defined]
    tensor.set_data_from_numpy(np.ones((rows, 8), np.float32))
    return tensor


def test_health_answers_with_bodies_and_metadata_lists_what_exists(server: RunningServer) -> None:
    for path, body in (("live", {"live": True}), ("ready", {"ready": True})):
        answer = requests.get(f"{server.base}/v2/health/{path}", timeout=5)
        assert answer.status_code == 200 and answer.json() == body
        assert answer.headers["content-type"] == "application/json"
    extensions = requests.get(f"{server.base}/v2", timeout=5).json()["extensions"]
    assert {"statistics", "model_configuration", "model_repository", "binary_tensor_data"} <= set(extensions)
    assert {"classification", "generate", "sequence"} <= set(extensions)  # issue 18 serves them
    assert not {"system_shared_memory", "cuda_shared_memory"} & set(extensions)


def test_shared_memory_is_refused_unless_allowed(
        http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient) -> None:
    """Without --allow-client-shm (Triton's default since 2.60): every register or unregister, and an
    input or output placed in a region, is a 400 / INVALID_ARGUMENT saying how to enable it, over both
    transports; status lists no region (test_shared_memory: the extension itself)."""
    disabled = "Client shared memory is disabled. Start the server with '--allow-client-shm=true' to enable."
    for client, module in ((http, httpclient), (grpc, grpcclient)):
        for call, args in ((client.register_system_shared_memory, ("r", "/../../etc/passwd", 64)),
                           (client.unregister_system_shared_memory, ()),
                           (client.register_cuda_shared_memory, ("c", b"\0" * 64, 0, 64))):
            with pytest.raises(InferenceServerException) as caught:
                call(*args)
            assert caught.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
            assert disabled in caught.value.message()
        placed = module.InferInput("x", [4], "FP64")
        placed.set_shared_memory("r", 32)
        with pytest.raises(InferenceServerException, match="Client shared memory is disabled") as caught:
            client.infer("double", [placed])
        assert caught.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
        given = module.InferInput("x", [4], "FP64")
        given.set_data_from_numpy(np.ones(4))
        wanted = module.InferRequestedOutput("y")
        wanted.set_shared_memory("r", 32)
        with pytest.raises(InferenceServerException, match="Client shared memory is disabled"):
            client.infer("double", [given], outputs=[wanted])
    assert http.get_system_shared_memory_status() == []


def test_statistics_count_requests_executions_and_batches(server: RunningServer, http: httpclient.InferenceServerClient,
                                                          grpc: grpcclient.InferenceServerClient) -> None:
    before = http.get_inference_statistics("mlp")["model_stats"][0]
    for rows in (1, 3, 3):
        http.infer("mlp", [_x(httpclient, rows)])
    grpc.infer("mlp", [_x(grpcclient, 2)])
    with pytest.raises(InferenceServerException):  # wrong shape: a failed request
        bad = httpclient.InferInput("x", [1, 5], "FP32")
        bad.set_data_from_numpy(np.ones((1, 5), np.float32))
        http.infer("mlp", [bad])
    stats = http.get_inference_statistics("mlp", "1")["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("mlp", "1")]
    now = stats[0]
    inference = now["inference_stats"]
    assert inference["success"]["count"] - before["inference_stats"]["success"]["count"] == 4
    assert inference["fail"]["count"] - before["inference_stats"]["fail"]["count"] == 1
    for key in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert inference[key]["count"] == inference["success"]["count"]
    assert inference["compute_infer"]["ns"] > 0 and inference["success"]["ns"] >= inference["compute_infer"]["ns"]
    assert now["inference_count"] - before["inference_count"] == 9  # rows
    assert now["last_inference"] > 0
    batches = {b["batch_size"]: b["compute_infer"]["count"] for b in now["batch_stats"]}
    assert sum(batches.values()) == now["execution_count"] and set(batches) <= {1, 2, 3, 4, 5, 6, 7, 8, 9}
    # gRPC answers the same counters in Triton's message
    message = grpc.get_inference_statistics("mlp").model_stats
    assert len(message) == 1 and message[0].inference_stats.success.count == inference["success"]["count"]
    assert message[0].execution_count == now["execution_count"]
    assert sum(b.compute_infer.count for b in message[0].batch_stats) == now["execution_count"]
    # the same counters on /metrics under Triton's names, for dashboards written for Triton
    text = requests.get(f"{server.base}/metrics", timeout=5).text
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("nv_inference"))
    labels = '{model="mlp",version="1"}'
    assert int(lines[f"nv_inference_request_success{labels}"]) == inference["success"]["count"]
    assert int(lines['nv_inference_request_failure{model="mlp",reason="OTHER",version="1"}']) == \
        inference["fail"]["count"]
    assert int(lines[f"nv_inference_exec_count{labels}"]) == now["execution_count"]
    assert int(lines[f"nv_inference_count{labels}"]) == now["inference_count"]  # no cache here
    assert int(lines[f"nv_inference_compute_infer_duration_us{labels}"]) == inference["compute_infer"]["ns"] // 1000
    assert "# TYPE nv_inference_request_duration_us counter" in text
    # every loaded model, and Triton's words for an unknown one
    every = {s["name"] for s in http.get_inference_statistics()["model_stats"]}
    assert every == {"mlp", "double"}
    for client in (http, grpc):
        with pytest.raises(InferenceServerException, match="Request for unknown model: 'nope' is not found"):
            client.get_inference_statistics("nope")


def test_model_configuration_in_tritons_shapes(http: httpclient.InferenceServerClient,
                                               grpc: grpcclient.InferenceServerClient) -> None:
    config = http.get_model_config("mlp")
    assert config["name"] == "mlp" and config["platform"] == "onnxruntime_onnx"
    assert config["backend"] == "onnxruntime" and config["max_batch_size"] == 16
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [8], "format": "FORMAT_NONE",
                                "allow_ragged_batch": False, "optional": False}]
    assert config["batch_input"] == [] and config["batch_output"] == []
    assert config["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": [5], "label_filename": ""}]
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert config["instance_group"][0]["count"] == 1 and config["instance_group"][0]["kind"] == "KIND_CPU"
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    message = grpc.get_model_config("double", "1").config
    assert message.name == "double" and message.backend == "python"
    assert [(t.name, t.data_type) for t in message.input] == [("x", model_config_pb2.TYPE_FP64)]
    with pytest.raises(InferenceServerException, match="Request for unknown model"):
        grpc.get_model_config("nope")


def test_index_lists_every_model_and_load_takes_an_override(server: RunningServer,
                                                            http: httpclient.InferenceServerClient,
                                                            grpc: grpcclient.InferenceServerClient) -> None:
    index = {row["name"]: row for row in http.get_model_repository_index()}
    assert set(index) == {"mlp", "double", "never_loaded"}
    assert index["mlp"]["state"] == "READY" and index["never_loaded"]["state"] == ""
    assert {m.name for m in grpc.get_model_repository_index().models} == {"mlp", "double", "never_loaded"}

    http.load_model("never_loaded", config=json.dumps({"max_batch_size": 4}))
    assert http.is_model_ready("never_loaded")
    assert http.get_model_config("never_loaded")["max_batch_size"] == 4
    assert grpc.get_model_config("never_loaded").config.input[0].name == "x"  # kept from config.toml
    grpc.load_model("never_loaded", config='{"max_batch_size": "2"}')
    assert http.get_model_config("never_loaded")["max_batch_size"] == 2

    for client in (http, grpc):
        for bad in ('"parameters": {"config": {{"max_batch_size": "16"}}}', '{"model_repository_agents": {}}'):
            with pytest.raises(InferenceServerException, match="failed to load 'never_loaded'"):
                client.load_model("never_loaded", config=bad)
        with pytest.raises(InferenceServerException, match="failed to load 'wrong_model_name'"):
            client.load_model("wrong_model_name")
    assert http.get_model_config("never_loaded")["max_batch_size"] == 2  # a refused override changed nothing
    answer = requests.post(f"{server.base}/v2/repository/models/never_loaded/load",
                           json={"parameters": {"config": "{not json"}}, timeout=10)
    assert answer.status_code == 400 and "failed to load" in answer.json()["error"]

    http.unload_model("never_loaded")
    row = {r["name"]: r for r in http.get_model_repository_index()}["never_loaded"]
    assert (row["state"], row["reason"]) == ("UNAVAILABLE", "unloaded")
    assert not http.is_model_ready("never_loaded")


def _onnx_bytes(tmp_path: Path, seed: int) -> tuple[bytes, torch.nn.Module]:
    torch.manual_seed(seed)
    module = torch.nn.Sequential(torch.nn.Linear(8, 3), torch.nn.Tanh()).eval()
    path = tmp_path / f"seed{seed}.onnx"
    torch.onnx.export(module, (torch.randn(2, 8),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False)
    return path.read_bytes(), module


def _run(module: torch.nn.Module, rows: int) -> np.ndarray:
    with torch.inference_mode():
        out: np.ndarray = module(torch.ones(rows, 8)).numpy()
    return out


def test_load_takes_override_files_over_http_and_grpc(tmp_path: Path, server: RunningServer,
                                                      http: httpclient.InferenceServerClient,
                                                      grpc: grpcclient.InferenceServerClient) -> None:
    """tritonclient's load_model(config=..., files={"file:1/model.onnx": ...}): the model loads from
    those files instead of its repository folder, over HTTP and over gRPC."""
    config = json.dumps({"backend": "onnxruntime", "max_batch_size": 8})
    first, first_module = _onnx_bytes(tmp_path, 1)
    http.load_model("from_files", config=config, files={"file:1/model.onnx": first})
    got = http.infer("from_files", [_x(httpclient, 3)]).as_numpy("y")
    np.testing.assert_allclose(got, _run(first_module, 3), rtol=1e-5, atol=1e-6)
    assert http.get_model_config("from_files")["max_batch_size"] == 8

    second, second_module = _onnx_bytes(tmp_path, 2)
    grpc.load_model("from_files", config=config, files={"file:/2/model.onnx": second})  # Triton's QA: a leading /
    assert [m.version for m in grpc.get_model_repository_index().models if m.name == "from_files"] == ["2"]
    got = grpc.infer("from_files", [_x(grpcclient, 2)]).as_numpy("y")
    np.testing.assert_allclose(got, _run(second_module, 2), rtol=1e-5, atol=1e-6)
    assert not np.allclose(_run(first_module, 2), got)  # the new files serve, not the old ones

    for client in (http, grpc):
        with pytest.raises(InferenceServerException, match="failed to load 'from_files', failed to poll from model "
                                                           "repository: file overrides need parameter 'config'"):
            client.load_model("from_files", files={"file:1/model.onnx": first})  # Triton's words, then ours
        with pytest.raises(InferenceServerException, match="inside the model folder"):
            client.load_model("from_files", config=config, files={"file:../escape/model.onnx": first})
    for bad in ({"file:1/model.onnx": "not base64!"}, {"file:1/model.onnx": 5}, {"file:/../x": "AAAA"}):
        answer = requests.post(f"{server.base}/v2/repository/models/from_files/load",
                               json={"parameters": {"config": config, **bad}}, timeout=10)
        assert answer.status_code == 400 and "override file" in answer.json()["error"], answer.text
    got = http.infer("from_files", [_x(httpclient, 2)]).as_numpy("y")  # refused loads changed nothing
    np.testing.assert_allclose(got, _run(second_module, 2), rtol=1e-5, atol=1e-6)
    http.unload_model("from_files")
    assert not http.is_model_ready("from_files")


def test_override_files_the_file_system_refuses_are_an_error_and_the_server_lives_on(
        http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient) -> None:
    """A path component over NAME_MAX (Triton's model-control example sends one): Triton's words and
    status (INTERNAL), and the server keeps serving."""
    for client in (http, grpc):
        with pytest.raises(InferenceServerException, match="failed to poll from model repository") as caught:
            client.load_model("too_long", config="{}", files={"file:" + "A" * 256: b"a"})
        assert "File name too long" in str(caught.value)
    assert http.is_server_live() and not http.is_model_ready("too_long")
    assert http.is_model_ready("mlp")
