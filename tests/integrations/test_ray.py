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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="the Ray Serve tests need the ray extra (ray[serve])")

import onnxruntime
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
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
            "RAY_TMPDIR": temp}


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """Head and second node as `ray start --block` children (stopping them stops their daemons)."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    port = free_port()
    env = ray_env(temp)
    common = ["--block", "--num-cpus", "1", "--disable-usage-stats"]
    head = subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false",
                             "--temp-dir", temp, "--resources", '{"head_node": 1}', *common],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    nodes = [head]
    try:
        wait_nodes(f"127.0.0.1:{port}", 1, env)
        second = subprocess.Popen([RAY, "start", "--address", f"127.0.0.1:{port}", "--resources",
                                   '{"second_node": 1}', *common], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        nodes.append(second)
        wait_nodes(f"127.0.0.1:{port}", 2, env)
        yield f"127.0.0.1:{port}"
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
def deploy(address: str, *args: str) -> Iterator[Deployed]:
    port, grpc_port = free_port(), free_port()
    env = ray_env(tempfile.gettempdir())
    process = subprocess.Popen([sys.executable, "-m", "inferd", "serve", str(REPO), "--ray", address,
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


def test_replicas_on_both_nodes_answer_v2(cluster: str) -> None:
    with (deploy(cluster, "--replicas", "2")) as served:
        parents = replica_parents()
        assert len(parents) == 2 and len(set(parents)) == 2, "the two replicas share a node"
        client = httpclient.InferenceServerClient(served.url)
        assert client.is_server_ready() and client.is_model_ready("mlp_onnx")
        assert {m["name"] for m in client.get_model_repository_index()} >= {"mlp_onnx", "text_stats"}
        for _ in range(20):  # Serve spreads these over both replicas
            infer(served.url)
        grpc = grpcclient.InferenceServerClient(served.grpc_url)  # through Serve's gRPC proxy
        assert grpc.is_server_ready() and grpc.is_model_ready("mlp_onnx")
        assert grpc.get_model_metadata("mlp_onnx").inputs[0].name == "x"
        for _ in range(10):
            infer(served.grpc_url, grpc=True)
        with pytest.raises(InferenceServerException) as unknown:
            grpc.get_model_metadata("no_such_model")
        assert unknown.value.status() == "StatusCode.NOT_FOUND" and "no_such_model" in unknown.value.message()


def test_autoscales_up_under_load_and_down_when_idle(cluster: str, tmp_path: Path) -> None:
    args = ("--autoscale", "1:2", "--target-ongoing-requests", "1", "--autoscale-delays", "1:4")
    with (deploy(cluster, *args)) as served:
        assert len(replica_parents()) == 1
        report = tmp_path / "bench.json"
        load = subprocess.Popen([sys.executable, "-m", "inferd", "bench", "-m", "mlp_onnx", "--url",
                                 f"http://{served.url}", "--concurrency", "8", "--duration", "25", "--warmup", "1",
                                 "--json", str(report)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=ROOT)
        peak = 1
        while load.poll() is None:
            peak = max(peak, len(replica_parents()))
            time.sleep(0.5)
        output = load.communicate()[0]
        rows = json.loads(report.read_text())["rows"]
        assert load.returncode == 0 and rows[0]["errors"] == 0 and rows[0]["requests"] > 0, output
        assert peak == 2, "no second replica under load"
        deadline = time.monotonic() + 90
        while len(replica_parents()) > 1:
            assert time.monotonic() < deadline, "did not scale back down when idle"
            time.sleep(1)
        infer(served.url)
