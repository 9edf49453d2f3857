"""instance_group kind = "gpu": placed on the CUDA device where there is one, refused with a clear
reason where there is none (never a silent CPU fallback). CI has no GPU: the first test runs there,
the second skips."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from tests import models
from tests.conftest import serve

GPU_CONFIG = models.MLP_CONFIG + '\n[instance_group]\nkind = "gpu"\ngpus = [0]\n'


def repo(root: Path) -> Path:
    (root / "mlp_gpu/1").mkdir(parents=True)
    torch.jit.script(models.mlp()).save(str(root / "mlp_gpu/1/model.pt"))
    (root / "mlp_gpu/config.toml").write_text(GPU_CONFIG)
    (root / "onnx_gpu/1").mkdir(parents=True)
    torch.onnx.export(models.mlp(), (torch.randn(2, 8),), str(root / "onnx_gpu/1/model.onnx"), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False)
    (root / "onnx_gpu/config.toml").write_text('max_batch_size = 8\n[instance_group]\nkind = "gpu"\ngpus = [0]\n')
    return root


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: see the next test")
def test_gpu_model_without_a_gpu_is_unavailable_with_its_reason(tmp_path: Path) -> None:
    with serve(repo(tmp_path)) as server:
        rows = {row["name"]: row for row in requests.post(f"{server.base}/v2/repository/index", timeout=10).json()}
        assert rows["mlp_gpu"]["state"] == "UNAVAILABLE"
        assert "cuda:0" in rows["mlp_gpu"]["reason"] and "no CUDA device" in rows["mlp_gpu"]["reason"]
        # onnxruntime without CUDA never runs a GPU model on the CPU in silence
        assert rows["onnx_gpu"]["state"] == "UNAVAILABLE"
        assert "CUDAExecutionProvider" in rows["onnx_gpu"]["reason"], rows["onnx_gpu"]["reason"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_model_runs_on_the_gpu_and_matches_the_cpu(tmp_path: Path) -> None:
    x = np.random.default_rng(11).standard_normal((16, 8)).astype(np.float32)
    body = {"inputs": [{"name": "x", "shape": [16, 8], "datatype": "FP32", "data": x.ravel().tolist()}]}
    with serve(repo(tmp_path)) as server:
        assert re.search(r"mlp_gpu version 1 ready in [0-9.]+ s \(pytorch_libtorch on cuda:0", server.log())
        response = requests.post(f"{server.base}/v2/models/mlp_gpu/infer", json=body, timeout=30)
        assert response.status_code == 200, response.text
        y = np.array(response.json()["outputs"][0]["data"]).reshape(16, 5)
        np.testing.assert_allclose(y, models.run_mlp(x), rtol=1e-3, atol=1e-4)


GRAPHS_CONFIG = """
max_batch_size = 8
[dynamic_batching]
[instance_group]
kind = "gpu"
count = 2
gpus = [0, 0]
[[input]]
name = "x"
datatype = "FP32"
shape = [3, 16, 16]
[[output]]
name = "y"
datatype = "FP32"
shape = [5]
[optimization]
precision = "{precision}"
channels_last = true
compile = "cuda_graphs"
batch_sizes = [1, 4, 8]
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_graphs_on_two_runtimes_answer_like_the_model(tmp_path: Path, precision: str) -> None:
    """Captured graphs per batch size on every instance (four: count 2 on each listed GPU), padded
    batches, pinned staging: the answers match the model in-process within the precision's tolerance."""
    from tests.runtimes.test_torch_optimization import BF16_ATOL, cnn, expected, images, save

    save(tmp_path / "cnn/1", cnn())
    (tmp_path / "cnn/1/model.pt2").unlink()
    (tmp_path / "cnn/config.toml").write_text(GRAPHS_CONFIG.format(precision=precision))
    with serve(tmp_path) as server:
        assert re.search(rf"cnn version 1 ready in [0-9.]+ s \(pytorch_libtorch on cuda:0, {precision}, "
                         r"channels_last, cuda_graphs \+ pytorch_libtorch on cuda:0", server.log())
        for rows in (1, 3, 8, 5):
            x = images(rows, seed=rows)
            body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
            response = requests.post(f"{server.base}/v2/models/cnn/infer", json=body, timeout=30)
            assert response.status_code == 200, response.text
            y = np.array(response.json()["outputs"][0]["data"], dtype=np.float32).reshape(rows, 5)
            np.testing.assert_allclose(y, expected(x), atol=BF16_ATOL)


def _has_gpu_decoder() -> bool:
    if not torch.cuda.is_available():
        return False
    from inferd.runtimes.torch_image import gpu_decoder_available

    return gpu_decoder_available()


# nvjpeg's frames are not libjpeg-turbo's (Pillow's): chroma upsampling and IDCT rounding differ.
# Measured on an H200 (benchmarks/gpu_decode.py, RESULTS.md): over these tests' JPEGs (random
# 8-pixel colour blocks, the worst case for 4:2:0 chroma), frames differ by 6.0 levels on average
# (max 53); the 224 crops the model takes, by 3.0 (max 41); torch's resize of Pillow's frames on
# the GPU against Pillow's resize, by 0.2 (max 0.97). So the resize is held to one level and the
# decoder to its measured mean with a margin, not to one level.
GPU_DECODER_MEAN_LEVELS = 6.0


