"""Bad input gets a clear 4xx that names the problem, and the server keeps serving."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from tests import models
from tests.conftest import RunningServer, serve


@pytest.fixture(scope="module")
def server(model_repo: Path) -> Iterator[RunningServer]:
    with serve(model_repo, "--max-body-size", "1MiB") as running:
        yield running


def post(server: RunningServer, path: str, body: bytes | dict, **headers: str) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(server.base + path, data=data, headers=headers, timeout=30)


def x_input(shape: list[int], data: list, datatype: str = "FP32", name: str = "x") -> dict:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


GOOD = x_input([1, 8], list(range(8)))

BAD_BODIES = [
    (b"{not json", "malformed JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"inputs": {}}', "needs an 'inputs' list"),
    (b'{"inputs": []}', "missing required input(s) ['x']"),
    (b'{"inputs": [{"name": "x"}]}', "datatype"),
    (x_input([1, 8], list(range(7))), "shape [1, 8] needs 8 elements, data has 7"),
    (x_input([1, 9], list(range(9))), "expected shape [-1, 8] (-1 = any size), got [1, 9]"),
    (x_input([1, 8], list(range(8)), "INT32"), "expected datatype FP32, got INT32"),
    (x_input([1, 8], list(range(8)), "FP99"), "unknown datatype 'FP99'"),
    (x_input([1, 8], ["a"] * 8), "does not hold FP32 values"),
    (x_input([1, 8], list(range(8)), name="z"), "unknown input 'z'"),
    (x_input([17, 8], [0.0] * 136), "batch size 17 is outside 1..16"),
    (x_input([1, -8], list(range(8))), "shape must be a list of non-negative integers"),
    ({**GOOD, "outputs": [{"name": "nope"}]}, "unexpected inference output 'nope' for model"),
    # Triton checks the outputs asked for before the inputs (its L0_output_name test relies on it)
    ({**x_input([1, 8], list(range(8)), name="z"), "outputs": [{"name": "nope"}]},
     "unexpected inference output 'nope' for model"),
    ({**GOOD, "id": 5}, "'id' must be a string"),
    ({**GOOD, "parameters": {"timeout": -1}}, "parameters.timeout"),
    (x_input([0, 2**62], []), "has a dimension over the limit"),
    (x_input([1] * 65, [1.0]), "shape has 65 dimensions, more than the limit of 32"),
]


@pytest.mark.parametrize(("body", "message"), BAD_BODIES)
def test_bad_json_requests_get_400_with_a_clear_message(server: RunningServer, body, message) -> None:
    response = post(server, "/v2/models/mlp_ts/infer", body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_missing_input_names_what_the_model_takes(server: RunningServer) -> None:
    body = {"inputs": [{"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    response = post(server, "/v2/models/two_out/infer", body)
    assert response.status_code == 400
    assert "missing required input(s) ['b']" in response.json()["error"]
    assert "'b' (INT64 [-1, 3])" in response.json()["error"]


def binary_body(x: np.ndarray, declared: int, extra: bytes = b"") -> tuple[bytes, str]:
    header = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": declared}}]}).encode()
    return header + x.tobytes() + extra, str(len(header))


def test_binary_sizes_that_do_not_add_up(server: RunningServer) -> None:
    x = np.ones((1, 8), dtype=np.float32)
    cases = [(binary_body(x, 32, b"\0\0\0\0"), "add up to 32"),
             (binary_body(x, 36), "runs past the end"),
             (binary_body(x, 28, b""), "needs 32 bytes, got 28")]
    for (body, length), message in cases:
        response = post(server, "/v2/models/mlp_ts/infer", body,
                        **{"Inference-Header-Content-Length": length})
        assert response.status_code == 400, response.text
        assert message in response.json()["error"]
    body, _ = binary_body(x, 32)
    response = post(server, "/v2/models/mlp_ts/infer", body,
                    **{"Inference-Header-Content-Length": str(len(body) + 1)})
    assert response.status_code == 400
    assert "Inference-Header-Content-Length" in response.json()["error"]


def nested(datatype: str, depth: int) -> bytes:
    """An input whose data is one value in ``depth`` lists (written by hand: json.dumps recurses)."""
    value = "[" * depth + ('"x"' if datatype == "BYTES" else "1") + "]" * depth
    return ('{"inputs": [{"name": "in", "shape": [1, 1], "datatype": "' + datatype + '", "data": '
            + value + "}]}").encode()


def test_inputs_that_numpy_or_python_cannot_hold_get_400_not_500(server: RunningServer) -> None:
    for datatype in ("BYTES", "FP32"):  # Triton's limit and words
        response = post(server, f"/v2/models/echo_{datatype.lower()}/infer", nested(datatype, 990))
        assert response.status_code == 400, response.text
        assert "JSON nesting depth exceeds maximum allowed limit (100)" in response.json()["error"]
        # below it the nesting is no shape: the values are read in order (deeper than numpy's 64 dims too)
        for depth in (2, 70, 99):
            assert post(server, f"/v2/models/echo_{datatype.lower()}/infer", nested(datatype, depth)).status_code == 200
        assert post(server, f"/v2/models/echo_{datatype.lower()}/infer", nested(datatype, 100)).status_code == 400
    x = np.ones((1, 8), dtype=np.float32)
    body, _ = binary_body(x, 32)
    for length in ("\u00b2", "\u0663", "1\u00b9"):  # isdigit() says yes to each; int() fails or misreads
        response = requests.post(server.base + "/v2/models/mlp_ts/infer", data=body, timeout=30,
                                 headers={"Inference-Header-Content-Length": length.encode().decode("latin-1")})
        assert response.status_code == 400, response.text
        assert "must be a byte count" in response.json()["error"]
    assert post(server, "/v2/models/mlp_ts/versions/%C2%B2/infer", GOOD).status_code == 404


def test_binary_request_works(server: RunningServer) -> None:
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    body, length = binary_body(x, 64)
    response = post(server, "/v2/models/mlp_ts/infer", body,
                    **{"Inference-Header-Content-Length": length})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["outputs"][0]["data"],
                               models.run_mlp(x).ravel(), rtol=1e-5, atol=1e-5)


def test_unknown_model_and_version_get_404(server: RunningServer) -> None:
    assert post(server, "/v2/models/nope/infer", GOOD).status_code == 404
    assert post(server, "/v2/models/nope/infer", b"{broken").status_code == 404
    assert requests.get(f"{server.base}/v2/models/nope", timeout=5).status_code == 404
    response = post(server, "/v2/models/mlp_ts/versions/7/infer", GOOD)
    assert response.status_code == 404
    assert "unknown version '7'" in response.json()["error"]
    assert post(server, "/v2/models/mlp_ts/versions/abc/infer", GOOD).status_code == 404
    assert requests.get(f"{server.base}/v2/nowhere", timeout=5).status_code == 404
    assert requests.get(f"{server.base}/v2/models/mlp_ts/infer", timeout=5).status_code == 405


def test_broken_model_answers_503_with_its_reason(server: RunningServer) -> None:
    response = post(server, "/v2/models/corrupt_onnx/infer", GOOD)
    assert response.status_code == 503
    assert "corrupt_onnx" in response.json()["error"]
    assert requests.get(f"{server.base}/v2/models/bad_config/ready", timeout=5).status_code == 503


def test_a_model_whose_config_failed_shows_no_config_it_is_not_served_with(server: RunningServer) -> None:
    for path in ("/v2/models/bad_config/config", "/v2/models/bad_config"):
        response = requests.get(f"{server.base}{path}", timeout=5)
        assert response.status_code == 503, (path, response.text)
        assert "bad_config" in response.json()["error"] and "no ready version" in response.json()["error"]


def test_oversized_body_gets_413(server: RunningServer) -> None:
    big = b"0" * (1024 * 1024 + 10)
    response = post(server, "/v2/models/mlp_ts/infer", big)
    assert response.status_code == 413
    assert "over the limit of 1048576 bytes" in response.json()["error"]


def test_failing_model_gets_500_with_its_message_and_server_goes_on(server: RunningServer) -> None:
    body = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [666, 1]}]}
    response = post(server, "/v2/models/py_double/infer", body)
    assert response.status_code == 500
    assert "the model refuses 666" in response.json()["error"]
    body["inputs"][0]["data"] = [1, 2]
    assert post(server, "/v2/models/py_double/infer", body).json()["outputs"][0]["data"] == [12, 14]


def test_a_failed_execution_counts_as_a_failure_only(server: RunningServer) -> None:
    """As Triton's statistics: inference_count and execution_count count successful runs only."""
    def stats() -> dict:
        response = requests.get(f"{server.base}/v2/models/py_double/stats", timeout=5)
        return response.json()["model_stats"][0]

    body = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [666, 1]}]}
    before = stats()
    assert post(server, "/v2/models/py_double/infer", body).status_code == 500
    after = stats()
    assert after["inference_stats"]["fail"]["count"] == before["inference_stats"]["fail"]["count"] + 1
    assert (after["inference_count"], after["execution_count"]) == (before["inference_count"],
                                                                     before["execution_count"])
    body["inputs"][0]["data"] = [1, 2]
    assert post(server, "/v2/models/py_double/infer", body).status_code == 200
    done = stats()
    assert done["execution_count"] == before["execution_count"] + 1 and done["inference_count"] > before[
        "inference_count"]


