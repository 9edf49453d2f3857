"""Soak: minutes of mixed traffic over every protocol while models reload; zero errors allowed.

Serves a copy of examples/models in poll mode and keeps CLIENTS threads sending, round-robin:
v2 JSON (ONNX, batched), v2 binary (TorchScript), TF Serving REST (torch.export), v2 JSON with BYTES
(the Python model, in its instance process) and v2 gRPC (tritonclient). Every answer is compared with
the first answer to the same request. Every RELOAD_S seconds the repository changes under it: a new
ONNX version appears and the old one goes (latest = 1), or the Python model's file is touched
(reloaded in place). Resident memory of the server and its instance processes is sampled throughout.

    python benchmarks/soak.py --minutes 10          # writes benchmarks/results/soak-<time>.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from common import free_port

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples" / "models"
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, kind: str, error: str | None) -> None:
        with self.lock:
            self.requests[kind] = self.requests.get(kind, 0) + 1
            if error is not None and len(self.errors) < 1000:
                self.errors.append(f"{kind}: {error}")


def resident_mib(root_pid: int) -> tuple[float, int]:
    """RSS of a process and all its descendants (the server and its instance processes), and how
    many processes that is."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
            rss[int(entry)] = int(fields[21]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    family, frontier = {root_pid}, [root_pid]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in family]
        family.update(children)
        frontier.extend(children)
    return round(sum(rss.get(pid, 0) for pid in family) / 2**20, 1), len(family)


