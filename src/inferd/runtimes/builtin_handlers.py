"""inferd's own versions of TorchServe's handler classes: ``BaseHandler`` (tensors in, lists out),
``ImageClassifier`` (JPEG/PNG bytes in, top-k ``{label: probability}`` out). Pillow and numpy do
the image work on the CPU, so torchvision is not needed; when the model is on a GPU and torchvision
is installed, a batch of JPEGs is decoded there (nvjpeg) and resized and normalised there.
"""

from __future__ import annotations

import base64
import importlib.util
import inspect
import io
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

from inferd.config import ImageInput
from inferd.errors import ConfigError, InvalidInput
from inferd.runtimes.torch_image import decode_batch, gpu_decoder_available, is_jpeg, pil_pipeline

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
log = logging.getLogger("inferd.handler")
# the torch.compile backends TorchServe's model-config.yaml pt2 accepts (its ts.utils.util.PT2Backend)
PT2_BACKENDS = ("eager", "aot_eager", "inductor", "nvfuser", "aot_nvfuser", "aot_cudagraphs", "ofi", "fx2trt",
                "onnxrt", "ipex", "torchxla_trace_once", "openvino", "tensorrt", "hpu_backend")


def pt2_compile_options(pt2: Any) -> dict[str, Any] | None:
    """torch.compile's keyword arguments from model-config.yaml's ``pt2``, read as TorchServe's
    BaseHandler reads it: ``{compile: {enable: true, backend, mode, ...}}``, or its older forms, a
    backend name or the arguments themselves; None when nothing is compiled (``enable: false``, an
    ``export`` entry, a backend TorchServe does not know)."""
    if pt2 is None:
        return None
    if isinstance(pt2, dict) and "compile" in pt2:
        options = dict(pt2["compile"] or {})
        if not options.pop("enable", False):
            return None
    elif isinstance(pt2, dict) and "export" in pt2:
        return None
    elif isinstance(pt2, str):
        options = {"backend": pt2}
    elif isinstance(pt2, dict):
        options = dict(pt2)
    else:
        raise ConfigError(f"model-config.yaml's pt2 should be a backend name or a mapping, got {pt2!r}")
    if "backend" in options and options["backend"] not in PT2_BACKENDS:
        log.warning("%s is not a supported backend", options["backend"])
        return None
    return options


def _compiled(model: Any, options: dict[str, Any]) -> Any:
    """``torch.compile(model, **options)``, as TorchServe's BaseHandler; one that fails is logged
    and the model runs as it is."""
    import torch

    described = ", ".join(f"{key} {value}" for key, value in options.items())
    try:
        compiled = torch.compile(model, **options)
    except Exception as exc:
        log.warning("Compiling model model with %s has failed \n Proceeding without compilation: %s", described, exc)
        return model
    log.info("Compiled model with %s", described)
    return compiled


