"""`inferd serve /mnt/models --model-name NAME` for the layouts KServe's storage initializer leaves."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import requests

from tests.conftest import ROOT, serve

MLP = ROOT / "examples/models/mlp_onnx"
X = np.arange(16, dtype=np.float32).reshape(1, 16) / 16


def expected() -> list[float]:
    session = onnxruntime.InferenceSession(str(MLP / "1/model.onnx"), providers=["CPUExecutionProvider"])
    return [float(v) for v in session.run(None, {"x": X})[0].ravel()]


def layout(root: Path, kind: str) -> Path:
    mnt = root / "mnt/models"
    if kind == "file":  # storageUri names model.onnx itself
        mnt.mkdir(parents=True)
        shutil.copy(MLP / "1/model.onnx", mnt / "model.onnx")
        shutil.copy(MLP / "config.toml", mnt / "config.toml")
    elif kind == "versions":  # storageUri names the model's folder
        shutil.copytree(MLP, mnt)
    else:  # storageUri names a whole repository
        shutil.copytree(MLP, mnt / "mlp_onnx")
    return mnt


@pytest.mark.parametrize(("kind", "served"), [("file", "resnet"), ("versions", "resnet"),
                                             ("repository", "mlp_onnx")])
def test_kserve_storage_layouts_serve(tmp_path: Path, kind: str, served: str) -> None:
    with serve(layout(tmp_path, kind), "--model-name", "resnet") as server:
        rows = requests.post(f"{server.base}/v2/repository/index", timeout=10).json()
        assert [(r["name"], r["version"], r["state"]) for r in rows] == [(served, "1", "READY")]
        assert requests.get(f"{server.base}/v2/models/{served}/ready", timeout=10).status_code == 200
        body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": X.ravel().tolist()}]}
        response = requests.post(f"{server.base}/v2/models/{served}/versions/1/infer", json=body, timeout=10)
        assert response.status_code == 200, response.text
        assert np.allclose(response.json()["outputs"][0]["data"], expected(), atol=1e-5)
        if kind != "repository":
            assert requests.get(f"{server.base}/v2/models/1", timeout=10).status_code == 404


def test_bad_model_name_is_refused_before_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "inferd", "serve", str(layout(tmp_path, "file")),
                           "--model-name", "../etc"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2 and "--model-name must be a plain name" in done.stderr
