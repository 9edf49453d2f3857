"""inferd's own HTTP/1.1 server beside uvicorn (httptools, uvloop) and granian serving inferd's own
ASGI app (`inferd.server.build_http_app`): same core, same models, same wrk client (issue 11).

Models: the peers' M1 `mlp` (512→1024→1024→10) and M2 `tiny` (16→4), TorchScript, batched as in
RESULTS.md §1; one v2 JSON sample per request. Each server runs one process on SERVER_CPU (0), wrk
on CLIENT_CPU (1); c=1 (p50) and c=64 (throughput), `--rounds` rounds alternating the servers.

uvicorn and granian are not inferd's dependencies: run it with a Python that has them, e.g.
    python3 -m venv --system-site-packages /work/venv-11 && /work/venv-11/bin/pip install uvicorn granian
    PYTHONPATH=src /work/venv-11/bin/python benchmarks/http_servers.py --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import SERVER_CPU, bodies, free_port, make_mlp_models, measure, stop, wait_ready, write_model

HERE = Path(__file__).resolve().parent

# the ASGI app uvicorn and granian serve: inferd's routes over a core that loads the repository at
# lifespan start-up, exactly as `inferd serve` builds them
ASGI_MODULE = '''
import os
from pathlib import Path

from inferd.config import ServerSettings
from inferd.server import build_core, build_http_app

settings = ServerSettings(model_repository=Path(os.environ["INFERD_REPOSITORY"]))
core = build_core(settings)
routes = build_http_app(core, settings)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await core.control.load_at_start()
                core.data.set_ready(True)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await core.control.close(5.0)
                await send({"type": "lifespan.shutdown.complete"})
                return
    await routes(scope, receive, send)
'''


def start(kind: str, repo: Path, port: int, work: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", INFERD_REPOSITORY=str(repo),
               PYTHONPATH=os.pathsep.join(filter(None, [str(work), os.environ.get("PYTHONPATH", "")])))
    python = [sys.executable]
    commands = {
        "inferd": [*python, "-m", "inferd", "serve", str(repo), "--http-port", str(port), "--grpc-port", "0",
                   "--log-level", "warning"],
        "uvicorn": [*python, "-m", "uvicorn", "inferd_asgi:app", "--port", str(port), "--http", "httptools",
                    "--loop", "uvloop", "--lifespan", "on", "--log-level", "warning", "--no-access-log"],
        "granian": [*python, "-m", "granian", "--interface", "asgi", "--port", str(port), "--workers", "1",
                    "--runtime-threads", "1", "--loop", "uvloop", "--log-level", "warning", "--no-ws",
                    "inferd_asgi:app"],
    }
    process = subprocess.Popen(["taskset", "-c", SERVER_CPU, *commands[kind]], stdout=log.open("ab"),
                               stderr=subprocess.STDOUT, env=env, start_new_session=True)
    wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", process)
    return process


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--servers", default="inferd,uvicorn,granian")
    stamp = time.strftime("%Y%m%dT%H%MZ", time.gmtime())
    parser.add_argument("--out", type=Path, default=HERE / "results" / f"http_servers-{stamp}.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="http-servers-"))
    (work / "inferd_asgi.py").write_text(ASGI_MODULE)
    make_mlp_models(work / "artifacts")
    repo = work / "repo"
    write_model(repo, "mlp", work / "artifacts/mlp.pt", 512, 10, batching=True)
    write_model(repo, "tiny", work / "artifacts/tiny.pt", 16, 4, batching=True)
    payloads = {name: bodies(work / "bodies", name, dim)[0] for name, dim in (("mlp", 512), ("tiny", 16))}
    rows = []
    for round_ in range(args.rounds):
        for kind in args.servers.split(","):
            port = free_port()
            process = start(kind, repo, port, work, work / f"{kind}.log")
            try:
                for model, body in payloads.items():
                    url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
                    for concurrency in (1, 64):
                        result = measure(url, body, concurrency, args.seconds, process.pid)
                        row = {"round": round_, "server": kind, "model": model, "concurrency": concurrency,
                               "rps": round(result["rps"], 1), "p50_ms": result.get("p50_us", 0) / 1000,
                               "p99_ms": result.get("p99_us", 0) / 1000, "errors": result["errors"],
                               "cpu_ms_per_req": round(result["cpu_ms_per_req"], 3)}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
            finally:
                stop(process)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
