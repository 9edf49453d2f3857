"""`inferd torchserve`: torchserve's flags and config.properties, its three addresses (inference,
management, metrics), archives downloaded from allowed_urls, its metrics families, token auth."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from inferd.protocols._proto import torchserve_pb2 as ts
from tests import ts_archives
from tests.conftest import ROOT, free_port, until_ready

X = [[0.25] * 6]


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ts_archives.build_store(tmp_path_factory.mktemp("ts"))


@contextlib.contextmanager
def file_server(folder: Path) -> Iterator[str]:
    """A real HTTP server on loopback that serves ``folder`` (where allowed_urls point)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@contextlib.contextmanager
def torchserve(workdir: Path, properties: dict[str, str], *flags: str,
               environ: dict[str, str] | None = None, output: list[str] | None = None) -> Iterator[dict[str, str]]:
    """``inferd torchserve`` with these config.properties; ``output`` (if given) collects what it prints."""
    ports = {api: free_port() for api in ("inference", "management", "metrics")}
    grpc_ports = {api: free_port() for api in ("grpc_inference", "grpc_management")}
    lines = [f"{api}_address=http://127.0.0.1:{port}" for api, port in ports.items()]
    lines += [f"{api}_port={port}" for api, port in grpc_ports.items()]
    lines += [f"{key}={value}" for key, value in properties.items()]
    (workdir / "config.properties").write_text("\n".join(lines) + "\n")
    command = [sys.executable, "-m", "inferd", "torchserve", "--start", "--foreground", "--ncs", "--ts-config",
               str(workdir / "config.properties"), *flags]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT / "src")),
           "TMPDIR": str(workdir), **(environ or {})}  # its pid file (TorchServe's, in the temp folder) is ours
    with until_ready(command, env, workdir, [] if output is None else output):
        yield {**{api: f"http://127.0.0.1:{port}" for api, port in ports.items()},
               **{api: f"127.0.0.1:{port}" for api, port in grpc_ports.items()}}


def test_three_addresses_metrics_and_downloads(archives: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "ts_mlp.mar").write_bytes((archives / "ts_mlp.mar").read_bytes())
    with file_server(archives) as remote, torchserve(tmp_path, {
            "model_store": str(store), "load_models": "ts_mlp.mar", "default_workers_per_model": "1",
            "disable_token_authorization": "true", "enable_model_api": "true",
            "allowed_urls": f"{remote}/.*"}) as urls:
        inference, management, metrics = urls["inference"], urls["management"], urls["metrics"]
        assert requests.get(f"{inference}/ping", timeout=5).json() == {"status": "Healthy"}
        not_found = {"code": 404, "type": "ResourceNotFoundException",
                     "message": "Requested resource is not found, please refer to API document."}
        for address in (inference, management, metrics):  # management is elsewhere; paths TorchServe lacks
            for path in ("/models", "/v2/health/ready", "/nope") if address == inference else ("/nope",):
                response = requests.get(f"{address}{path}", timeout=5)
                assert (response.status_code, response.json()) == (404, not_found), (address, path)
        response = requests.delete(f"{management}/models", timeout=5)
        assert (response.status_code, response.json()["type"]) == (405, "MethodNotAllowedException")
        assert requests.post(f"{management}/predictions/ts_mlp", json=X, timeout=5).status_code == 404
        described = requests.get(f"{management}/models/ts_mlp", timeout=5).json()[0]
        assert described["loadedAtStartup"] and len(described["workers"]) == 1
        assert requests.post(f"{inference}/predictions/ts_mlp", json=X, timeout=30).status_code == 200

        # a URL that allowed_urls admits is downloaded into the store, and removed on unregister
        response = requests.post(f"{management}/models?url={remote}/doubler.mar&initial_workers=1", timeout=120)
        assert response.status_code == 200, response.text
        assert (store / "doubler.mar").is_file()
        answer = requests.post(f"{inference}/predictions/doubler", json={"values": [1, 2, 3, 4]}, timeout=30)
        assert answer.status_code == 200, answer.text
        response = requests.post(f"{management}/models?url={remote}/doubler.mar", timeout=30)
        assert response.status_code == 500  # TorchServe: "Model file already exists doubler.mar"
        assert response.json()["message"] == "Model file already exists doubler.mar"
        assert requests.delete(f"{management}/models/doubler", timeout=30).status_code == 200
        assert not (store / "doubler.mar").exists()
        assert requests.post(f"{management}/models?url={remote}/missing.mar", timeout=30).status_code == 400
        assert requests.post(f"{management}/models?url=https://example.com/x.mar", timeout=30).status_code == 404

        text = requests.get(f"{metrics}/metrics", timeout=5).text
        assert re.search(r'Requests2XX\{Level="Host",Hostname=".*",\} \d+\.\d+', text), text
        assert re.search(r'Requests4XX\{Level="Host",Hostname=".*",\} [1-9]\d*\.\d+', text), text
        assert re.search(r'ts_inference_requests_total\{model_name="ts_mlp",model_version="default",'
                         r'hostname=".*",\} 1\.0', text), text
        assert re.search(r'ts_inference_latency_microseconds\{model_name="ts_mlp".*\} [1-9]', text), text
        assert "ts_queue_latency_microseconds" in text
        assert requests.get(f"{metrics}/models", timeout=5).status_code == 404


