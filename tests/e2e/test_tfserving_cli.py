"""`inferd tfserving`: tensorflow_model_server's flags and files (models.config, batching parameters,
monitoring config, polling), called with the tensorflow-serving-api stubs."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests

from tests import tf_models
from tests.conftest import ROOT, RunningServer, free_port, serve, until_ready

MODELS_CONFIG = """
model_config_list: {{
  config: {{
    name: "{name}",
    base_path: "{path}",
    model_platform: "tensorflow"
    {extra}
  }}
}}
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tfs_cli")
    tf_models.build_half_plus_two_tf1(root / "half_plus_two" / "00000123")
    tf_models.build_half_plus_two_tf2(root / "half_plus_two_tf2" / "00000007")
    tf_models.build_half_plus_two_tf2(root / "half_plus_two_tf2" / "00000009")
    return root


class TFServing:
    def __init__(self, process: subprocess.Popen[str], grpc_port: int, rest_port: int, lines: list[str]) -> None:
        self.process, self.lines = process, lines
        self.grpc_url, self.base = f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}"

    def stub(self):
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        return prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(self.grpc_url))


@contextlib.contextmanager
def tfserving(*flags: str) -> Iterator[TFServing]:
    """`inferd tfserving` started as tensorflow_model_server would be, on free ports."""
    grpc_port, rest_port = free_port(), free_port()
    command = [sys.executable, "-m", "inferd", "tfserving", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
               "--host=127.0.0.1", *flags]
    lines: list[str] = []
    with until_ready(command, {**os.environ, "PYTHONUNBUFFERED": "1"}, ROOT, lines) as process:
        yield TFServing(process, grpc_port, rest_port, lines)


def predict(stub, model: str, x: float, label: str = "") -> tuple[float, int]:
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if label:
        request.model_spec.version_label = label
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(x)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    if model != "half_plus_two":  # the TF2 export's signature is [-1, 1]
        request.inputs["x"].tensor_shape.dim.add().size = 1
    result = stub.Predict(request, timeout=30)
    return result.outputs["y"].float_val[0], result.model_spec.version.value


def run(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferd", "tfserving", *flags], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_model_base_path_batching_and_monitoring(models: Path, tmp_path: Path) -> None:
    batching = tmp_path / "batching.txt"
    batching.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 1000 }\n"
                        "num_batch_threads { value: 2 }\n")
    monitoring = tmp_path / "monitoring.txt"
    monitoring.write_text('prometheus_config: { enable: true, path: "/monitoring/prometheus/metrics" }\n')
    with tfserving(f"--model_base_path={models / 'half_plus_two_tf2'}", "--enable_batching",
                   f"--batching_parameters_file={batching}", f"--monitoring_config_file={monitoring}") as server:
        assert predict(server.stub(), "default", 2.0) == (3.0, 9)  # --model_name's default, the newest version
        metrics = requests.get(f"{server.base}/monitoring/prometheus/metrics", timeout=10).text
        assert "# TYPE" in metrics and 'model="default"' in metrics
        rows = requests.post(f"{server.base}/v1/models/default:predict", json={"instances": [[2.0], [4.0]]},
                             timeout=10)
        assert rows.json() == {"predictions": [[3.0], [4.0]]}
        too_many = requests.post(f"{server.base}/v1/models/default:predict", json={"instances": [[1.0]] * 9},
                                 timeout=10)
        assert too_many.status_code == 400 and "outside 1..8" in too_many.json()["error"]


