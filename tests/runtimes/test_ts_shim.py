"""What TorchServe's example handlers import from ``ts.*``, run through inferd's shim: a
VisionHandler subclass's ``image_processing`` (as MNIST's handler sets it), a handler that
overrides ``_load_pickled_model`` with ``list_classes_from_module`` (as VGG's does),
``PredictionException``, headers and statuses — each compared with running the model in-process."""

from __future__ import annotations

import io
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from inferd.runtimes import handler
from inferd.runtimes.torchserve import read_manifest

NET = '''
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 5)
        self.head = torch.nn.Linear(4 * 24 * 24, 10)

    def forward(self, x):
        return torch.log_softmax(self.head(torch.flatten(torch.relu(self.conv(x)), 1)), dim=1)
'''

MNIST_LIKE = '''
import numpy as np
import torch
from ts.torch_handler.image_classifier import ImageClassifier


def to_tensor(image):  # what torchvision's ToTensor + Normalize do, without torchvision
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy((pixels[None] - 0.1307) / 0.3081)


class DigitClassifier(ImageClassifier):
    image_processing = staticmethod(to_tensor)

    def postprocess(self, data):
        return data.argmax(1).tolist()
'''

VGG_LIKE = '''
import importlib
import os
import torch
from ts.torch_handler.image_classifier import ImageClassifier
from ts.utils.util import list_classes_from_module, PredictionException


class CustomLoader(ImageClassifier):
    image_processing = staticmethod(lambda image: torch.zeros(1, 28, 28))

    def _load_pickled_model(self, model_dir, model_file, model_pt_path):
        module = importlib.import_module(model_file.split(".")[0])
        classes = list_classes_from_module(module)
        assert len(classes) == 1, classes
        model = classes[0]()
        model.load_state_dict(torch.load(model_pt_path))
        self.loaded_by_override = True
        return model

    def handle(self, data, context):
        if any(row.get("body") == b"refuse" for row in data):
            raise PredictionException("refused by the handler", 429)
        return super().handle(data, context)
'''