TOKEN_REFUSED = {"code": 400, "type": "InvalidKeyException",
                 "message": "Token Authorization failed. Token either incorrect, expired, or not provided correctly"}


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_token_auth_and_model_api_off_by_default(archives: Path, tmp_path: Path) -> None:
    """TorchServe's token authorization: the management key for the management API (reads
    included), the inference key for the inference API, each refused at the other's door with its
    400; the API key makes a new one (GET /token?type=...); the key file goes at the stop."""
    with torchserve(tmp_path, {}, "--model-store", str(archives), "--models", "ts_mlp.mar") as urls:
        keys = json.loads((tmp_path / "key_file.json").read_text())
        management, inference, api = keys["management"]["key"], keys["inference"]["key"], keys["API"]["key"]
        assert len({management, inference, api}) == 3
        for headers in ({}, _bearer(inference), _bearer("wrong")):
            response = requests.get(f"{urls['management']}/models", timeout=5, headers=headers)
            assert (response.status_code, response.json()) == (400, TOKEN_REFUSED)
        listed = requests.get(f"{urls['management']}/models", timeout=5, headers=_bearer(management))
        assert listed.status_code == 200, listed.text
        scaled = requests.put(f"{urls['management']}/models/ts_mlp?min_worker=2&synchronous=true", timeout=60,
                              headers=_bearer(management))
        assert scaled.status_code == 200, scaled.text  # scaling works without the model API
        refused = requests.post(f"{urls['management']}/models?url=doubler.mar", timeout=5,
                                headers=_bearer(management))
        assert refused.status_code == 405  # enable_model_api is false by default; TorchServe's exact answer
        assert refused.json() == {"code": 405, "type": "MethodNotAllowedException",
                                  "message": "Requested method is not allowed, please refer to API document."}
        for headers in ({}, _bearer(management)):
            response = requests.post(f"{urls['inference']}/predictions/ts_mlp", json=X, timeout=30, headers=headers)
            assert (response.status_code, response.json()) == (400, TOKEN_REFUSED)
        answer = requests.post(f"{urls['inference']}/predictions/ts_mlp", json=X, timeout=30,
                               headers=_bearer(inference))
        assert answer.status_code == 200, answer.text

        # the token API: only the API key renews, and the old key stops working at once
        assert requests.get(f"{urls['management']}/token?type=inference", timeout=5,
                            headers=_bearer(management)).status_code == 400
        renewed = requests.get(f"{urls['management']}/token?type=inference", timeout=5, headers=_bearer(api))
        assert renewed.status_code == 200, renewed.text
        new_inference = json.loads((tmp_path / "key_file.json").read_text())["inference"]["key"]
        assert new_inference not in (inference, management)
        old = requests.post(f"{urls['inference']}/predictions/ts_mlp", json=X, timeout=30, headers=_bearer(inference))
        assert old.status_code == 400
        new = requests.post(f"{urls['inference']}/predictions/ts_mlp", json=X, timeout=30,
                            headers=_bearer(new_inference))
        assert new.status_code == 200, new.text

        # gRPC: TorchServe's interceptor answers PERMISSION_DENIED in the same words
        request = ts.PredictionsRequest(model_name="ts_mlp", input={"data": json.dumps(X).encode()})
        with grpc.insecure_channel(urls["grpc_inference"]) as channel:
            predict = channel.unary_unary(INFERENCE + "Predictions", request_serializer=lambda m: m.SerializeToString(),
                                          response_deserializer=ts.PredictionResponse.FromString)
            with pytest.raises(grpc.RpcError) as denied:
                predict(request, metadata=(("authorization", f"Bearer {management}"),), timeout=30)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert denied.value.details() == TOKEN_REFUSED["message"]
            assert predict(request, metadata=(("authorization", f"Bearer {new_inference}"),), timeout=30).prediction

        stopped = subprocess.run([sys.executable, "-m", "inferd", "torchserve", "--stop", "--foreground"],
                                 capture_output=True, text=True, timeout=90, cwd=tmp_path,
                                 env={**os.environ, "TMPDIR": str(tmp_path)})
        # (another test's server, started at the same time, would have its own pid file elsewhere)
        assert stopped.stdout.strip() == "TorchServe has stopped."
        assert not (tmp_path / "key_file.json").exists()  # TorchServe removes it at the stop


def test_keys_expire_after_token_expiration_min(archives: Path, tmp_path: Path) -> None:
    """TorchServe's token_expiration_min: past it a key is refused until the API key renews it."""
    with torchserve(tmp_path, {"token_expiration_min": "0.05"}, "--model-store", str(archives)) as urls:
        keys = json.loads((tmp_path / "key_file.json").read_text())
        management, api = keys["management"]["key"], keys["API"]["key"]
        assert requests.get(f"{urls['management']}/models", timeout=5, headers=_bearer(management)).status_code == 200
        time.sleep(3.5)
        expired = requests.get(f"{urls['management']}/models", timeout=5, headers=_bearer(management))
        assert (expired.status_code, expired.json()) == (400, TOKEN_REFUSED)
        assert requests.get(f"{urls['management']}/token?type=management", timeout=5,
                            headers=_bearer(api)).status_code == 200
        renewed = json.loads((tmp_path / "key_file.json").read_text())["management"]["key"]
        assert requests.get(f"{urls['management']}/models", timeout=5, headers=_bearer(renewed)).status_code == 200