def test_models_config_with_policy_labels_and_reload(models: Path, tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    extra = ("model_version_policy: { all: {} }\n    version_labels { key: 'stable' value: 7 }\n"
             "    version_labels { key: 'canary' value: 9 }")
    config.write_text(MODELS_CONFIG.format(name="tf2", path=models / "half_plus_two_tf2", extra=extra))
    with tfserving(f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1") as server:
        stub = server.stub()
        assert predict(stub, "tf2", 2.0, "stable") == (3.0, 7)
        assert predict(stub, "tf2", 2.0, "canary") == (3.0, 9)
        status = requests.get(f"{server.base}/v1/models/tf2", timeout=10).json()
        assert [row["version"] for row in status["model_version_status"]] == ["7", "9"]
        # a relative base_path is read from the config file's folder
        relative = os.path.relpath(models / "half_plus_two", tmp_path)
        config.write_text(MODELS_CONFIG.format(name="tf1", path=relative, extra=""))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.RpcError):
                if predict(stub, "tf1", 2.0) == (3.0, 123):
                    break
            time.sleep(0.5)
        assert predict(stub, "tf1", 2.0) == (3.0, 123)
        with pytest.raises(grpc.RpcError) as info:
            predict(stub, "tf2", 2.0)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and "Servable not found" in info.value.details()
        config.write_text("not a config")  # a broken rewrite is logged; what is served stays
        deadline = time.monotonic() + 60
        while "model config not applied" not in "".join(server.lines):
            assert time.monotonic() < deadline, "".join(server.lines)
            time.sleep(0.1)
        assert predict(stub, "tf1", 2.0) == (3.0, 123)


@pytest.mark.parametrize("kind", ["inferd", "grpcio"])
def test_grpc_server_switch(models: Path, kind: str) -> None:
    """--grpc-server as `inferd serve` has it: grpcio's server takes the channel argument inferd's
    own server names as having no effect; both answer Predict."""
    with tfserving(f"--model_base_path={models / 'half_plus_two_tf2'}", f"--grpc-server={kind}",
                   "--grpc_channel_arguments=grpc.keepalive_time_ms=60000") as server:
        assert predict(server.stub(), "default", 2.0) == (3.0, 9)
        ignored = "grpc.keepalive_time_ms has no effect on inferd's gRPC server" in "".join(server.lines)
        assert ignored == (kind == "inferd")


def test_bad_files_and_flags_are_clear_errors(tmp_path: Path, models: Path) -> None:
    bad = tmp_path / "bad.config"
    bad.write_text("improperly formatted file")
    done = run(f"--model_config_file={bad}")
    assert done.returncode == 2
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in done.stderr
    tls = run(f"--model_base_path={models / 'half_plus_two'}", "--ssl_config_file=ssl.config")
    assert tls.returncode == 2 and "--ssl_config_file=ssl.config is not supported" in tls.stderr
    unknown = run(f"--model_base_path={models / 'half_plus_two'}", "--no_such_flag=1")
    assert unknown.returncode == 2 and "unrecognized arguments: --no_such_flag=1" in unknown.stderr
    other = tmp_path / "onnx.config"
    other.write_text(MODELS_CONFIG.format(name="m", path=models, extra="").replace('"tensorflow"', '"onnx"'))
    platform = run(f"--model_config_file={other}")
    assert platform.returncode == 2 and "model_platform 'onnx' is not served" in platform.stderr


def reload_request(*models: tuple[str, str, str]):
    """A ReloadConfigRequest (tensorflow-serving-api's) listing (name, base_path, extra text) models."""
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_management_pb2

    request = model_management_pb2.ReloadConfigRequest()
    for name, path, extra in models:
        one = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(MODELS_CONFIG.format(name=name, path=path, extra=extra), one.config)
        request.config.model_config_list.config.extend(one.config.model_config_list.config)
    return request


def reload_config(server: TFServing | RunningServer, request, token: str | None = "secret"):
    from tensorflow_serving.apis import model_service_pb2_grpc

    stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(server.grpc_url))
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    return stub.HandleReloadConfigRequest(request, timeout=120, metadata=metadata)


def reload_refused(server: TFServing | RunningServer, request, token: str | None = "secret"
                   ) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        reload_config(server, request, token)
    return info.value.code(), info.value.details()