def test_still_correct_after_hundreds_of_malformed_requests(server: RunningServer) -> None:
    rng = np.random.default_rng(9)
    session = requests.Session()
    for index in range(300):
        body, _ = BAD_BODIES[index % len(BAD_BODIES)]
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        if index % 7 == 0:
            data = bytes(rng.integers(0, 256, 64, dtype=np.uint8))
        response = session.post(f"{server.base}/v2/models/mlp_ts/infer", data=data, timeout=10)
        assert 400 <= response.status_code < 500, (index, response.text)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    response = session.post(f"{server.base}/v2/models/mlp_onnx/infer", timeout=10,
                            json=x_input([3, 8], x.ravel().tolist()))
    assert response.status_code == 200
    np.testing.assert_allclose(np.array(response.json()["outputs"][0]["data"]).reshape(3, 5),
                               models.run_mlp(x), rtol=1e-5, atol=1e-5)
    assert server.process.poll() is None


def test_not_ready_answers_503_until_models_load(tmp_path: Path) -> None:
    models.write(tmp_path / "slow/1/model.py", """
        import time
        import numpy as np

        class Model:
            def load(self):
                time.sleep(3)

            def infer(self, inputs):
                return {"y": inputs["x"]}
        """)
    models.write(tmp_path / "slow/config.toml", 'backend = "python"\n[[input]]\nname = "x"\n'
                 'datatype = "FP32"\nshape = [1]\n[[output]]\nname = "y"\ndatatype = "FP32"\n'
                 'shape = [1]\n')
    with serve(tmp_path, wait_ready=False) as running:
        assert requests.get(f"{running.base}/v2/health/live", timeout=5).status_code == 200
        response = requests.get(f"{running.base}/v2/health/ready", timeout=5)
        assert response.status_code == 503
        assert requests.get(f"{running.base}/v2/models/slow/ready", timeout=5).status_code == 503
        deadline = time.monotonic() + 60
        while requests.get(f"{running.base}/v2/health/ready", timeout=5).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        while not any(line.startswith("inferd ready") for line in running.lines):  # the pipe may lag
            assert time.monotonic() < deadline
            time.sleep(0.05)