class BaseHandler:
    """Loads the archive's model (TorchScript, torch.export, or eager weights with ``model_file``)
    and runs JSON tensors through it: each request's body is a (nested) list of numbers, or
    ``{"data": [...]}``; each answer is the model's output row as a list. The loading steps are
    TorchServe's methods (``_load_pickled_model``, ``_load_torchscript_model``), so a handler
    that overrides one (VGG's does) is honoured."""

    def __init__(self) -> None:
        self.model: Any = None
        self.mapping: dict[str, Any] | None = None
        self.device: Any = None
        self.initialized = False
        self.context: Any = None
        self.manifest: dict[str, Any] | None = None
        self.model_pt_path: str | None = None
        self.map_location = "cpu"
        self.explain = False
        self.target = 0
        self.profiler_args: dict[str, Any] = {}
        self.model_yaml_config: dict[str, Any] = {}

    def initialize(self, context: Any) -> None:
        import torch

        properties = context.system_properties
        self.model_yaml_config = getattr(context, "model_yaml_config", {}) or {}
        gpu = properties.get("gpu_id")
        if gpu is not None and torch.cuda.is_available():
            self.map_location, self.device = "cuda", torch.device(f"cuda:{gpu}")
        else:
            self.map_location, self.device = "cpu", torch.device("cpu")
        self.manifest = context.manifest
        model_dir = str(properties["model_dir"])
        model = self.manifest["model"]
        serialized = model.get("serializedFile")
        self.model_pt_path = str(Path(model_dir) / serialized) if serialized else None
        model_file = model.get("modelFile") or ""
        if model_file:
            self.model = self._load_pickled_model(model_dir, model_file, self.model_pt_path)
        else:
            if self.model_pt_path is None:
                raise ConfigError("the archive has neither a serializedFile nor a model_file")
            self.model = self._load_torchscript_model(self.model_pt_path)
        if hasattr(self.model, "to"):
            self.model = self.model.to(self.device)
        if hasattr(self.model, "eval") and not self.model_pt_path_is_export():
            self.model.eval()
        options = pt2_compile_options(self.model_yaml_config.get("pt2"))
        if options is not None:
            self.model = _compiled(self.model, options)
        self.mapping = load_label_mapping(str(Path(model_dir) / "index_to_name.json"))
        self.initialized = True

    def model_pt_path_is_export(self) -> bool:
        return bool(self.model_pt_path and self.model_pt_path.endswith(".pt2"))

    def _load_torchscript_model(self, model_pt_path: str) -> Any:
        return load_model(Path(model_pt_path).parent, "", model_pt_path, self.device)

    def _load_pickled_model(self, model_dir: str, model_file: str, model_pt_path: str | None) -> Any:
        return load_model(Path(model_dir), model_file, model_pt_path, self.device)

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
        """TorchServe's: a describe request answers ``describe_handle()``; an explanation request
        (the ``explain: True`` header of ``/explanations`` and KServe's explain) answers
        ``explain_handle`` on the preprocessed batch; else inference and postprocess."""
        started = time.time()
        self.context = context
        if self._is_describe():
            output = [self.describe_handle()]
        else:
            preprocessed = self.preprocess(data)
            if self._is_explain():
                output = self.explain_handle(preprocessed, data)
            else:
                output = self.postprocess(self.inference(preprocessed))
        context.metrics.add_time("HandlerTime", round((time.time() - started) * 1000, 2), None, "ms")
        return output

    def explain_handle(self, data_preprocess: Any, raw_data: list[dict[str, Any]]) -> Any:
        """TorchServe's default: ``get_insights(data_preprocess, inputs, target)`` with the first
        request's ``data`` (or ``body``) and its ``target`` field (0 when none)."""
        inputs, target = None, 0
        row = raw_data[0]
        if isinstance(row, dict):
            inputs = row.get("data") or row.get("body")
            target = row.get("target") or 0
        insights = getattr(self, "get_insights", None)
        if insights is None:
            raise NotImplementedError(
                f"{type(self).__name__} cannot explain: it defines neither explain_handle nor get_insights "
                "(TorchServe's image handlers' get_insights uses captum)")
        return insights(data_preprocess, inputs, target)

    def _is_explain(self) -> bool:
        if self.context is not None and self.context.get_request_header(0, "explain") == "True":
            self.explain = True
            return True
        return False

    def _is_describe(self) -> bool:
        return self.context is not None and self.context.get_request_header(0, "describe") == "True"

    def describe_handle(self) -> Any:
        """What ``GET /models/{m}?customized=true`` answers as ``customizedMetadata``; None: nothing."""
        return None

    def get_device(self) -> Any:
        return self.device


class VisionHandler(BaseHandler):
    """Images in: each request's bytes (or base64 text, or a list of numbers) become one tensor.
    A subclass's ``image_processing`` (torchvision transforms, as MNIST's handler sets) gets the
    image as Pillow opened it, as in TorchServe; without one, inferd's ImageNet preprocessing."""

    image_processing: Any = None

    def preprocess(self, data: list[dict[str, Any]]) -> Any:
        import torch

        values = [row.get("data") or row.get("body") for row in data]
        values = [base64.b64decode(value) if isinstance(value, str) else value for value in values]
        if self._decodes_on_gpu(values):  # one batched nvjpeg call, resized and normalised there
            return decode_batch(torch, values, ImageInput(), self.device, "the request")
        images = []
        for value in values:
            if isinstance(value, bytes | bytearray):
                if self.image_processing is not None:
                    image = self.image_processing(_open_image(bytes(value)))
                    images.append(image if isinstance(image, torch.Tensor) else torch.as_tensor(np.asarray(image)))
                else:
                    images.append(torch.from_numpy(image_to_array(bytes(value))))
            elif value:
                images.append(torch.as_tensor(value, dtype=torch.float32))
            else:
                raise InvalidInput("the request has no image (send the bytes as the body or as form field 'data')")
        return torch.stack(images).to(self.device)

    def get_insights(self, tensor_data: Any, _: Any, target: Any = 0) -> Any:
        """TorchServe's VisionHandler: captum's IntegratedGradients (15 steps) of the model for
        ``target``, one attribution per input value."""
        try:
            from captum.attr import IntegratedGradients
        except ImportError:
            raise RuntimeError("explanations of an image handler need captum (pip install captum), "
                               "which is not installed") from None
        return IntegratedGradients(self.model).attribute(tensor_data, target=target, n_steps=15).tolist()

    def _decodes_on_gpu(self, values: list[Any]) -> bool:
        return (self.image_processing is None and getattr(self.device, "type", "cpu") == "cuda"
                and all(isinstance(value, bytes | bytearray) and is_jpeg(value) for value in values)
                and gpu_decoder_available())