def test_handle_reload_config_request(models: Path, tmp_path: Path) -> None:
    """ModelService/HandleReloadConfigRequest as TF Serving (9d981c5c) answers it: the new
    model_config_list replaces the served one (server_core.cc:401-440: models left out unload, new ones
    load, policies and labels change); a failure is the call's status (model_service_impl.cc:44-84),
    in TF's words and codes: another config kind, a name listed twice, a relative base_path, no
    platform are INVALID_ARGUMENT (model_service_impl.cc:66-69, server_core.cc:78-150), a label for
    a version not available FAILED_PRECONDITION (server_core.cc:549-584), a new model that loads no
    version UNKNOWN (server_core.cc:341-362). It is model control: the token applies."""
    from tensorflow_serving.apis import model_management_pb2

    config = tmp_path / "models.config"
    config.write_text(MODELS_CONFIG.format(name="tf2", path=models / "half_plus_two_tf2", extra=""))
    broken = tmp_path / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "1" / "saved_model.pb").write_bytes(b"not a saved model")
    tf1, tf2 = str(models / "half_plus_two"), str(models / "half_plus_two_tf2")
    with tfserving(f"--model_config_file={config}", "--model-control-api", "--auth-token=secret") as server:
        stub = server.stub()
        assert predict(stub, "tf2", 2.0) == (3.0, 9)
        assert reload_refused(server, reload_request(("tf1", tf1, "")), token=None)[0] == \
            grpc.StatusCode.UNAUTHENTICATED
        custom = model_management_pb2.ReloadConfigRequest()
        custom.config.custom_model_config.type_url = "type.googleapis.com/some.Config"
        assert reload_refused(server, custom) == (grpc.StatusCode.INVALID_ARGUMENT, (
            "ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList is "
            "currently supported"))
        assert reload_refused(server, reload_request(("tf1", tf1, ""), ("tf1", tf2, ""))) == (
            grpc.StatusCode.INVALID_ARGUMENT, "Illegal to list model tf1 multiple times in config list")
        assert reload_refused(server, reload_request(("tf1", "models/half_plus_two", ""))) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "Expected model tf1 to have an absolute path or URI; got base_path()=models/half_plus_two")
        no_platform = reload_request(("tf1", tf1, ""))
        no_platform.config.model_config_list.config[0].model_platform = ""
        assert reload_refused(server, no_platform) == (grpc.StatusCode.INVALID_ARGUMENT, (
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            "ModelServerConfig::model_platform, model name is tf1"))
        assert predict(stub, "tf2", 2.0) == (3.0, 9)  # a refused reload changed nothing

        # only version 9 serves (latest): TF labels available versions only (server_core.cc:549-584)
        assert reload_refused(server, reload_request(("tf2", tf2, "version_labels { key: 'stable' value: 7 }"))) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "Request to assign label to version 7 of model tf2, which is not currently available for inference")
        assert predict(stub, "tf2", 2.0) == (3.0, 9)  # a refused reload changed nothing

        swap = reload_request(("tf1", tf1, ""),
                              ("tf2", tf2, "model_version_policy: { all: {} }\n"
                                           "    version_labels { key: 'stable' value: 9 }"))
        swap.metric_names.append(":tensorflow:serving:model_count")
        answer = reload_config(server, swap)
        assert answer.HasField("status") and answer.status.error_code == 0 and not answer.status.error_message
        assert [(m.name, m.int64_value_increase) for m in answer.metric] == [(":tensorflow:serving:model_count", 0)]
        assert predict(stub, "tf1", 2.0) == (3.0, 123)
        assert predict(stub, "tf2", 2.0, "stable") == (3.0, 9)
        status = requests.get(f"{server.base}/v1/models/tf2", timeout=10).json()
        assert [row["version"] for row in status["model_version_status"]] == ["7", "9"]
        reload_config(server, reload_request(("tf1", tf1, ""), (
            "tf2", tf2, "model_version_policy: { specific: { versions: 7 } }\n"
                        "    version_labels { key: 'canary' value: 7 }")))
        assert predict(stub, "tf2", 2.0, "canary") == (3.0, 7)
        status = requests.get(f"{server.base}/v1/models/tf2", timeout=10).json()
        assert [row["version"] for row in status["model_version_status"]] == ["7"]

        code, details = reload_refused(server, reload_request(("tf1", tf1, ""), ("broken", str(broken), "")))
        assert code == grpc.StatusCode.UNKNOWN
        assert details.startswith("1 model(s) did not become available: {{name: broken version: 1} due to error: ")
        assert predict(stub, "tf1", 2.0) == (3.0, 123)
        with pytest.raises(grpc.RpcError) as info:
            predict(stub, "tf2", 2.0)  # left out of the list: unloaded
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reload_config_needs_model_control(models: Path) -> None:
    """Without --model-control-api a reload is refused as every model control call is."""
    with tfserving(f"--model_base_path={models / 'half_plus_two_tf2'}") as server:
        code, details = reload_refused(server, reload_request(("tf1", str(models / "half_plus_two"), "")), token=None)
        assert code == grpc.StatusCode.PERMISSION_DENIED and "--model-control-api" in details
        assert predict(server.stub(), "default", 2.0) == (3.0, 9)