def test_ping_needs_the_inference_key(archives: Path, tmp_path: Path) -> None:
    """TorchServe's token check stands before its whole inference API, /ping and gRPC Ping included
    (ServerInitializer, GRPCInterceptor at pytorch/serve@62c4d6a1f)."""
    with torchserve(tmp_path, {}, "--model-store", str(archives)) as urls:
        keys = json.loads((tmp_path / "key_file.json").read_text())
        inference, management = keys["inference"]["key"], keys["management"]["key"]
        for headers in ({}, _bearer(management)):
            response = requests.get(f"{urls['inference']}/ping", timeout=5, headers=headers)
            assert (response.status_code, response.json()) == (400, TOKEN_REFUSED)
        response = requests.get(f"{urls['inference']}/ping", timeout=5, headers=_bearer(inference))
        assert (response.status_code, response.json()) == (200, {"status": "Healthy"})
        with grpc.insecure_channel(urls["grpc_inference"]) as channel:
            ping = channel.unary_unary(INFERENCE + "Ping", request_serializer=lambda m: m.SerializeToString(),
                                       response_deserializer=ts.TorchServeHealthResponse.FromString)
            with pytest.raises(grpc.RpcError) as denied:
                ping(empty_pb2.Empty(), timeout=30)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            answer = ping(empty_pb2.Empty(), metadata=(("authorization", f"Bearer {inference}"),), timeout=30)
            assert json.loads(answer.health) == {"status": "Healthy"}


def test_refused_settings_are_named(tmp_path: Path) -> None:
    (tmp_path / "config.properties").write_text("inference_address=https://127.0.0.1:8443\n")
    result = subprocess.run([sys.executable, "-m", "inferd", "torchserve", "--start", "--ts-config",
                             str(tmp_path / "config.properties")], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)
    assert result.returncode == 2
    assert "TLS is not served" in result.stderr
    result = subprocess.run([sys.executable, "-m", "inferd", "torchserve", "--start", "--model-store",
                             str(tmp_path / "missing")], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2  # TorchServe does not start either (its test_snapshot checks it)
    assert f"--model-store directory not found: {tmp_path / 'missing'}" in result.stderr


class _SlowFiles(http.server.SimpleHTTPRequestHandler):
    """Files served a second late: two registrations of one URL overlap while it downloads."""

    def do_GET(self) -> None:
        time.sleep(1.0)
        super().do_GET()


def test_two_registrations_of_one_url_at_once_leave_the_archive_served(archives: Path, tmp_path: Path) -> None:
    """Both downloaded into one store file; the one refused as a duplicate then removed the archive
    that the other serves from. Now the second is told the file exists (TorchServe's 500), and the
    archive stays until the model is unregistered."""
    from concurrent.futures import ThreadPoolExecutor

    store = tmp_path / "store"
    store.mkdir()
    handler = functools.partial(_SlowFiles, directory=str(archives))
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    remote = f"http://127.0.0.1:{files.server_address[1]}"
    try:
        with torchserve(tmp_path, {"model_store": str(store), "disable_token_authorization": "true",
                                   "enable_model_api": "true", "allowed_urls": f"{remote}/.*"}) as urls:
            register = functools.partial(requests.post, f"{urls['management']}/models?url={remote}/doubler.mar"
                                         "&initial_workers=1", timeout=120)
            with ThreadPoolExecutor(2) as pool:
                answers = [future.result() for future in [pool.submit(register) for _ in range(2)]]
            assert sorted(answer.status_code for answer in answers) == [200, 500], [a.text for a in answers]
            refused = next(answer for answer in answers if answer.status_code == 500)
            assert refused.json()["message"] == "Model file already exists doubler.mar"
            assert (store / "doubler.mar").is_file()
            answer = requests.post(f"{urls['inference']}/predictions/doubler", json={"values": [1, 2, 3, 4]},
                                   timeout=30)
            assert answer.status_code == 200, answer.text
            assert requests.delete(f"{urls['management']}/models/doubler", timeout=30).status_code == 200
            assert not (store / "doubler.mar").exists()
    finally:
        files.shutdown()


INFERENCE = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/"
MANAGEMENT = "/org.pytorch.serve.grpc.management.ManagementAPIsService/"


def _grpc_call(address: str, path: str, request: Message, answer: type[Message]) -> Any:
    """A unary call as TorchServe's generated stubs make it (the messages are wire-compatible)."""
    with grpc.insecure_channel(address) as channel:
        return channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=answer.FromString)(request, timeout=120)


