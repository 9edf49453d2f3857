"""Triton's reshape: a config.pbtxt whose dims differ from the model's own shapes (Triton's stock
densenet_onnx: dims [3, 224, 224], reshape [1, 3, 224, 224]). Clients send and get the dims; the model
runs on its own shapes; answers match onnxruntime run in-process on the reshaped arrays. Also
default_model_filename: the artifact under another name than model.onnx."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.http as httpclient

from tests import models
from tests.conftest import serve


class Pool(torch.nn.Module):
    """[n, 3, 4, 4] -> [n, 10, 1, 1], as densenet's classifier head answers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


UNBATCHED = """
name: "unbatched"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 4, 4 ] reshape { shape: [ 1, 3, 4, 4 ] } } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 10 ] reshape { shape: [ 1, 10, 1, 1 ] } } ]
"""

BATCHED = """
name: "batched"
platform: "onnxruntime_onnx"
default_model_filename: "densenet.onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 48 ] reshape { shape: [ 3, 4, 4 ] } } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 10 ] reshape { shape: [ 10, 1, 1 ] } } ]
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root: Path = tmp_path_factory.mktemp("reshape_repo")
    torch.manual_seed(0)
    module = Pool().eval()
    for name, config in (("unbatched", UNBATCHED), ("batched", BATCHED)):
        (root / name / "1").mkdir(parents=True)
        axes = None if name == "unbatched" else {"x": {0: "n"}, "y": {0: "n"}}
        file = "model.onnx" if name == "unbatched" else "densenet.onnx"
        torch.onnx.export(module, (torch.randn(1, 3, 4, 4),), str(root / name / "1" / file), input_names=["x"],
                          output_names=["y"], dynamic_axes=axes, dynamo=False)
        models.write(root / name / "config.pbtxt", config)
    bad = UNBATCHED.replace('"unbatched"', '"bad"').replace("[ 1, 10, 1, 1 ]", "[ 1, 9 ]")  # 9 elements for 10
    models.write(root / "bad/config.pbtxt", bad)
    (root / "bad/1").mkdir(parents=True)
    (root / "bad/1/model.onnx").write_bytes((root / "unbatched/1/model.onnx").read_bytes())
    return root


def _reference(repo: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(repo / "unbatched/1/model.onnx"))
    return np.concatenate([session.run(None, {"x": row.reshape(1, 3, 4, 4)})[0] for row in x.reshape(-1, 48)])


def test_clients_use_the_dims_and_the_model_its_own_shapes(repo: Path) -> None:
    with serve(repo) as server:
        client = httpclient.InferenceServerClient(server.url)
        x = np.random.default_rng(1).standard_normal((3, 4, 4)).astype(np.float32)
        given = httpclient.InferInput("x", [3, 4, 4], "FP32")
        given.set_data_from_numpy(x)
        y = client.infer("unbatched", [given]).as_numpy("y")
        np.testing.assert_allclose(y, _reference(repo, x).reshape(10), rtol=1e-5, atol=1e-6)
        rows = np.random.default_rng(2).standard_normal((5, 48)).astype(np.float32)
        given = httpclient.InferInput("x", [5, 48], "FP32")
        given.set_data_from_numpy(rows)
        y = client.infer("batched", [given]).as_numpy("y")
        np.testing.assert_allclose(y, _reference(repo, rows).reshape(5, 10), rtol=1e-5, atol=1e-6)
        metadata = client.get_model_metadata("batched")
        assert [t["shape"] for t in metadata["inputs"]] == [[-1, 48]]
        assert [t["shape"] for t in metadata["outputs"]] == [[-1, 10]]
        assert client.get_model_config("batched")["default_model_filename"] == "densenet.onnx"
        config = client.get_model_config("unbatched")
        assert config["input"][0]["dims"] == [3, 4, 4] and config["input"][0]["reshape"]["shape"] == [1, 3, 4, 4]
        wrong = httpclient.InferInput("x", [1, 3, 4, 4], "FP32")  # the model's shape is not the clients'
        wrong.set_data_from_numpy(x.reshape(1, 3, 4, 4))
        with pytest.raises(httpclient.InferenceServerException, match="shape"):
            client.infer("unbatched", [wrong])
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert index["bad"]["state"] == "UNAVAILABLE" and "key 'reshape' [1, 9]" in index["bad"]["reason"]
