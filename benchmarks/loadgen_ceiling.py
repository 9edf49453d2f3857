"""What `inferd bench` itself sustains: against a trivial server that answers every request at once
(metadata for GET, a fixed small body for POST), the load generator on CPU 1, the server on CPU 0.
wrk against the same server shows the server's own limit, so the generator is not the bottleneck
as long as its rate stays above what the servers under test reach.

    python benchmarks/loadgen_ceiling.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import CLIENT_CPU, SERVER_CPU, measure, stop, wait_ready

TRIVIAL_SERVER = r'''
import asyncio, sys
import uvloop

META = (b'{"name":"t","versions":["1"],"platform":"x",'
        b'"inputs":[{"name":"x","datatype":"FP32","shape":[1,4]}],"outputs":[]}')
ANSWER = b'{"model_name":"t","model_version":"1","outputs":[]}'

class Trivial(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                length = int(head[at + 15:].split(b"\r\n")[0])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            body = META if head.startswith(b"get") else ANSWER
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                                 % (len(body), body))

async def main():
    server = await asyncio.get_running_loop().create_server(Trivial, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()

uvloop.run(main())
'''


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="inferd-loadgen-"))
    script = root / "trivial.py"
    script.write_text(TRIVIAL_SERVER)
    port = 8480
    server = subprocess.Popen(["taskset", "-c", SERVER_CPU, sys.executable, str(script), str(port)],
                              start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", server)
        body = root / "body.json"
        body.write_text(json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                                "data": [1, 2, 3, 4]}]}))
        for concurrency in (1, 64):
            wrk = measure(f"http://127.0.0.1:{port}/v2/models/t/infer", body, concurrency, args.seconds, server.pid)
            out = root / "bench.json"
            subprocess.run(["taskset", "-c", CLIENT_CPU, sys.executable, "-m", "inferd", "bench", "-m", "t", "--url",
                            f"http://127.0.0.1:{port}", "--concurrency", str(concurrency), "--duration",
                            str(args.seconds), "--warmup", "2", "--json", str(out)], check=True, capture_output=True)
            ours = json.loads(out.read_text())["rows"][0]
            print(f"c={concurrency}: wrk {wrk['rps']:,.0f} req/s (p50 {wrk['p50_us'] / 1000:.3f} ms), "
                  f"inferd bench {ours['rps']:,.0f} req/s (p50 {ours['p50_ms']:.3f} ms)", flush=True)
    finally:
        stop(server)


if __name__ == "__main__":
    main()