def test_torchserves_grpc_apis_on_its_two_ports(archives: Path, tmp_path: Path) -> None:
    """TorchServe's gRPC inference (grpc_inference_port) and management (grpc_management_port) APIs,
    as ts_scripts/torchserve_grpc_client.py calls them: register, predict (unary and streamed),
    list, describe, scale, set-default, unregister; errors are the call's status."""
    with torchserve(tmp_path, {"model_store": str(archives), "disable_token_authorization": "true",
                               "enable_model_api": "true"}) as urls:
        manage, infer = urls["grpc_management"], urls["grpc_inference"]
        registered = _grpc_call(manage, MANAGEMENT + "RegisterModel", ts.RegisterModelRequest(
            url="doubler.mar", initial_workers=1, synchronous=True, model_name="doubler"), ts.ManagementResponse)
        assert "doubler" in json.loads(registered.msg)["status"]
        health = _grpc_call(infer, INFERENCE + "Ping", empty_pb2.Empty(), ts.TorchServeHealthResponse)
        assert json.loads(health.health) == {"status": "Healthy"}
        body = json.dumps({"values": [1, 2, 3, 4]}).encode()
        over_http = requests.post(f"{urls['inference']}/predictions/doubler", data=body, timeout=30)
        assert over_http.status_code == 200, over_http.text
        request = ts.PredictionsRequest(model_name="doubler", input={"data": body})
        answer = _grpc_call(infer, INFERENCE + "Predictions", request, ts.PredictionResponse)
        assert json.loads(answer.prediction) == over_http.json()
        with grpc.insecure_channel(infer) as channel:
            streamed = list(channel.unary_stream(INFERENCE + "StreamPredictions",
                                                 request_serializer=lambda m: m.SerializeToString(),
                                                 response_deserializer=ts.PredictionResponse.FromString)(request))
        assert [json.loads(s.prediction) for s in streamed] == [over_http.json()]
        listed = json.loads(_grpc_call(manage, MANAGEMENT + "ListModels", ts.ListModelsRequest(),
                                       ts.ManagementResponse).msg)
        assert [m["modelName"] for m in listed["models"]] == ["doubler"]
        scaled = _grpc_call(manage, MANAGEMENT + "ScaleWorker", ts.ScaleWorkerRequest(
            model_name="doubler", min_worker=2, synchronous=True), ts.ManagementResponse)
        assert json.loads(scaled.msg)["status"]
        described = json.loads(_grpc_call(manage, MANAGEMENT + "DescribeModel", ts.DescribeModelRequest(
            model_name="doubler"), ts.ManagementResponse).msg)
        assert described[0]["modelName"] == "doubler" and len(described[0]["workers"]) == 2
        for address, path, message, code, says in (
                (infer, INFERENCE + "Predictions", ts.PredictionsRequest(model_name="nope", input={"data": b"1"}),
                 grpc.StatusCode.INTERNAL, "Model not found: nope"),  # TorchServe's InferenceImpl: INTERNAL
                (manage, MANAGEMENT + "DescribeModel", ts.DescribeModelRequest(model_name="nope"),
                 grpc.StatusCode.NOT_FOUND, "Model not found: nope"),
                (infer, INFERENCE + "Predictions", ts.PredictionsRequest(model_name="doubler",
                                                                         input={"data": b"not json"}),
                 grpc.StatusCode.UNAVAILABLE, "JSONDecodeError")):  # the handler raised: TorchServe's 503
            with pytest.raises(grpc.RpcError) as raised:
                _grpc_call(address, path, message, ts.PredictionResponse if address == infer else ts.ManagementResponse)
            assert raised.value.code() == code and says in (raised.value.details() or ""), raised.value
        gone = _grpc_call(manage, MANAGEMENT + "UnregisterModel", ts.UnregisterModelRequest(model_name="doubler"),
                          ts.ManagementResponse)
        assert json.loads(gone.msg) == {"status": 'Model "doubler" unregistered'}
        with pytest.raises(grpc.RpcError) as raised:
            _grpc_call(infer, INFERENCE + "Predictions", request, ts.PredictionResponse)
        assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.INTERNAL, "Model not found: doubler")


def test_start_returns_at_once_and_stop_foreground_waits_for_the_exit(archives: Path, tmp_path: Path) -> None:
    """As TorchServe's: ``torchserve --start`` returns while the server runs on, printing to the
    command's output "Model server started." once it serves (what TorchServe's ts.launcher.start
    waits for); ``torchserve --stop --foreground`` returns once the server has exited."""
    inference = free_port()
    (tmp_path / "config.properties").write_text(
        f"inference_address=http://127.0.0.1:{inference}\nmanagement_address=http://127.0.0.1:{free_port()}\n"
        f"metrics_address=http://127.0.0.1:{free_port()}\ngrpc_inference_port={free_port()}\n"
        f"grpc_management_port={free_port()}\nmodel_store={archives}\nload_models=ts_mlp.mar\n"
        "default_workers_per_model=2\ndisable_token_authorization=true\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT / "src")),
           "TMPDIR": str(tmp_path)}  # our server's pid file
    log = tmp_path / "server.log"
    with log.open("w") as out:
        started = subprocess.run([sys.executable, "-m", "inferd", "torchserve", "--start", "--ncs", "--ts-config",
                                  str(tmp_path / "config.properties")], stdout=out, stderr=subprocess.STDOUT,
                                 timeout=60, cwd=tmp_path, env=env)
    assert started.returncode == 0, log.read_text()
    try:
        deadline = time.monotonic() + 120
        while "Model server started.\n" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert log.read_text().index("inferd ready") < log.read_text().index("Model server started.")
        ping = requests.get(f"http://127.0.0.1:{inference}/ping", timeout=5)
        assert ping.json() == {"status": "Healthy"}
        pid = int((tmp_path / ".model_server.pid").read_text())
    finally:
        stopped = subprocess.run([sys.executable, "-m", "inferd", "torchserve", "--stop", "--foreground"],
                                 capture_output=True, text=True, timeout=90, cwd=tmp_path, env=env)
    assert stopped.stdout.strip() == "TorchServe has stopped.", stopped
    assert _exited(pid), "--stop --foreground returned while the server was still running"


def _exited(pid: int) -> bool:
    """Gone, or a zombie that init has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


FAILING_INITIALIZE = '''
class FailsToStart:
    def initialize(self, context):
        self.open_weights()

    def open_weights(self):
        raise FileNotFoundError("weights.bin is not in the archive")

    def handle(self, data, context):
        return data
'''


def test_a_handler_that_fails_to_initialize_is_logged_with_its_traceback(tmp_path: Path) -> None:
    """As TorchServe's worker logs it: where in the handler the error came from, not only its type."""
    _, store = ts_archives.handler_archive(tmp_path, "fails", FAILING_INITIALIZE)
    output: list[str] = []
    with torchserve(tmp_path, {"model_store": str(store), "disable_token_authorization": "true",
                               "enable_model_api": "true"}, output=output) as urls:
        response = requests.post(f"{urls['management']}/models?url=fails.mar&initial_workers=1&synchronous=true",
                                 timeout=120)
        assert response.status_code == 500, response.text
        assert "FileNotFoundError: weights.bin is not in the archive" in response.json()["message"]
        logged = "".join(output)
        assert "model fails failed to load:\nTraceback (most recent call last):" in logged, logged
        assert re.search(r'handler\.py", line 4, in initialize\n\s+self\.open_weights\(\)', logged), logged
        assert re.search(r'handler\.py", line 7, in open_weights\n\s+raise FileNotFoundError', logged), logged


