"""`inferd serve REPO --ray ADDRESS` on a two-node Ray cluster on loopback: a head and a second
`ray start --address` node, one logical CPU each, so two replicas (one CPU each) must land on both.
Checked with tritonclient against onnxruntime in-process, autoscaling up under `inferd bench` load
and back down when idle, zero failed requests, nothing left running.

Runs only where Ray Serve is importable (the extra inferd[ray]; not a dev dependency: it is large
and a two-node cluster takes about a minute to start on a small machine)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="the Ray Serve tests need the ray extra (ray[serve])")

import onnxruntime
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.timeout(600)
REPO = ROOT / "examples/models"
MLP = REPO / "mlp_onnx/1/model.onnx"
RAY = str(Path(sys.executable).with_name("ray"))
REPLICA = "ray::ServeReplica:inferd:InferdReplica"


def ray_env(temp: str) -> dict[str, str]:
    src = str(ROOT / "src")  # the nodes' workers import inferd as this checkout has it
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": f"{src}:{path}" if path else src,
            "RAY_TMPDIR": temp, "RAY_metrics_report_interval_ms": "1000",  # Ray's export: every second
            # the one (HeadOnly) proxy would send everything to the head's replica otherwise
            "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0"}


@dataclass(frozen=True)
class Cluster:
    address: str
    metrics_ports: tuple[int, int]  # each node's Ray metrics agent (ray start --metrics-export-port)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Head and second node as `ray start --block` children (stopping them stops their daemons)."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    port, metrics_ports = free_port(), (free_port(), free_port())
    env = ray_env(temp)
    common = ["--block", "--num-cpus", "1", "--disable-usage-stats"]
    head = subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false",
                             "--temp-dir", temp, "--resources", '{"head_node": 1}',
                             "--metrics-export-port", str(metrics_ports[0]), *common],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    nodes = [head]
    try:
        wait_nodes(f"127.0.0.1:{port}", 1, env)
        second = subprocess.Popen([RAY, "start", "--address", f"127.0.0.1:{port}", "--resources",
                                   '{"second_node": 1}', "--metrics-export-port", str(metrics_ports[1]), *common],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        nodes.append(second)
        wait_nodes(f"127.0.0.1:{port}", 2, env)
        yield Cluster(f"127.0.0.1:{port}", metrics_ports)
    finally:
        for node in reversed(nodes):
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
        shutil.rmtree(temp, ignore_errors=True)
    assert not replica_parents(), "replicas outlived the cluster"


def wait_nodes(address: str, count: int, env: dict[str, str], timeout: float = 180.0) -> None:
    """Until the cluster has ``count`` live nodes (asked in a child: no Ray driver in pytest)."""
    script = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
              "print(sum(n['Alive'] for n in ray.nodes()))")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run([sys.executable, "-c", script, address], env=env, capture_output=True, text=True,
                              timeout=120)
        if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    raise RuntimeError(f"the Ray cluster did not reach {count} nodes")


def replica_parents() -> list[int]:
    """The parent (a node's raylet) of each live inferd replica process."""
    parents = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(REPLICA.encode()):
                parents.append(int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]))
        except OSError:
            continue
    return parents


class Deployed:
    def __init__(self, process: subprocess.Popen[str], port: int, grpc_port: int) -> None:
        self.process, self.port, self.url = process, port, f"127.0.0.1:{port}"
        self.grpc_url = f"127.0.0.1:{grpc_port}"


@contextlib.contextmanager
def deploy(cluster: Cluster, *args: str, repository: Path = REPO) -> Iterator[Deployed]:
    port, grpc_port = free_port(), free_port()
    env = ray_env(tempfile.gettempdir())
    process = subprocess.Popen([sys.executable, "-m", "inferd", "serve", str(repository), "--ray", cluster.address,
                                "--ray-proxy", "HeadOnly", "--http-port", str(port), "--grpc-port", str(grpc_port),
                                *args],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if line.startswith("inferd ready"):
            break
    else:
        raise RuntimeError("inferd --ray did not start:\n" + "".join(lines))
    try:
        yield Deployed(process, port, grpc_port)
    finally:
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=120)
        assert process.returncode == 0, "".join(lines) + rest
    deadline = time.monotonic() + 60
    while replica_parents():
        assert time.monotonic() < deadline, "replicas still running after inferd --ray stopped"
        time.sleep(0.5)