class Traffic:
    """The five request kinds, each checked against its first answer."""

    def __init__(self, base: str, grpc_url: str) -> None:
        self.base, self.grpc_url = base, grpc_url
        self.expected: dict[str, np.ndarray] = {}
        rng = np.random.default_rng(0)
        meta = {name: requests.get(f"{base}/v2/models/{name}", timeout=10).json()
                for name in ("mlp_onnx", "mlp_torchscript", "mlp_export")}
        self.inputs = {name: (m["inputs"][0]["name"], m["outputs"][0]["name"],
                              rng.standard_normal((1, m["inputs"][0]["shape"][-1])).astype(np.float32))
                       for name, m in meta.items()}

    def v2_json(self, session: requests.Session) -> np.ndarray:
        name, _, x = self.inputs["mlp_onnx"]
        body = {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        answer = session.post(f"{self.base}/v2/models/mlp_onnx/infer", json=body, timeout=30)
        answer.raise_for_status()
        return np.asarray(answer.json()["outputs"][0]["data"], dtype=np.float32)

    def v2_binary(self, session: requests.Session) -> np.ndarray:
        name, out, x = self.inputs["mlp_torchscript"]
        header = json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                                         "parameters": {"binary_data_size": x.nbytes}}],
                             "outputs": [{"name": out, "parameters": {"binary_data": True}}]}).encode()
        answer = session.post(f"{self.base}/v2/models/mlp_torchscript/infer", data=header + x.tobytes(),
                              headers={"Inference-Header-Content-Length": str(len(header)),
                                       "Content-Type": "application/octet-stream"}, timeout=30)
        answer.raise_for_status()
        length = int(answer.headers["Inference-Header-Content-Length"])
        return np.frombuffer(answer.content[length:], dtype=np.float32).copy()

    def tf_rest(self, session: requests.Session) -> np.ndarray:
        _, _, x = self.inputs["mlp_export"]
        answer = session.post(f"{self.base}/v1/models/mlp_export:predict", json={"instances": x.tolist()},
                              timeout=30)
        answer.raise_for_status()
        return np.asarray(answer.json()["predictions"], dtype=np.float32)

    def python_bytes(self, session: requests.Session) -> np.ndarray:
        body = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["soak", "test"]}]}
        answer = session.post(f"{self.base}/v2/models/text_stats/infer", json=body, timeout=30)
        answer.raise_for_status()
        outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
        return np.asarray([len(s) for s in outputs["upper"]] + outputs["length"])

    def grpc(self, client) -> np.ndarray:  # type: ignore[no-untyped-def]
        import tritonclient.grpc as grpcclient

        name, out, x = self.inputs["mlp_onnx"]
        tensor = grpcclient.InferInput(name, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer("mlp_onnx", [tensor], client_timeout=30).as_numpy(out).ravel()

    def check(self, kind: str, value: np.ndarray) -> str | None:
        expected = self.expected.setdefault(kind, value)
        if expected.shape != value.shape or not np.allclose(expected, value, rtol=1e-4, atol=1e-5):
            return f"answer changed: {value[:4]} vs {expected[:4]}"
        return None


def client_loop(traffic: Traffic, tally: Tally, stop: threading.Event, offset: int) -> None:
    import tritonclient.grpc as grpcclient

    kinds = ["v2_json", "v2_binary", "tf_rest", "python_bytes", "grpc"]
    session = requests.Session()
    client = grpcclient.InferenceServerClient(traffic.grpc_url)
    turn = offset
    while not stop.is_set():
        kind = kinds[turn % len(kinds)]
        turn += 1
        try:
            value = traffic.grpc(client) if kind == "grpc" else getattr(traffic, kind)(session)
            tally.add(kind, traffic.check(kind, value))
        except Exception as exc:  # every failure is counted and kept
            tally.add(kind, f"{type(exc).__name__}: {str(exc)[:300]}")


def change_repository(repo: Path, step: int) -> str:
    """One change the poller will pick up: a new ONNX version (the old one unloads), or a touched model.py."""
    if step % 2 == 0:
        versions = sorted(int(p.name) for p in (repo / "mlp_onnx").iterdir() if p.name.isdigit())
        new = versions[-1] + 1
        shutil.copytree(repo / "mlp_onnx" / str(versions[-1]), repo / "mlp_onnx" / str(new))
        for old in versions[:-1]:
            shutil.rmtree(repo / "mlp_onnx" / str(old))
        return f"mlp_onnx version {new} added"
    model = repo / "text_stats" / "1" / "model.py"
    model.write_text(model.read_text() + f"\n# touched {step}\n")
    return "text_stats model.py changed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--reload-s", type=float, default=20.0, help="seconds between repository changes")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="inferd-soak-"))
    repo = work / "models"
    shutil.copytree(EXAMPLES, repo)
    http_port, grpc_port = free_port(), free_port()
    log = (work / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "inferd", "serve", str(repo), "--http-port", str(http_port),
                               "--grpc-port", str(grpc_port), "--model-control", "poll", "--poll-interval", "1"],
                              stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"inferd did not start; see {work / 'server.log'}")
            time.sleep(0.2)
        traffic = Traffic(base, f"127.0.0.1:{grpc_port}")
        tally, stop = Tally(), threading.Event()
        threads = [threading.Thread(target=client_loop, args=(traffic, tally, stop, i), daemon=True)
                   for i in range(args.clients)]
        for thread in threads:
            thread.start()
        time.sleep(5)  # warm: the first answers are in, every model has run
        start_rss, start_processes = resident_mib(server.pid)
        samples, changes = [(0.0, start_rss, start_processes)], []
        began = time.monotonic()
        end = began + args.minutes * 60
        next_change, next_sample, step = began + args.reload_s, began + 30, 0
        while time.monotonic() < end:
            time.sleep(0.5)
            now = time.monotonic()
            if now >= next_change:
                changes.append((round(now - began, 1), change_repository(repo, step)))
                step, next_change = step + 1, now + args.reload_s
            if now >= next_sample:
                samples.append((round(now - began, 1), *resident_mib(server.pid)))
                next_sample = now + 30
        end_rss, end_processes = resident_mib(server.pid)
        stop.set()
        for thread in threads:
            thread.join(60)
        elapsed = time.monotonic() - began
        versions = requests.get(f"{base}/v2/models/mlp_onnx", timeout=10).json()["versions"]
    finally:
        server.terminate()
        server.wait(60)
    total = sum(tally.requests.values())
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "minutes": round(elapsed / 60, 2), "clients": args.clients, "requests": total,
        "requests_per_s": round(total / elapsed, 1), "by_kind": tally.requests, "errors": len(tally.errors),
        "error_samples": tally.errors[:20], "repository_changes": len(changes), "changes": changes,
        "final_onnx_versions": versions, "rss_mib_start": start_rss, "rss_mib_end": end_rss,
        "processes_start": start_processes, "processes_end": end_processes,
        "samples_s_rss_mib_processes": samples, "server_exit_code": server.returncode,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"soak-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(result, indent=1))
    summary = {k: v for k, v in result.items() if k not in ("changes", "samples_s_rss_mib_processes")}
    print(json.dumps(summary, indent=1))
    print(f"written to {path}; server log {work / 'server.log'}")


if __name__ == "__main__":
    main()