FLAKY_INITIALIZE = '''
import os


class Flaky:
    def initialize(self, context):
        if not os.path.exists({marker!r}):
            raise RuntimeError("the marker file is not there yet")

    def handle(self, data, context):
        return ["up"] * len(data)
'''


def test_workers_that_fail_to_start_are_retried_and_listed_until_they_start(tmp_path: Path) -> None:
    """TorchServe's WorkerThread retries a worker whose handler failed to start, after 1, 1, 2, 3...
    s, and describe lists it meanwhile; an asynchronous registration stays registered, so the
    model serves once its handler starts, with no new request."""
    marker = tmp_path / "marker"
    _, store = ts_archives.handler_archive(tmp_path, "flaky", FLAKY_INITIALIZE.format(marker=str(marker)))
    output: list[str] = []
    with torchserve(tmp_path, {"model_store": str(store), "disable_token_authorization": "true",
                               "enable_model_api": "true"}, output=output) as urls:
        response = requests.post(f"{urls['management']}/models?url=flaky.mar&initial_workers=1&synchronous=false",
                                 timeout=30)
        assert (response.status_code, response.json()["status"]) == (202, "Processing worker updates...")
        deadline = time.monotonic() + 60
        while "".join(output).count("the marker file is not there yet") < 3:  # the first try and two retries
            assert time.monotonic() < deadline, "".join(output)
            time.sleep(0.1)
        described = requests.get(f"{urls['management']}/models/flaky", timeout=5).json()[0]
        assert [w["status"] for w in described["workers"]] == ["UNLOADING"], described
        marker.touch()
        while requests.get(f"{urls['management']}/models/flaky", timeout=5).json()[0]["workers"][0]["status"] \
                != "READY":
            assert time.monotonic() < deadline, "".join(output)
            time.sleep(0.2)
        answer = requests.post(f"{urls['inference']}/predictions/flaky", data=b"x", timeout=30)
        assert (answer.status_code, answer.text) == (200, "up")


LOGGING_HANDLER = '''
import logging

logger = logging.getLogger(__name__)


class Logs:
    def initialize(self, context):
        logger.info("loaded %s", context.model_name)

    def handle(self, data, context):
        logger.info("answering %d request(s)", len(data))
        context.metrics.add_counter("UndeclaredCount", 1)  # neither declared nor auto-detected
        return ["ok"] * len(data)
'''


def test_torchserves_log_files(tmp_path: Path) -> None:
    """TorchServe's log4j2 files: ts_log, access_log and model_log in ./logs (LOG_LOCATION unset),
    ts_metrics and model_metrics in METRICS_LOCATION."""
    metrics = tmp_path / "metrics"
    _, store = ts_archives.handler_archive(tmp_path, "logs", LOGGING_HANDLER)
    with torchserve(tmp_path, {"model_store": str(store), "load_models": "logs.mar",
                               "default_workers_per_model": "1", "disable_token_authorization": "true"},
                    environ={"METRICS_LOCATION": str(metrics)}) as urls:
        answer = requests.post(f"{urls['inference']}/predictions/logs", data=b"x", timeout=30)
        assert (answer.status_code, answer.text) == (200, "ok")
    logs = tmp_path / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["access_log.log", "model_log.log", "ts_log.log"]
    assert sorted(p.name for p in metrics.iterdir()) == ["model_metrics.log", "ts_metrics.log"]
    assert "model logs version 1.0 ready" in (logs / "ts_log.log").read_text()
    assert re.search(r"POST /predictions/logs 200 ", (logs / "access_log.log").read_text())
    model_log = (logs / "model_log.log").read_text()
    assert "[INFO] handler - loaded logs" in model_log and "answering 1 request(s)" in model_log, model_log
    ts_metrics = (metrics / "ts_metrics.log").read_text()
    assert "Requests2XX.Count:1.0|#Level:Host|#hostname:" in ts_metrics, ts_metrics
    assert "ts_inference_requests_total.Count:1.0|#model_name:logs,model_version:default|#hostname:" in ts_metrics
    model_metrics = (metrics / "model_metrics.log").read_text()
    assert "[METRICS]PredictionTime.Milliseconds:" in model_metrics and "UndeclaredCount" not in model_metrics
    for name in ("CPUUtilization.Percent", "MemoryUsed.Megabytes", "MemoryAvailable.Megabytes",
                 "MemoryUtilization.Percent", "DiskUsage.Gigabytes", "DiskUtilization.Percent",
                 "DiskAvailable.Gigabytes"):  # TorchServe's system metrics, logged at start
        assert re.search(rf"{name}:[0-9.]+\|#Level:Host\|#hostname:[^,]+,timestamp:[0-9]+$", ts_metrics, re.M), name


def test_disable_system_metrics_leaves_them_out_of_ts_metrics(tmp_path: Path) -> None:
    with torchserve(tmp_path, {"disable_token_authorization": "true", "disable_system_metrics": "true"}) as urls:
        assert requests.get(f"{urls['inference']}/ping", timeout=5).status_code == 200
    ts_metrics = (tmp_path / "logs" / "ts_metrics.log").read_text()
    assert "Requests2XX.Count:1.0" in ts_metrics and "Utilization" not in ts_metrics, ts_metrics


