"""Triton's KIND_MODEL instance groups (pytorch_backend's README "Model Instance Group Kind"): a
TorchScript model loads on the devices it was saved with and takes its inputs on the CPU; onnxruntime
runs it as KIND_CPU, as Triton's onnxruntime backend does; backends inferd places itself refuse it.
Served by the real server, asked with tritonclient over HTTP and gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import model_config_pb2

from tests import models
from tests.conftest import RunningServer, serve

PBTXT = """
backend: "{backend}"
max_batch_size: 16
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 8 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 5 ] }} ]
instance_group [ {{ count: 2 kind: {kind} }} ]
"""

PYTHON_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x")
                                                            .as_numpy()[:, :5])]) for r in requests]
"""

X = np.random.default_rng(5).standard_normal((3, 8)).astype(np.float32)


def _repository(root: Path) -> Path:
    for name, kind in (("ts_model", "KIND_MODEL"), ("ts_cpu", "KIND_CPU")):
        (root / name / "1").mkdir(parents=True)
        torch.jit.script(models.mlp()).save(str(root / name / "1/model.pt"))  # saved on the CPU
        models.write(root / name / "config.pbtxt", PBTXT.format(backend="pytorch", kind=kind))
    (root / "onnx_model/1").mkdir(parents=True)
    torch.onnx.export(models.mlp(), (torch.randn(2, 8),), str(root / "onnx_model/1/model.onnx"), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False)
    models.write(root / "onnx_model/config.pbtxt", PBTXT.format(backend="onnxruntime", kind="KIND_MODEL"))
    models.write(root / "py_model/1/model.py", PYTHON_MODEL)
    models.write(root / "py_model/config.pbtxt", PBTXT.format(backend="python", kind="KIND_MODEL"))
    (root / "tflite_model/1").mkdir(parents=True)
    (root / "tflite_model/1/model.tflite").write_bytes(b"refused before it is read")
    models.write(root / "tflite_model/config.pbtxt", PBTXT.format(backend="armnn_tflite", kind="KIND_MODEL"))
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serve(_repository(tmp_path_factory.mktemp("kind_model")), grpc=True) as running:
        yield running


def _infer(server: RunningServer, model: str) -> np.ndarray:
    given = httpclient.InferInput("x", list(X.shape), "FP32")
    given.set_data_from_numpy(X)
    answer = httpclient.InferenceServerClient(server.url).infer(model, [given]).as_numpy("y")
    assert answer is not None
    return answer


def test_a_torchscript_model_saved_on_the_cpu_answers_under_kind_model_as_under_kind_cpu(
        server: RunningServer) -> None:
    np.testing.assert_array_equal(_infer(server, "ts_model"), _infer(server, "ts_cpu"))
    np.testing.assert_allclose(_infer(server, "ts_model"), models.run_mlp(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", ["ts_model", "onnx_model"])
def test_the_configuration_says_kind_model_over_http_and_grpc(server: RunningServer, model: str) -> None:
    over_http = httpclient.InferenceServerClient(server.url).get_model_config(model)["instance_group"]
    over_grpc = grpcclient.InferenceServerClient(server.grpc_url).get_model_config(model).config.instance_group
    assert [(g["kind"], g["count"], g["gpus"]) for g in over_http] == [("KIND_MODEL", 2, [])]
    assert [(model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind), g.count) for g in over_grpc] == [
        ("KIND_MODEL", 2)]


def test_onnxruntime_runs_a_kind_model_instance_on_the_cpu_as_tritons_backend_does(server: RunningServer) -> None:
    np.testing.assert_allclose(_infer(server, "onnx_model"), models.run_mlp(X), rtol=1e-4, atol=1e-5)


def test_a_python_model_of_kind_model_runs_in_its_process_instances(server: RunningServer) -> None:
    np.testing.assert_allclose(_infer(server, "py_model"), X[:, :5])  # as Triton's python backend serves it


def test_a_backend_that_cannot_keep_the_models_devices_refuses_kind_model(server: RunningServer) -> None:
    rows = {row["name"]: row for row in requests.post(f"{server.base}/v2/repository/index", timeout=10).json()}
    assert rows["tflite_model"]["state"] == "UNAVAILABLE"
    reason = rows["tflite_model"]["reason"]
    assert "KIND_MODEL" in reason and "tflite" in reason and "KIND_CPU or KIND_GPU" in reason, reason


class _OnItsGpu(torch.nn.Module):
    """Saved on cuda:0; moves its CPU input there itself, as Triton's KIND_MODEL example models do,
    and says where its weights are."""

    def __init__(self) -> None:
        super().__init__()
        self.net = models.mlp()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        on_gpu = torch.full((x.shape[0], 1), float(self.anchor.is_cuda))
        return self.net(x.to(self.anchor.device)).cpu(), on_gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_model_saved_on_a_gpu_stays_there_under_kind_model(tmp_path: Path) -> None:
    (tmp_path / "on_gpu/1").mkdir(parents=True)
    torch.jit.script(_OnItsGpu().cuda()).save(str(tmp_path / "on_gpu/1/model.pt"))
    two_outputs = ('output [ { name: "y" data_type: TYPE_FP32 dims: [ 5 ] }, '
                   '{ name: "on_gpu" data_type: TYPE_FP32 dims: [ 1 ] } ]')
    models.write(tmp_path / "on_gpu/config.pbtxt", PBTXT.format(backend="pytorch", kind="KIND_MODEL").replace(
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 5 ] } ]', two_outputs))
    with serve(tmp_path) as running:
        given = httpclient.InferInput("x", list(X.shape), "FP32")
        given.set_data_from_numpy(X)
        answer = httpclient.InferenceServerClient(running.url).infer("on_gpu", [given])
        assert answer.as_numpy("on_gpu").ravel().tolist() == [1.0, 1.0, 1.0]  # not mapped to the CPU
        np.testing.assert_allclose(answer.as_numpy("y"), models.run_mlp(X), rtol=1e-3, atol=1e-4)
