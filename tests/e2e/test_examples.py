"""The shipped example repository serves as the README says."""

from __future__ import annotations

import requests

from tests.conftest import ROOT, serve

X = list(range(16))
NOISE = ("absl::InitializeLog", "cudart_stub", "cpu_feature_guard", "WARNING:tensorflow", "not writable",
         "oneDNN", "UserWarning")


def test_example_repository_answers_each_readme_call() -> None:
    with serve(ROOT / "examples/models") as server:
        rows = requests.post(f"{server.base}/v2/repository/index", timeout=10).json()
        assert {r["name"] for r in rows if r["state"] == "READY"} == {
            "mlp_onnx", "mlp_torchscript", "mlp_export", "text_stats", "mlp_tf", "half_plus_two"}
        answers = []
        for model, name in (("mlp_onnx", "x"), ("mlp_torchscript", "x"), ("mlp_export", "x")):
            body = {"inputs": [{"name": name, "shape": [1, 16], "datatype": "FP32", "data": X}]}
            response = requests.post(f"{server.base}/v2/models/{model}/infer", json=body, timeout=10)
            assert response.status_code == 200, response.text
            answers.append(response.json()["outputs"][0]["data"])
        for other in answers[1:]:  # the same weights in three formats
            assert all(abs(a - b) < 1e-4 for a, b in zip(answers[0], other, strict=True))
        body = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["hi", "inferd"]}]}
        response = requests.post(f"{server.base}/v2/models/text_stats/infer", json=body, timeout=10)
        outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
        assert outputs == {"upper": ["HI!", "INFERD!"], "length": [2, 6]}
    # the frameworks' start-up chatter (TensorFlow's absl lines, torch's read-only buffer warning) is quiet
    noise = [line for line in server.lines if any(word in line for word in NOISE)]
    assert noise == []