def _logs_store(tmp_path: Path) -> Path:
    """A model store holding logs.mar (LOGGING_HANDLER, version 1.0)."""
    _, store = ts_archives.handler_archive(tmp_path, "logs", LOGGING_HANDLER)
    return store


def _register_and_predict(urls: dict[str, str]) -> None:
    registered = requests.post(f"{urls['management']}/models", params={
        "url": "logs.mar", "initial_workers": "1", "synchronous": "true"}, timeout=120)
    assert registered.status_code == 200, registered.text
    answer = requests.post(f"{urls['inference']}/predictions/logs", data=b"x", timeout=30)
    assert (answer.status_code, answer.text) == (200, "ok")


FRONT_END_GAUGES = (r'QueueTime\{Level="Host",Hostname="[^"]+",\} \d+\.\d+',
                    r'WorkerThreadTime\{Level="Host",Hostname="[^"]+",\} \d+\.\d+',
                    r'WorkerLoadTime\{WorkerName="W-9000-logs_1\.0",Level="Host",Hostname="[^"]+",\} \d+\.\d+',
                    r'CPUUtilization\{Level="Host",Hostname="[^"]+",\} \d+\.\d+',
                    r'MemoryUsed\{Level="Host",Hostname="[^"]+",\} \d+\.\d+',
                    r'DiskAvailable\{Level="Host",Hostname="[^"]+",\} \d+\.\d+')


def test_prometheus_mode_answers_the_front_end_and_system_gauges(tmp_path: Path) -> None:
    """metrics_mode=prometheus: QueueTime, WorkerThreadTime, WorkerLoadTime and the host's system
    gauges are on the metrics address (TorchServe's metrics_default.yaml ts_metrics), none in ts_metrics.log."""
    store = _logs_store(tmp_path)
    with torchserve(tmp_path, {"model_store": str(store), "enable_model_api": "true", "metrics_mode": "prometheus",
                               "disable_token_authorization": "true"}) as urls:
        _register_and_predict(urls)
        shown = requests.get(f"{urls['metrics']}/metrics", timeout=5).text
    for pattern in FRONT_END_GAUGES:
        assert len(re.findall(f"^{pattern}$", shown, re.M)) == 1, (pattern, shown)
    for kind, name in (("gauge", "QueueTime"), ("gauge", "GPUMemoryUtilization"), ("counter", "Requests2XX")):
        assert f"# TYPE {name} {kind}\n" in shown, shown  # a GPU gauge declared, without samples here
    assert "QueueTime" not in (tmp_path / "logs" / "ts_metrics.log").read_text()


def test_worker_load_time_of_the_models_loaded_at_start(tmp_path: Path) -> None:
    """TorchServe measures WorkerLoadTime for every worker it starts, those of load_models too."""
    store = _logs_store(tmp_path)
    with torchserve(tmp_path, {"model_store": str(store), "load_models": "logs.mar", "metrics_mode": "prometheus",
                               "default_workers_per_model": "1", "disable_token_authorization": "true"}) as urls:
        shown = requests.get(f"{urls['metrics']}/metrics", timeout=5).text
    loaded = re.findall(r'^WorkerLoadTime\{WorkerName="W-9000-logs_1\.0",Level="Host",Hostname="[^"]+",\} '
                        r"(\d+\.\d+)$", shown, re.M)
    assert len(loaded) == 1 and float(loaded[0]) > 0, shown


def test_disable_system_metrics_leaves_the_system_gauges_without_samples(tmp_path: Path) -> None:
    """TorchServe starts no metrics collector with disable_system_metrics=true: in prometheus mode its
    system gauges are declared and have no samples."""
    with torchserve(tmp_path, {"metrics_mode": "prometheus", "disable_system_metrics": "true",
                               "disable_token_authorization": "true"}) as urls:
        shown = requests.get(f"{urls['metrics']}/metrics", timeout=5).text
    for name in ("CPUUtilization", "MemoryUsed", "DiskAvailable"):
        assert f"# TYPE {name} gauge\n" in shown, shown
        assert not re.search(f"^{name}{{", shown, re.M), shown
    assert re.search(r'^QueueTime\{Level="Host",', shown, re.M), shown  # the front end's own gauges stay


def test_legacy_mode_logs_the_front_end_metrics_and_answers_only_ts_inference(tmp_path: Path) -> None:
    """metrics_mode=legacy: the ts_inference_* counters only on the metrics address; the request
    counts, QueueTime, WorkerLoadTime and the system metrics only in ts_metrics.log."""
    store = _logs_store(tmp_path)
    with torchserve(tmp_path, {"model_store": str(store), "enable_model_api": "true", "metrics_mode": "legacy",
                               "disable_token_authorization": "true"}) as urls:
        _register_and_predict(urls)
        shown = requests.get(f"{urls['metrics']}/metrics", timeout=5).text
    assert re.search(r'^ts_inference_requests_total\{model_name="logs",model_version="default",hostname="[^"]+",\} '
                     r"1\.0$", shown, re.M), shown
    for name in ("Requests2XX", "QueueTime", "WorkerLoadTime", "CPUUtilization"):
        assert name not in shown, shown
    logged = (tmp_path / "logs" / "ts_metrics.log").read_text()
    assert "ts_inference" not in logged, logged
    for line in (r"Requests2XX\.Count:1\.0\|#Level:Host\|", r"QueueTime\.Milliseconds:[0-9.e-]+\|#Level:Host\|",
                 r"WorkerLoadTime\.Milliseconds:[0-9.]+\|#WorkerName:W-9000-logs_1\.0,Level:Host\|",
                 r"CPUUtilization\.Percent:[0-9.]+\|#Level:Host\|"):
        assert re.search(line, logged), (line, logged)