def infer(url: str, grpc: bool = False) -> np.ndarray:
    module: Any = grpcclient if grpc else httpclient
    client = module.InferenceServerClient(url)
    x = np.arange(32, dtype=np.float32).reshape(2, 16) / 32
    tensor = module.InferInput("x", [2, 16], "FP32")
    tensor.set_data_from_numpy(x)
    answer = client.infer("mlp_onnx", [tensor]).as_numpy("y")
    session = onnxruntime.InferenceSession(str(MLP), providers=["CPUExecutionProvider"])
    assert np.allclose(answer, session.run(None, {"x": x})[0], atol=1e-5)
    return answer


def tf_serving_answers(url: str) -> None:
    """TF Serving's PredictionService and ModelService through Serve's gRPC proxy, called with
    TF Serving's own stubs (tensorflow-serving-api): four Predict calls answered as onnxruntime
    answers in-process, metadata, status, and an unknown model worded as TF Serving words it."""
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    channel = grpc.insecure_channel(url)
    prediction = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    session = onnxruntime.InferenceSession(str(MLP), providers=["CPUExecutionProvider"])
    for rows in (1, 2, 3, 5):
        x = np.random.default_rng(rows).random((rows, 16), dtype=np.float32)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "mlp_onnx"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
        response = prediction.Predict(request, timeout=60)
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), session.run(None, {"x": x})[0],
                                   atol=1e-5)
        assert response.model_spec.name == "mlp_onnx" and response.model_spec.version.value == 1
    meta_request = get_model_metadata_pb2.GetModelMetadataRequest()
    meta_request.model_spec.name = "mlp_onnx"
    meta_request.metadata_field.append("signature_def")
    meta = prediction.GetModelMetadata(meta_request, timeout=60)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(signatures)
    assert signatures.signature_def["serving_default"].inputs["x"].dtype == tf.float32.as_datatype_enum
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "mlp_onnx"
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request, timeout=60)
    assert [(s.version, s.state) for s in status.model_version_status] == [(1, 30)]  # AVAILABLE
    request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as unknown:
        prediction.Predict(request, timeout=60)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "Request for unknown model: 'nope' is not found" in str(unknown.value.details())


def replica_series(cluster: Cluster, name: str, **match: str) -> list[dict[str, float]]:
    """Per node (its Ray metrics agent): replica -> the sum of ``name``'s samples whose labels
    include ``match``, for inferd's application."""
    nodes = []
    for port in cluster.metrics_ports:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if sample.name == name and labels.get("application") == "inferd" and match.items() <= labels.items():
                    found[labels["replica"]] = found.get(labels["replica"], 0.0) + sample.value
        nodes.append(found)
    return nodes


def wait_series(cluster: Cluster, name: str, total: float, **match: str) -> list[dict[str, float]]:
    """Until the replicas' series of ``name`` add up to ``total`` (the bridge and Ray's export
    each run every second or two)."""
    deadline = time.monotonic() + 60
    while True:
        nodes = replica_series(cluster, name, **match)
        if sum(sum(node.values()) for node in nodes) == total or time.monotonic() > deadline:
            return nodes
        time.sleep(1)


