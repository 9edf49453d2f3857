"""inferd's own versions of TorchServe's handler classes: ``BaseHandler`` (tensors in, lists out),
``ImageClassifier`` (JPEG/PNG bytes in, top-k ``{label: probability}`` out). Pillow and numpy do
the image work, so torchvision is not needed.
"""

from __future__ import annotations

import base64
import importlib.util
import inspect
import io
import json
import sys
from pathlib import Path
from typing import Any, cast

import numpy as np

from inferd.errors import ConfigError, InvalidInput

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class BaseHandler:
    """Loads the archive's model (TorchScript, torch.export, or eager weights with ``model_file``)
    and runs JSON tensors through it: each request's body is a (nested) list of numbers, or
    ``{"data": [...]}``; each answer is the model's output row as a list."""

    def __init__(self) -> None:
        self.model: Any = None
        self.mapping: dict[str, Any] | None = None
        self.device: Any = None
        self.initialized = False
        self.context: Any = None
        self.manifest: dict[str, Any] | None = None
        self.model_pt_path: str | None = None
        self.map_location = "cpu"

    def initialize(self, context: Any) -> None:
        import torch

        properties = context.system_properties
        gpu = properties.get("gpu_id")
        if gpu is not None and torch.cuda.is_available():
            self.map_location, self.device = "cuda", torch.device(f"cuda:{gpu}")
        else:
            self.map_location, self.device = "cpu", torch.device("cpu")
        self.manifest = context.manifest
        model_dir = Path(properties["model_dir"])
        model = self.manifest["model"]
        serialized = model.get("serializedFile")
        self.model_pt_path = str(model_dir / serialized) if serialized else None
        self.model = load_model(model_dir, model.get("modelFile") or "", self.model_pt_path, self.device)
        self.mapping = load_label_mapping(str(model_dir / "index_to_name.json"))
        self.initialized = True

    def preprocess(self, data: list[dict[str, Any]]) -> Any:
        import torch

        rows = [np.asarray(_json_row(row), dtype=np.float32) for row in data]
        shapes = {r.shape for r in rows}
        if len(shapes) > 1:
            raise InvalidInput(f"requests in one batch have different shapes: {sorted(shapes)}")
        return torch.from_numpy(np.stack(rows))

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.inference_mode():
            return self.model(data.to(self.device), *args, **kwargs)

    def postprocess(self, data: Any) -> list[Any]:
        return cast(list[Any], data.tolist())

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        self.context = context
        return self.postprocess(self.inference(self.preprocess(data)))


class ImageClassifier(BaseHandler):
    """JPEG/PNG bytes -> resize 256 -> centre crop 224 -> ImageNet normalisation -> top-k labels."""

    topk = 5

    def set_max_result_classes(self, topk: int) -> None:
        self.topk = topk

    def get_max_result_classes(self) -> int:
        return self.topk

    def preprocess(self, data: list[dict[str, Any]]) -> Any:
        import torch

        return torch.from_numpy(np.stack([image_to_array(_image_bytes(row)) for row in data]))

    def postprocess(self, data: Any) -> list[dict[str, float]]:
        import torch

        probabilities = torch.softmax(data, dim=1)
        probs, classes = torch.topk(probabilities, min(self.topk, probabilities.shape[1]), dim=1)
        return map_class_to_label(probs.tolist(), self.mapping, classes.tolist())


def image_to_array(raw: bytes) -> np.ndarray:
    """The classic ImageNet preprocessing, as a float32 CHW array."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(raw)).convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidInput(f"the request body is not an image Pillow can read: {exc}") from None
    width, height = image.size
    size = (256, int(256 * height / width)) if width <= height else (int(256 * width / height), 256)
    image = image.resize(size, Image.Resampling.BILINEAR)
    left = round((size[0] - 224) / 2.0)
    top = round((size[1] - 224) / 2.0)
    image = image.crop((left, top, left + 224, top + 224))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return ((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy()


def _image_bytes(row: dict[str, Any]) -> bytes:
    value = row.get("data") or row.get("body")
    if isinstance(value, str):
        value = base64.b64decode(value)
    if not value:
        raise InvalidInput("the request has no image (send the bytes as the body or as form field 'data')")
    return bytes(value)


def _json_row(row: dict[str, Any]) -> Any:
    value = row.get("data") if row.get("data") is not None else row.get("body")
    if isinstance(value, bytes | bytearray):
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidInput("the request body must be JSON numbers, e.g. [[1.0, 2.0]]") from None
    if isinstance(value, dict):
        value = value.get("data", value.get("instances"))
    return value


def load_model(model_dir: Path, model_file: str, weights: str | None, device: Any) -> Any:
    """TorchScript or torch.export from ``serializedFile``; with ``model_file``, an eager module
    whose weights load with ``weights_only=True`` (no pickled code runs)."""
    import torch

    if model_file:
        module_class = _model_class(model_dir / model_file)
        model = module_class()
        if weights:
            state = torch.load(weights, map_location=device, weights_only=True)
            model.load_state_dict(state)
        return model.to(device).eval()
    if weights is None:
        raise ConfigError("the archive has neither a serializedFile nor a model_file")
    if weights.endswith(".pt2"):
        return torch.export.load(weights).module().to(device)
    return torch.jit.load(weights, map_location=device).eval()  # type: ignore[no-untyped-call]


def _model_class(path: Path) -> Any:
    import torch

    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import model file {path.name}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass)
               if issubclass(c, torch.nn.Module) and c.__module__ == module.__name__]
    if len(classes) != 1:
        raise ConfigError(f"model file {path.name} must define exactly one torch.nn.Module class, "
                          f"found {[c.__name__ for c in classes]}")
    return classes[0]


def load_label_mapping(path: str) -> dict[str, Any] | None:
    file = Path(path)
    if not file.is_file():
        return None
    mapping = json.loads(file.read_text())
    if not isinstance(mapping, dict):
        raise ConfigError(f"{file.name} must map class indexes to names")
    return mapping


def map_class_to_label(probs: list[list[float]], mapping: dict[str, Any] | None = None,
                       lbl_classes: list[list[int]] | None = None) -> list[dict[str, float]]:
    """One ``{label: probability}`` dict per row; a mapping value that is a list uses its last item."""
    if lbl_classes is None:
        lbl_classes = [list(range(len(row))) for row in probs]
    results = []
    for row_probs, row_classes in zip(probs, lbl_classes, strict=True):
        answer = {}
        for prob, index in zip(row_probs, row_classes, strict=True):
            label = mapping.get(str(index), str(index)) if mapping else str(index)
            answer[label[-1] if isinstance(label, list) else label] = prob
        results.append(answer)
    return results


BUILTIN: dict[str, type[BaseHandler]] = {
    "base_handler": BaseHandler,
    "tensor": BaseHandler,
    "image_classifier": ImageClassifier,
}