HEADERS_HANDLER = '''
class Headers:
    def initialize(self, context):
        pass

    def handle(self, data, context):
        for i in range(len(data)):
            context.set_response_header(i, "X-Answer-Row", str(i))
            context.set_response_header(i, "Content-Type", "text/x-handler")
            context.set_response_header(i, "X-Split", "a\\r\\nInjected: yes")  # cannot be sent: left out
            context.set_response_header(i, "Content-Length", "1")  # the server's own: left out
        return ["ok"] * len(data)
'''


def test_headers_a_handler_sets_are_sent_with_its_answer(tmp_path: Path) -> None:
    """context.set_response_header(idx, key, value): TorchServe's front end sends each with the
    answer; a Content-Type set so is the answer's content type."""
    _, store = ts_archives.handler_archive(tmp_path, "headers", HEADERS_HANDLER)
    with torchserve(tmp_path, {"model_store": str(store), "load_models": "headers.mar",
                               "default_workers_per_model": "1", "disable_token_authorization": "true"}) as urls:
        answer = requests.post(f"{urls['inference']}/predictions/headers", data=b"x", timeout=30)
    assert (answer.status_code, answer.text) == (200, "ok")
    assert answer.headers["X-Answer-Row"] == "0" and answer.headers["Content-Type"] == "text/x-handler"
    assert "Injected" not in answer.headers and "X-Split" not in answer.headers, answer.headers
    assert answer.headers["Content-Length"] == "2"


DECLARED_METRICS_HANDLER = '''
from ts.metrics.metric_type_enum import MetricTypes


class Declared:
    def initialize(self, context):
        self.metrics = context.metrics

    def handle(self, data, context):
        # declared in metrics_config, never added by the handler: TorchServe's cache holds it from the start
        self.metrics.get_metric("RowsSeen", MetricTypes.COUNTER).add_or_update(len(data), [context.model_name])
        return ["ok"] * len(data)
'''