@pytest.fixture()
def model_dir(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "net.py").write_text(textwrap.dedent(NET))
    sys.path.insert(0, str(tmp_path))
    import net

    torch.manual_seed(3)
    torch.save(net.Net().state_dict(), tmp_path / "net.pth")
    yield tmp_path
    for name in ("net", "mnist_like", "vgg_like", "detector", "segmenter"):
        sys.modules.pop(name, None)
    while str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def build(model_dir: Path, handler_source: str, name: str) -> handler.HandlerRuntime:
    (model_dir / f"{name}.py").write_text(textwrap.dedent(handler_source))
    manifest = {"model": {"handler": f"{name}.py", "modelFile": "net.py", "serializedFile": "net.pth"}}
    (model_dir / "MAR-INF").mkdir(exist_ok=True)
    (model_dir / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    return handler.build(name, model_dir, read_manifest(model_dir), 4, None)


def digit_png(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def call(runtime: handler.HandlerRuntime, bodies: list[bytes], headers: list[str]) -> dict[str, np.ndarray]:
    body = np.empty(len(bodies), dtype=object)
    body[:] = bodies
    kinds = np.empty(len(headers), dtype=object)
    kinds[:] = [h.encode() for h in headers]
    return runtime.infer({"body": body, "content_type": kinds})


def test_a_subclass_image_processing_gets_the_image_as_opened(model_dir: Path) -> None:
    import net

    runtime = build(model_dir, MNIST_LIKE, "mnist_like")
    images = [digit_png(1), digit_png(2)]
    out = call(runtime, images, ["image/png", "image/png"])
    model = net.Net()
    model.load_state_dict(torch.load(model_dir / "net.pth"))
    from PIL import Image

    x = torch.stack([torch.from_numpy((np.asarray(Image.open(io.BytesIO(i)), np.float32)[None] / 255 - 0.1307)
                                      / 0.3081) for i in images])
    expected = model.eval()(x).argmax(1).tolist()
    assert [json.loads(o) for o in out["output"]] == expected  # the 1x28x28 grey image, not RGB 224x224
    assert out["status"].tolist() == [200, 200]


def test_an_overridden_loader_and_prediction_exception(model_dir: Path) -> None:
    runtime = build(model_dir, VGG_LIKE, "vgg_like")
    service = runtime._handle.__self__  # type: ignore[attr-defined]
    assert service.loaded_by_override
    out = call(runtime, [b"x", b"refuse"], ["image/png", "image/png"])
    assert out["status"].tolist() == [429, 429]
    assert json.loads(out["output"][0])["message"] == "refused by the handler"


def test_headers_reach_the_context(model_dir: Path) -> None:
    source = '''
def handle(data, context):
    if data is None:
        return None
    context.set_response_status(201, "Created", 1)
    return [context.get_request_header(i, "X-Id") for i in range(len(data))]
'''
    (model_dir / "echo_ids.py").write_text(source)
    (model_dir / "MAR-INF").mkdir(exist_ok=True)
    (model_dir / "MAR-INF" / "MANIFEST.json").write_text(json.dumps({"model": {"handler": "echo_ids.py:handle"}}))
    runtime = handler.build("ids", model_dir, read_manifest(model_dir), 4, None)
    out = call(runtime, [b"a", b"b"], ["text/plain\r\nx-id: first", "text/plain\r\nx-id: second\r\nother: 1"])
    assert out["output"].tolist() == [b"first", b"second"]
    assert out["status"].tolist() == [200, 201]
    sys.modules.pop("echo_ids", None)


DETECTOR = '''
import torch


class Detector(torch.nn.Module):
    """Two boxes per image, one above the 0.5 threshold, as torchvision's detection models answer."""

    def forward(self, images):
        out = []
        for image in images:
            mean = float(image.mean())
            out.append({"boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0]]),
                        "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.5 + mean / 4, 0.1])})
        return out
'''

SEGMENTER = '''
import torch


class Segmenter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return {"out": self.conv(x)}
'''


def builtin(model_dir: Path, name: str, source: str, handler_name: str, labels: dict[str, str] | None = None):
    (model_dir / f"{name}.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(model_dir))
    module = __import__(name)
    torch.save(next(v for k, v in vars(module).items() if k[0].isupper() and k != "torch")().state_dict(),
               model_dir / f"{name}.pth")
    if labels:
        (model_dir / "index_to_name.json").write_text(json.dumps(labels))
    manifest = {"model": {"handler": handler_name, "modelFile": f"{name}.py", "serializedFile": f"{name}.pth"}}
    (model_dir / "MAR-INF").mkdir(exist_ok=True)
    (model_dir / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    return handler.build(name, model_dir, read_manifest(model_dir), 4, None), module


def rgb_jpeg(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_builtin_object_detector(model_dir: Path) -> None:
    runtime, _ = builtin(model_dir, "detector", DETECTOR, "object_detector", {"1": "person", "2": "bicycle"})
    image = rgb_jpeg(4)
    out = call(runtime, [image], ["image/jpeg"])
    from PIL import Image

    mean = float(np.asarray(Image.open(io.BytesIO(image)), np.float32).mean() / 255)
    answer = json.loads(out["output"][0])
    assert answer == [{"person": [1.0, 2.0, 3.0, 4.0], "score": pytest.approx(0.5 + mean / 4, rel=1e-5)}]


def test_builtin_image_segmenter(model_dir: Path) -> None:
    runtime, module = builtin(model_dir, "segmenter", SEGMENTER, "image_segmenter")
    image = rgb_jpeg(5, (300, 260))
    out = call(runtime, [image], ["image/jpeg"])
    answer = np.array(json.loads(out["output"][0]))
    assert answer.shape == (224, 224, 2)  # per pixel: [top class, its probability]
    from tests.ts_archives import reference_preprocess

    with torch.inference_mode():
        model = module.Segmenter()
        model.load_state_dict(torch.load(model_dir / "segmenter.pth"))
        scores = torch.softmax(model(torch.from_numpy(reference_preprocess(image))[None])["out"], dim=1)[0]
    np.testing.assert_allclose(answer[..., 0], scores.argmax(0).numpy(), atol=0)
    np.testing.assert_allclose(answer[..., 1], scores.max(0).values.numpy(), rtol=1e-4, atol=1e-5)