def _v2_binary_bytes(blobs: list[bytes]) -> tuple[bytes, int]:
    """A KServe v2 binary request: the JPEGs as one BYTES [N, 1] input (4-byte length prefixes)."""
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(blobs), 1],
                                     "parameters": {"binary_data_size": sum(4 + len(b) for b in blobs)}}],
                         "outputs": [{"name": "scores", "parameters": {"binary_data": False}}]}).encode()
    return header + b"".join(len(b).to_bytes(4, "little") + b for b in blobs), len(header)


@pytest.mark.skipif(not _has_gpu_decoder(), reason="needs a CUDA GPU and torchvision built for its torch")
def test_jpeg_inputs_decode_on_the_gpu_and_answer_like_the_model(tmp_path: Path) -> None:
    """An [image] input on a GPU model: nvjpeg decodes the batch, torch resizes there. The server's
    scores are the model's on inferd's GPU pipeline run here, and near its scores on Pillow's."""
    from inferd.config import ImageInput
    from inferd.runtimes.torch_image import decode_batch
    from tests.runtimes.test_torch_image import expected, jpeg, save_tiny, tiny

    folder = save_tiny(tmp_path / "tiny", {"batch_sizes": [2, 4, 8], "warmup": "true"})
    with (folder / "config.toml").open("a") as config:
        config.write('[instance_group]\nkind = "gpu"\n')
    blobs = [jpeg(480, 640, 1), jpeg(300, 200, 2), jpeg(64, 64, 3)]
    body, header_len = _v2_binary_bytes(blobs)
    with serve(tmp_path) as server:
        response = requests.post(f"{server.url}/v2/models/tiny/infer", data=body, timeout=60,
                                 headers={"Inference-Header-Content-Length": str(header_len),
                                          "Content-Type": "application/octet-stream"})
        assert response.status_code == 200, response.text
        output = response.json()["outputs"][0]
        scores = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    image = ImageInput("jpeg", 40, 32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    device = torch.device("cuda:0")
    with torch.no_grad():
        here = tiny().to(device)(decode_batch(torch, blobs, image, device, "test")).cpu().numpy()
    np.testing.assert_allclose(scores, here, rtol=1e-4, atol=1e-4)
    assert np.abs(scores - expected(blobs)).max() < 0.5  # Pillow's frames: a few levels apart


@pytest.mark.skipif(not _has_gpu_decoder(), reason="needs a CUDA GPU and torchvision built for its torch")
def test_the_image_classifier_decodes_jpeg_on_the_gpu_like_pillow_on_the_cpu() -> None:
    from torchvision.io import ImageReadMode, decode_jpeg

    from inferd.config import ImageInput
    from inferd.runtimes.builtin_handlers import ImageClassifier
    from inferd.runtimes.torch_image import resize_crop_normalize
    from tests.runtimes.test_torch_image import ONE_LEVEL, decoded, jpeg

    blobs = [jpeg(480, 640, 4), jpeg(256, 300, 5)]
    handler = ImageClassifier()
    handler.device = torch.device("cpu")
    on_cpu = handler.preprocess([{"body": blob} for blob in blobs])
    handler.device = torch.device("cuda:0")
    on_gpu = handler.preprocess([{"body": blob} for blob in blobs])
    assert on_gpu.device.type == "cuda" and on_gpu.shape == (2, 3, 224, 224)
    assert np.abs(on_gpu.cpu().numpy() - on_cpu.numpy()).mean() < GPU_DECODER_MEAN_LEVELS * ONE_LEVEL
    # the resize on the GPU, given Pillow's frames: within one level of Pillow's resize everywhere
    resized = resize_crop_normalize(torch, [decoded(b).cuda() for b in blobs], ImageInput(), handler.device)
    assert np.abs(resized.cpu().numpy() - on_cpu.numpy()).max() < ONE_LEVEL
    # and nvjpeg's frames themselves, the rest of the difference
    data = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
    frames = decode_jpeg(data, mode=ImageReadMode.RGB, device="cuda")
    levels = [float((frame.cpu().float() - decoded(blob).float()).abs().mean())
              for frame, blob in zip(frames, blobs, strict=True)]
    assert max(levels) < 2 * GPU_DECODER_MEAN_LEVELS, levels


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_an_archive_for_the_gpu_is_refused_without_one(tmp_path: Path) -> None:
    """model-config.yaml's deviceType: gpu puts the handler's workers on the GPU; TorchServe's
    handlers would quietly take the CPU, inferd refuses with the reason."""
    from tests.ts_archives import Mlp, archive

    store, work = tmp_path / "store", tmp_path / "work"
    store.mkdir()
    work.mkdir()
    torch.jit.script(Mlp().eval()).save(str(work / "mlp.pt"))
    (work / "model-config.yaml").write_text("deviceType: gpu\ndeviceIds: [0]\n")
    archive(store, "on_gpu", work / "mlp.pt", "base_handler", config_file=work / "model-config.yaml")
    with serve(None, "--model-store", str(store), "--model-control", "explicit") as server:
        response = requests.post(f"{server.base}/models?url=on_gpu.mar&initial_workers=1&synchronous=true",
                                 timeout=60)
        assert response.status_code == 500, response.text
        assert "cuda:0" in response.text and "no CUDA device" in response.text, response.text