def test_metrics_config_metrics_are_in_the_handlers_cache(tmp_path: Path) -> None:
    """context.metrics.get_metric finds what metrics_config's model_metrics declares, as
    TorchServe's MetricsCacheYamlImpl is filled from the file when its worker starts."""
    work, store = ts_archives.handler_archive(tmp_path, "declared", DECLARED_METRICS_HANDLER)
    (work / "metrics.yaml").write_text("model_metrics:\n  counter:\n    - name: RowsSeen\n      unit: count\n"
                                       "      dimensions: [ModelName]\n")
    with torchserve(tmp_path, {"model_store": str(store), "load_models": "declared.mar",
                               "default_workers_per_model": "1", "disable_token_authorization": "true",
                               "metrics_mode": "prometheus", "metrics_config": str(work / "metrics.yaml")}) as urls:
        for _ in range(2):
            answer = requests.post(f"{urls['inference']}/predictions/declared", data=b"x", timeout=30)
            assert (answer.status_code, answer.text) == (200, "ok")
        counted = re.compile(r'^RowsSeen\{ModelName="declared",Hostname="[^"]+",\} 2\.0$', re.M)
        deadline = time.monotonic() + 10  # an instance's metrics reach the front end after its answer
        while not counted.search(shown := requests.get(f"{urls['metrics']}/metrics", timeout=5).text):
            assert time.monotonic() < deadline, shown
            time.sleep(0.1)


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs (an exited child not yet reaped, a zombie, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_started_line_and_stop_in_the_foreground_as_torchserves_launcher_needs(archives: Path,
                                                                                tmp_path: Path) -> None:
    """TorchServe's launcher (ts/launcher.py, its tests' start_torchserve) reads the output until
    "Model server started", and its `torchserve --stop --foreground` returns once the server has
    exited, so that the next start finds the ports free."""
    output: list[str] = []
    with torchserve(tmp_path, {"disable_token_authorization": "true"}, "--model-store", str(archives),
                    "--models", "ts_mlp.mar", output=output) as urls:
        deadline = time.monotonic() + 10
        while "Model server started.\n" not in output:
            assert time.monotonic() < deadline, "".join(output)
            time.sleep(0.05)
        pid = int((tmp_path / ".model_server.pid").read_text())
        stopped = subprocess.run([sys.executable, "-m", "inferd", "torchserve", "--stop", "--foreground"],
                                 capture_output=True, text=True, timeout=90, cwd=tmp_path,
                                 env={**os.environ, "TMPDIR": str(tmp_path)})
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not _running(pid), "--stop --foreground returned before the server exited"
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{urls['inference']}/ping", timeout=1)


def test_an_archive_linked_into_the_store_is_registered(archives: Path, tmp_path: Path) -> None:
    """As in TorchServe (whose test harness links its archives into the store): the url is checked
    to name a file in the store; a link there may lead anywhere the operator put it."""
    store = tmp_path / "store"
    store.mkdir()
    (store / "linked.mar").symlink_to(archives / "ts_mlp.mar")
    with torchserve(tmp_path, {"model_store": str(store), "disable_token_authorization": "true",
                               "enable_model_api": "true"}) as urls:
        response = requests.post(f"{urls['management']}/models?url=linked.mar&model_name=linked"
                                 "&initial_workers=1&synchronous=true", timeout=120)
        assert response.status_code == 200, response.text
        answer = requests.post(f"{urls['inference']}/predictions/linked", json=X, timeout=30)
        assert answer.status_code == 200, answer.text
        for url in (str(archives / "ts_mlp.mar"), "../store/linked.mar"):  # a url itself still may not leave it
            refused = requests.post(f"{urls['management']}/models?url={url}", timeout=30)
            assert refused.status_code == 404, refused.text


def test_models_given_at_start_by_url_are_downloaded(archives: Path, tmp_path: Path) -> None:
    """`--models name=URL` (TorchServe's ModelServer registers it as POST /models would: downloaded
    into the store when allowed_urls admits it); an archive that cannot be served is logged and the
    server still starts (it stopped with a traceback)."""
    store = tmp_path / "store"
    store.mkdir()
    output: list[str] = []
    with file_server(archives) as remote, torchserve(
            tmp_path, {"disable_token_authorization": "true"}, "--model-store", str(store), "--models",
            f"mlp={remote}/ts_mlp.mar", "missing.mar", output=output) as urls:
        assert (store / "ts_mlp.mar").is_file()
        described = requests.get(f"{urls['management']}/models/mlp", timeout=5).json()[0]
        assert described["loadedAtStartup"] and described["modelUrl"] == f"{remote}/ts_mlp.mar"
        answer = requests.post(f"{urls['inference']}/predictions/mlp", json=X, timeout=30)
        assert answer.status_code == 200, answer.text
        assert any("missing.mar not served" in line for line in output), "".join(output)


def test_grpc_registering_with_the_model_api_off_is_refused_in_torchserves_words(archives: Path,
                                                                                  tmp_path: Path) -> None:
    """TorchServe's ManagementImpl: PERMISSION_DENIED "Model API disabled" (its tests match the words)."""
    with torchserve(tmp_path, {"disable_token_authorization": "true"}, "--model-store", str(archives),
                    "--models", "ts_mlp.mar") as urls:
        calls = ((MANAGEMENT + "RegisterModel", ts.RegisterModelRequest(url="doubler.mar", model_name="doubler")),
                 (MANAGEMENT + "UnregisterModel", ts.UnregisterModelRequest(model_name="ts_mlp")))
        for path, request in calls:
            with pytest.raises(grpc.RpcError) as refused:
                _grpc_call(urls["grpc_management"], path, request, ts.ManagementResponse)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "Model API disabled" in refused.value.details()


def test_a_no_archive_folder_registers_and_serves(archives: Path, tmp_path: Path) -> None:
    """torch-model-archiver --archive-format no-archive makes a folder (its files and
    MAR-INF/MANIFEST.json); TorchServe registers it by its name in the store, as a .mar."""
    store = tmp_path / "store"
    store.mkdir()
    work = archives.parent / "work"
    subprocess.run(["torch-model-archiver", "--model-name", "doubler_dir", "--version", "1.0", "--serialized-file",
                    str(work / "doubler.pth"), "--model-file", str(work / "model.py"), "--handler",
                    str(work / "handler.py"), "--export-path", str(store), "--archive-format", "no-archive"],
                   check=True, capture_output=True)
    assert (store / "doubler_dir" / "MAR-INF" / "MANIFEST.json").is_file()
    with torchserve(tmp_path, {"model_store": str(store), "disable_token_authorization": "true",
                               "enable_model_api": "true"}) as urls:
        response = requests.post(f"{urls['management']}/models?url=doubler_dir&initial_workers=1&synchronous=true",
                                 timeout=120)
        assert response.status_code == 200, response.text
        body = {"values": [1.0, 2.0, 3.0, 4.0]}
        answer = requests.post(f"{urls['inference']}/predictions/doubler_dir", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        expected = ts_archives.doubler_in_process(work, [body["values"]])
        assert answer.json()["scores"] == pytest.approx(expected[0], rel=1e-5)
        described = requests.get(f"{urls['management']}/models/doubler_dir", timeout=5).json()[0]
        assert described["modelVersion"] == "1.0" and described["workers"]
        assert requests.delete(f"{urls['management']}/models/doubler_dir", timeout=30).status_code == 200
        assert (store / "doubler_dir" / "MAR-INF" / "MANIFEST.json").is_file()  # the operator's folder stays


SLOW_START_HANDLER = '''
import time

from ts.torch_handler.base_handler import BaseHandler


class SlowStart(BaseHandler):
    def initialize(self, context):
        time.sleep(3)
        super().initialize(context)
'''


def test_workers_being_started_are_described_until_ready(archives: Path, tmp_path: Path) -> None:
    """TorchServe lists a version's workers from their start ("UNLOADING", no pid yet), so a
    client that registers asynchronously and polls the description for READY finds them."""
    store = tmp_path / "store"
    store.mkdir()
    (tmp_path / "slow_handler.py").write_text(SLOW_START_HANDLER)
    ts_archives.archive(store, "slow", archives.parent / "work" / "mlp.pt", str(tmp_path / "slow_handler.py"))
    with torchserve(tmp_path, {"model_store": str(store), "disable_token_authorization": "true",
                               "enable_model_api": "true"}) as urls:
        response = requests.post(f"{urls['management']}/models?url=slow.mar&initial_workers=1&synchronous=false",
                                 timeout=30)
        assert response.status_code == 202, response.text
        starting = requests.get(f"{urls['management']}/models/slow", timeout=5).json()[0]["workers"]
        assert [(w["status"], w["pid"]) for w in starting] == [("UNLOADING", -1)]
        deadline = time.monotonic() + 60
        while True:
            workers = requests.get(f"{urls['management']}/models/slow", timeout=5).json()[0]["workers"]
            if workers and workers[0]["status"] == "READY":
                break
            assert time.monotonic() < deadline, workers
            time.sleep(0.5)
        assert workers[0]["pid"] > 0