@pytest.mark.parametrize("kind", ["inferd", "grpcio"])
def test_reload_config_labels_for_unavailable_versions(models: Path, kind: str) -> None:
    """--allow_version_labels_for_unavailable_models (server_core.cc:556-570 at 9d981c5c): a new
    label may name a version that is not available yet; moving a label still needs its version.
    On both gRPC servers."""
    tf2 = str(models / "half_plus_two_tf2")
    with tfserving(f"--model_base_path={tf2}", "--model_name=tf2", "--model-control-api", f"--grpc-server={kind}",
                   "--allow_version_labels_for_unavailable_models=true") as server:
        both = "model_version_policy: { all: {} }\n    version_labels { key: 'stable' value: 7 }"
        assert reload_config(server, reload_request(("tf2", tf2, both)), token=None).status.error_code == 0
        assert predict(server.stub(), "tf2", 2.0, "stable") == (3.0, 7)
        latest = "version_labels { key: 'stable' value: 7 }"  # kept where it is: 7 may go
        reload_config(server, reload_request(("tf2", tf2, latest)), token=None)
        moved = "model_version_policy: { specific: { versions: 9 } }\n    version_labels { key: 'stable' value: 8 }"
        assert reload_refused(server, reload_request(("tf2", tf2, moved)), token=None) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "Request to assign label to version 8 of model tf2, which is not currently available for inference")


def test_version_flag() -> None:
    done = run("--version")
    assert done.returncode == 0 and done.stdout.startswith("TensorFlow ModelServer: inferd ")


def test_reload_config_on_inferd_serve_with_workers(models: Path, tmp_path: Path) -> None:
    """`inferd serve --model-control explicit`: a reload adds and removes the config's models, the
    repository's own stay; front-end workers forward it to the model process like any change."""
    from tensorflow_serving.apis import model_management_pb2, prediction_service_pb2_grpc

    shutil.copytree(models / "half_plus_two_tf2", tmp_path / "repo" / "tf2")
    with serve(tmp_path / "repo", "--model-control", "explicit", "--load-model", "*", "--auth-token", "tok",
               "--workers", "2", grpc=True) as server:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc_url))
        assert reload_refused(server, reload_request(("tf1", str(models / "half_plus_two"), "")))[0] == \
            grpc.StatusCode.UNAUTHENTICATED
        reload_config(server, reload_request(("tf1", str(models / "half_plus_two"), "")), token="tok")
        assert predict(stub, "tf1", 2.0) == (3.0, 123)
        assert predict(stub, "tf2", 2.0) == (3.0, 9)
        empty = model_management_pb2.ReloadConfigRequest()
        empty.config.model_config_list.SetInParent()
        assert reload_config(server, empty, token="tok").status.error_code == 0
        with pytest.raises(grpc.RpcError) as info:
            predict(stub, "tf1", 2.0)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert predict(stub, "tf2", 2.0) == (3.0, 9)