class ImageClassifier(VisionHandler):
    """JPEG/PNG bytes -> resize 256 -> centre crop 224 -> ImageNet normalisation -> top-k labels."""

    topk = 5

    def set_max_result_classes(self, topk: int) -> None:
        self.topk = topk

    def get_max_result_classes(self) -> int:
        return self.topk

    def postprocess(self, data: Any) -> list[dict[str, float]]:
        import torch

        probabilities = torch.softmax(data, dim=1)
        probs, classes = torch.topk(probabilities, min(self.topk, probabilities.shape[1]), dim=1)
        return map_class_to_label(probs.tolist(), self.mapping, classes.tolist())


def _open_image(raw: bytes) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(io.BytesIO(raw))
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidInput(f"the request body is not an image Pillow can read: {exc}") from None


def image_to_array(raw: bytes) -> np.ndarray:
    """The classic ImageNet preprocessing, as a float32 CHW array."""
    return imagenet_array(_open_image(raw))


def imagenet_array(image: Any) -> np.ndarray:
    """Shorter side to 256 (bilinear), centre 224 crop, [0, 1], ImageNet mean/std, CHW: what
    torchvision's Resize(256), CenterCrop(224), ToTensor(), Normalize(...) compute."""
    return pil_pipeline(image, ImageInput())


def to_tensor(image: Any) -> Any:
    """torchvision's ToTensor: HWC bytes -> CHW float in [0, 1] (a grey image has one channel)."""
    import torch

    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())


class ObjectDetector(VisionHandler):
    """TorchServe's object_detector: images in, the model gives ``{"boxes", "labels", "scores"}``
    per image; each answer lists ``{label: box, "score": s}`` above ``threshold``."""

    image_processing = staticmethod(to_tensor)
    threshold = 0.5

    def postprocess(self, data: Any) -> list[list[dict[str, Any]]]:
        results = []
        for row in data:
            keep = row["scores"] >= self.threshold
            answer = []
            for box, label, score in zip(row["boxes"][keep].tolist(), row["labels"][keep].tolist(),
                                         row["scores"][keep].tolist(), strict=True):
                found: dict[str, Any] = dict(map_class_to_label([[box]], self.mapping, [[label]])[0])
                found["score"] = score
                answer.append(found)
            results.append(answer)
        return results


class ImageSegmenter(VisionHandler):
    """TorchServe's image_segmenter: ImageNet preprocessing, the model's ``out`` (N K H W) ->
    per pixel [top class, its probability]."""

    image_processing = staticmethod(lambda image: imagenet_array(image))

    def postprocess(self, data: Any) -> list[Any]:
        import torch

        scores = torch.nn.functional.softmax(data["out"] if isinstance(data, dict) else data, dim=1)
        best = torch.max(scores, dim=1)
        answer: list[Any] = torch.stack([best.indices.type(best.values.dtype), best.values], dim=3).tolist()
        return answer


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


def list_classes_from_module(module: Any, parent_class: type | None = None) -> list[type]:
    """The classes a module defines itself (TorchServe's ``ts.utils.util`` function)."""
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]
    return [c for c in classes if issubclass(c, parent_class)] if parent_class is not None else classes


def load_label_mapping(path: str) -> dict[str, Any] | None:
    """``index_to_name.json`` as TorchServe reads it: ``{"0": "tench"}``, ``{"0": ["n01440764",
    "tench"]}`` (the last item is the label) or ``{"object_type_names": [...]}``; None if absent."""
    file = Path(path)
    if not file.is_file():
        return None
    mapping = json.loads(file.read_text())
    if not isinstance(mapping, dict):
        raise ConfigError(f"{file.name} must map class indexes to names")
    if isinstance(mapping.get("object_type_names"), list):
        return {str(k): v for k, v in enumerate(mapping["object_type_names"])}
    for key, value in mapping.items():
        label = value[-1] if isinstance(value, list) else value
        if not isinstance(label, str):
            raise ConfigError(f"{file.name}: labels must be strings or lists of strings, got {value!r}")
        mapping[key] = label
    return mapping


def map_class_to_label(probs: list[list[float]], mapping: dict[str, Any] | None = None,
                       lbl_classes: list[list[int]] | None = None) -> list[dict[str, float]]:
    """One ``{label: probability}`` dict per row; a mapping value that is a list uses its last item."""
    if not isinstance(probs, list):
        raise TypeError("Convert classes to list before doing mapping")
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


def get_yaml_config(yaml_file_path: str) -> dict[str, Any]:
    import yaml

    with open(yaml_file_path) as file:
        loaded = yaml.safe_load(file)
    return loaded if isinstance(loaded, dict) else {}


class PredictionException(Exception):
    """Raised by a handler to answer the batch with ``error_code`` and ``message``."""

    def __init__(self, message: str, error_code: int = 500) -> None:
        self.message = message
        self.error_code = error_code
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message} : {self.error_code}"


BUILTIN: dict[str, type[BaseHandler]] = {
    "base_handler": BaseHandler,
    "tensor": BaseHandler,
    "image_classifier": ImageClassifier,
    "vision_handler": ImageClassifier,
    "object_detector": ObjectDetector,
    "image_segmenter": ImageSegmenter,
}
