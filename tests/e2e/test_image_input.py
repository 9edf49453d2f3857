"""A plain torch model with an [image] input, through the real server: JPEG bytes as v2 BYTES over
binary HTTP and gRPC (tritonclient) answer what the model computes on the decoded images; a PNG is a
400 that says what was expected and what came."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from tests.conftest import serve
from tests.runtimes.test_torch_image import expected, jpeg, rows, save_tiny

ROOT = Path(__file__).resolve().parents[2]


def test_jpeg_bytes_over_binary_http_and_grpc_answer_like_the_model(tmp_path: Path) -> None:
    save_tiny(tmp_path / "tiny", {"batch_sizes": [2, 4, 8], "warmup": "true"})
    blobs = [(ROOT / "examples/kitten.jpg").read_bytes(), jpeg(120, 90, 7), jpeg(64, 64, 8)]
    with serve(tmp_path, grpc=True) as server:
        http = httpclient.InferenceServerClient(server.url)
        tensor = httpclient.InferInput("image", [3, 1], "BYTES")
        tensor.set_data_from_numpy(rows(blobs), binary_data=True)
        answer = http.infer("tiny", [tensor], outputs=[httpclient.InferRequestedOutput("scores", binary_data=True)])
        np.testing.assert_allclose(answer.as_numpy("scores"), expected(blobs), rtol=1e-5, atol=1e-6)

        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        tensor_g = grpcclient.InferInput("image", [1, 1], "BYTES")
        tensor_g.set_data_from_numpy(rows(blobs[:1]))
        answer_g = grpc.infer("tiny", [tensor_g])
        np.testing.assert_allclose(answer_g.as_numpy("scores"), expected(blobs[:1]), rtol=1e-5, atol=1e-6)

        png = io.BytesIO()
        Image.new("RGB", (8, 8)).save(png, format="PNG")
        tensor.set_data_from_numpy(rows([blobs[0], png.getvalue(), blobs[1]]), binary_data=True)
        try:
            http.infer("tiny", [tensor])
            raise AssertionError("a PNG was accepted")
        except InferenceServerException as exc:
            assert exc.status() == "400", exc
            assert "input 'image': row 1 is not a JPEG image" in exc.message(), exc.message()
        http.close()
        grpc.close()


def test_inferd_bench_loads_jpeg_bytes_and_asks_for_the_top_classes(tmp_path: Path) -> None:
    """`inferd bench --input-file image=kitten.jpg --classification 2` over binary HTTP and gRPC:
    every request answered (a wrong body would be 400s), and the top classes are what the model ranks."""
    save_tiny(tmp_path / "tiny")
    kitten = (ROOT / "examples/kitten.jpg").read_bytes()
    with serve(tmp_path, grpc=True) as server:
        http = httpclient.InferenceServerClient(server.url)
        tensor = httpclient.InferInput("image", [1, 1], "BYTES")
        tensor.set_data_from_numpy(rows([kitten]), binary_data=True)
        top = http.infer("tiny", [tensor], outputs=[httpclient.InferRequestedOutput("scores", class_count=2)])
        ranked = np.argsort(-expected([kitten])[0])[:2]
        assert [int(entry.split(b":")[1]) for entry in top.as_numpy("scores")[0]] == ranked.tolist()
        http.close()
        for extra in ([], ["--grpc", server.grpc_url]):
            out = tmp_path / f"bench{len(extra)}.json"
            done = subprocess.run([sys.executable, "-m", "inferd", "bench", "-m", "tiny", "--url", server.base,
                                   "--binary", "--concurrency", "4", "--duration", "1", "--warmup", "0.2",
                                   "--input-file", f"image={ROOT / 'examples/kitten.jpg'}", "--classification", "2",
                                   "--json", str(out), *extra], capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
            row = json.loads(out.read_text())["rows"][0]
            assert row["errors"] == 0 and row["rps"] > 0, row
        refused = subprocess.run([sys.executable, "-m", "inferd", "bench", "-m", "tiny", "--url", server.base,
                                  "--input-file", "pixels=x.jpg"], capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0
        assert "model 'tiny' has no BYTES input 'pixels' (its BYTES inputs: image)" in refused.stderr