def test_replicas_on_both_nodes_answer_v2(cluster: Cluster) -> None:
    with (deploy(cluster, "--replicas", "2")) as served:
        parents = replica_parents()
        assert len(parents) == 2 and len(set(parents)) == 2, "the two replicas share a node"
        client = httpclient.InferenceServerClient(served.url)
        assert client.is_server_ready() and client.is_model_ready("mlp_onnx")
        assert {m["name"] for m in client.get_model_repository_index()} >= {"mlp_onnx", "text_stats"}
        for _ in range(20):  # Serve spreads these over both replicas (see ray_env)
            infer(served.url)
        v2grpc = grpcclient.InferenceServerClient(served.grpc_url)  # through Serve's gRPC proxy
        assert v2grpc.is_server_ready() and v2grpc.is_model_ready("mlp_onnx")
        assert v2grpc.get_model_metadata("mlp_onnx").inputs[0].name == "x"
        for _ in range(10):
            infer(served.grpc_url, grpc=True)
        with pytest.raises(InferenceServerException) as unknown:
            v2grpc.get_model_metadata("no_such_model")
        assert unknown.value.status() == "StatusCode.NOT_FOUND" and "no_such_model" in unknown.value.message()

        tf_serving_answers(served.grpc_url)  # 4 more successes: TF Serving's protocol

        # each replica's inferd metrics, in Ray's metrics on its own node, tagged with the replica
        success = {"model": "mlp_onnx", "outcome": "success"}
        nodes = wait_series(cluster, "ray_inferd_requests_total", 34, **success)
        assert [len(node) for node in nodes] == [1, 1], nodes  # one replica on each node, each answered
        assert all(count > 0 for node in nodes for count in node.values()), nodes
        assert sum(sum(node.values()) for node in nodes) == 34, nodes  # 20 HTTP, 10 v2 and 4 TF gRPC
        for protocol, sent in (("kserve_v2", 20), ("kserve_v2_grpc", 10), ("tfserving_grpc", 4)):
            counts = wait_series(cluster, "ray_inferd_requests_total", sent, protocol=protocol, **success)
            assert sum(sum(node.values()) for node in counts) == sent, (protocol, counts)
        for _ in range(5):  # the series follow the traffic
            infer(served.url)
        after = wait_series(cluster, "ray_inferd_requests_total", 39, **success)
        assert sum(sum(node.values()) for node in after) == 39, after
        durations = wait_series(cluster, "ray_inferd_request_duration_seconds_count", 39, model="mlp_onnx")
        assert durations == after, (durations, after)  # the histograms, per replica, count the same
        seconds = replica_series(cluster, "ray_inferd_request_duration_seconds_sum", model="mlp_onnx")
        for node, counts in zip(seconds, after, strict=True):  # some time, under a second per request
            assert node.keys() == counts.keys() and all(0 < node[r] < counts[r] for r in node), (seconds, after)
        ready = replica_series(cluster, "ray_inferd_model_state", model="mlp_onnx", state="READY")
        assert [list(node.values()) for node in ready] == [[1.0], [1.0]], ready


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_autoscales_up_under_load_and_down_when_idle(cluster: Cluster, tmp_path: Path, protocol: str) -> None:
    """`inferd bench` load through Serve's HTTP proxy, or its gRPC proxy (KServe v2 gRPC). The
    replicas serve mlp_onnx alone: each one, the one scaled up too, starts without TensorFlow and
    torch (the test above serves the whole examples repository through Ray)."""
    shutil.copytree(MLP.parents[1], tmp_path / "models/mlp_onnx")
    args = ("--autoscale", "1:2", "--target-ongoing-requests", "1", "--autoscale-delays", "1:4")
    with (deploy(cluster, *args, repository=tmp_path / "models")) as served:
        assert len(replica_parents()) == 1
        through = ["--grpc", served.grpc_url] if protocol == "grpc" else []
        peak, started, rounds = 1, time.monotonic(), 0
        while peak < 2 and time.monotonic() - started < 120:  # short rounds of load until Serve scaled up
            report = tmp_path / f"bench{rounds}.json"
            load = subprocess.Popen([sys.executable, "-m", "inferd", "bench", "-m", "mlp_onnx", "--url",
                                     f"http://{served.url}", *through, "--concurrency", "8", "--duration", "6",
                                     "--warmup", "1", "--json", str(report)], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, cwd=ROOT)
            while load.poll() is None:
                peak = max(peak, len(replica_parents()))
                time.sleep(0.5)
            output = load.communicate()[0]
            rows = json.loads(report.read_text())["rows"]
            assert load.returncode == 0 and rows[0]["errors"] == 0 and rows[0]["requests"] > 0, output
            assert ("gRPC bodies" in output) == (protocol == "grpc"), output  # the load went where asked
            rounds += 1
        assert peak == 2, "no second replica under load:\n" + output
        deadline = time.monotonic() + 90
        while len(replica_parents()) > 1:
            assert time.monotonic() < deadline, "did not scale back down when idle"
            time.sleep(1)
        infer(served.grpc_url, grpc=True) if protocol == "grpc" else infer(served.url)


def test_histogram_replay_keeps_buckets_and_sum() -> None:
    """What the metrics bridge records for a histogram's new observations: each inside its own
    bucket (Ray's bucket edges are never hit), adding up to inferd's sum."""
    from inferd.integrations.ray_metrics import replay_values

    bounds = [0.001, 0.01, 0.1]
    for added, total in (([2, 0, 1, 0], 0.051), ([0, 3, 0, 0], 0.0151), ([1, 0, 0, 2], 0.5005), ([0, 0, 0, 1], 7.0)):
        values = replay_values(bounds, added, total)
        assert sum(values) == pytest.approx(total)
        edges = [0.0, *bounds, float("inf")]
        counts = [sum(edges[i] < v < edges[i + 1] for v in values) for i in range(len(added))]
        assert counts == added, (added, values)
