"""Build the pipeline example: a Triton-style repository where one request with image bytes runs
preprocessing (a Python model: decode, resize, normalize), a classifier (ONNX) and postprocessing
(a Python model: softmax and the label) inside the server, as the ensemble ``image_pipeline``.

    python examples/pipeline/make_pipeline.py /tmp/pipeline && inferd serve /tmp/pipeline

Every model is written as a Triton model (config.pbtxt, model.py with TritonPythonModel), so the
same folder also serves under Triton. The classifier's weights are seeded, not trained.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

SIZE = 16  # the classifier's image side
CLASSES = 10
LABELS = [f"class_{i}" for i in range(CLASSES)]

PREPROCESS = f'''
import io

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image


def preprocess(data):
    """Image bytes -> a normalized CHW float32 array of {SIZE}x{SIZE}."""
    image = Image.open(io.BytesIO(data)).convert("RGB").resize(({SIZE}, {SIZE}), Image.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return ((array - 0.5) / 0.25).transpose(2, 0, 1)


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()  # [batch, 1] bytes
            pixels = np.stack([preprocess(row[0]) for row in images]).astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("PIXELS", pixels)]))
        return responses
'''

POSTPROCESS = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "LOGITS").as_numpy()
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
            labels = np.array([[f"class_{i}".encode()] for i in probs.argmax(axis=1)], dtype=object)
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("PROBS", probs), pb_utils.Tensor("LABEL", labels)]))
        return responses
'''

PYTHON_CONFIG = '''
name: "{name}"
backend: "python"
max_batch_size: 8
dynamic_batching {{ }}
input [ {{ name: "{input}" data_type: {in_type} dims: [ {in_dims} ] }} ]
output [ {outputs} ]
'''

CLASSIFIER_CONFIG = f'''
name: "classifier"
platform: "onnxruntime_onnx"
max_batch_size: 8
dynamic_batching {{ }}
input [ {{ name: "x" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, {SIZE}, {SIZE} ] }} ]
output [ {{ name: "logits" data_type: TYPE_FP32 dims: [ {CLASSES} ] label_filename: "labels.txt" }} ]
'''

ENSEMBLE_CONFIG = f'''
name: "image_pipeline"
platform: "ensemble"
max_batch_size: 8
input [ {{ name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [
  {{ name: "PROBS" data_type: TYPE_FP32 dims: [ {CLASSES} ] label_filename: "labels.txt" }},
  {{ name: "LABEL" data_type: TYPE_STRING dims: [ 1 ] }}
]
ensemble_scheduling {{
  step [
    {{
      model_name: "preprocess"
      model_version: -1
      input_map {{ key: "IMAGE" value: "IMAGE" }}
      output_map {{ key: "PIXELS" value: "pixels" }}
    }},
    {{
      model_name: "classifier"
      model_version: -1
      input_map {{ key: "x" value: "pixels" }}
      output_map {{ key: "logits" value: "logits" }}
    }},
    {{
      model_name: "postprocess"
      model_version: -1
      input_map {{ key: "LOGITS" value: "logits" }}
      output_map {{ key: "PROBS" value: "PROBS" }}
      output_map {{ key: "LABEL" value: "LABEL" }}
    }}
  ]
}}
'''


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())


def classifier() -> object:
    """A small seeded CNN (torch is needed only to build the example)."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(), torch.nn.Linear(8 * 16, CLASSES)).eval()


def build(root: Path) -> Path:
    import torch

    _write(root / "preprocess/1/model.py", PREPROCESS)
    _write(root / "preprocess/config.pbtxt", PYTHON_CONFIG.format(
        name="preprocess", input="IMAGE", in_type="TYPE_STRING", in_dims="1",
        outputs=f'{{ name: "PIXELS" data_type: TYPE_FP32 dims: [ 3, {SIZE}, {SIZE} ] }}'))
    _write(root / "postprocess/1/model.py", POSTPROCESS)
    _write(root / "postprocess/config.pbtxt", PYTHON_CONFIG.format(
        name="postprocess", input="LOGITS", in_type="TYPE_FP32", in_dims=str(CLASSES),
        outputs=f'{{ name: "PROBS" data_type: TYPE_FP32 dims: [ {CLASSES} ] }}, '
                '{ name: "LABEL" data_type: TYPE_STRING dims: [ 1 ] }'))
    (root / "classifier/1").mkdir(parents=True, exist_ok=True)
    torch.onnx.export(classifier(), (torch.randn(2, 3, SIZE, SIZE),), str(root / "classifier/1/model.onnx"),
                      input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    _write(root / "classifier/config.pbtxt", CLASSIFIER_CONFIG)
    (root / "image_pipeline/1").mkdir(parents=True, exist_ok=True)  # an ensemble's version folder is empty
    _write(root / "image_pipeline/config.pbtxt", ENSEMBLE_CONFIG)
    labels = "".join(f"{name}\n" for name in LABELS)  # for the classification extension (class_count)
    for model in ("classifier", "image_pipeline"):
        (root / model / "labels.txt").write_text(labels)
    return root


if __name__ == "__main__":
    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else "pipeline_models")))
