"""TF Serving's Classify, Regress and MultiInference: ``tf.Example`` inputs (gRPC ``Input``, REST
``examples`` + ``context``) in, classifications and regressions out. Pure functions.

As in TF Serving, the examples travel to the model serialized, as the one DT_STRING input keyed
``inputs`` of the chosen signature; a classify signature gives ``classes`` and/or ``scores``
(``[examples, classes]``), a regress signature ``outputs`` (``[examples]`` or ``[examples, 1]``).
A context is merged into every example (the example's own features win). Method names are not
checked, as TF Serving does not by default: TF2 exports name every signature "predict".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from inferd.errors import InvalidInput, Unimplemented
from inferd.protocols._proto import tfserving_pb2 as pb
from inferd.protocols.tfserving import (
    CLASSIFY_METHOD,
    PROTOCOL_GRPC,
    PROTOCOL_REST,
    REGRESS_METHOD,
    decode_b64,
    float32_json,
    version_number,
)
from inferd.types import InferRequest, InferResponse, ModelMetadata, RequestedOutput, Tensor

INPUTS, CLASSES, SCORES, OUTPUTS = "inputs", "classes", "scores", "outputs"


# -- inputs ---------------------------------------------------------------------------------------

def serialized_examples(message: pb.Input) -> np.ndarray:
    """The examples of an ``Input``, each serialized (with the context merged in: a serialized
    context followed by a serialized example parses as the two merged, the example's keys winning)."""
    kind = message.WhichOneof("kind")
    if kind == "example_list":
        parts = [example.SerializeToString() for example in message.example_list.examples]
    elif kind == "example_list_with_context":
        context = message.example_list_with_context.context.SerializeToString()
        parts = [context + example.SerializeToString() for example in message.example_list_with_context.examples]
    else:
        parts = []
    if not parts:
        raise InvalidInput("Input is empty: give input.example_list (or example_list_with_context) examples")
    array = np.empty(len(parts), dtype=object)
    array[:] = parts
    return array


def rest_examples(payload: Any) -> np.ndarray:
    """A REST ``:classify`` / ``:regress`` body's ``examples`` (and ``context``) as serialized examples."""
    if not isinstance(payload, dict) or not isinstance(payload.get("examples"), list):
        raise InvalidInput("the body must be a JSON object with 'examples': a list of objects, feature -> value")
    message = pb.Input()
    context = payload.get("context")
    examples = payload["examples"]
    if context is not None:
        target = message.example_list_with_context
        _fill_example(target.context, context, "context")
    for index, item in enumerate(examples):
        example = (message.example_list_with_context if context is not None else message.example_list).examples.add()
        _fill_example(example, item, f"examples[{index}]")
    return serialized_examples(message)


def _fill_example(example: pb.Example, features: Any, where: str) -> None:
    if not isinstance(features, dict):
        raise InvalidInput(f"{where} must be an object of feature -> value, got {type(features).__name__}")
    for name, value in features.items():
        _fill_feature(example.features.feature[name], value, f"{where}['{name}']")


def _feature_kind(value: Any) -> str | None:
    """The Feature list a JSON value goes to, as TF Serving decides it (json_tensor.cc): strings and
    ``{"b64": ...}`` bytes, integers and true/false int64, numbers written with a fraction or an
    exponent float."""
    if isinstance(value, str) or (isinstance(value, dict) and set(value) == {"b64"}):
        return "bytes"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float"
    return None


def _fill_feature(feature: pb.Feature, value: Any, where: str) -> None:
    """JSON -> Feature: each value's kind decides its list (true/false are int64 1/0, as TF Serving
    stores them); values of one feature are all of one kind, as TF Serving requires."""
    values = value if isinstance(value, list) else [value]
    kinds = [_feature_kind(v) for v in values]
    if None in kinds:
        raise InvalidInput(f"{where}: a feature holds strings ({{'b64': ...}} for binary), integers or "
                           f"numbers, all of one kind; got {value!r}")
    if len(set(kinds)) > 1:
        raise InvalidInput(f"{where}: Unexpected element type in feature: expecting type: {kinds[0]} (a feature's "
                           f"values are all of one kind: write 1.0, not 1, in a float feature); got {value!r}")
    if not values:
        return
    if kinds[0] == "bytes":
        try:
            feature.bytes_list.value.extend(decode_b64(v["b64"]) if isinstance(v, dict) else v.encode()
                                            for v in values)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"{where}: {exc}") from None
    elif kinds[0] == "int64":
        if not all(-(1 << 63) <= v < (1 << 63) for v in values):
            raise InvalidInput(f"{where}: integers must fit int64")
        feature.int64_list.value.extend(int(v) for v in values)
    else:
        feature.float_list.value.extend(values)


def examples_request(model: str, version: str | None, signature: str, meta: ModelMetadata,
                     examples: np.ndarray, method: str, rest: bool) -> InferRequest:
    """The InferRequest that runs ``signature`` on the examples, after checking the signature has
    the shape ``method`` (classify or regress) needs."""
    if len(meta.inputs) != 1:
        raise InvalidInput(f"signature '{signature}' of model '{model}': expected one input tensor "
                           f"(the serialized examples), it has {len(meta.inputs)}")
    spec = meta.inputs[0]
    if spec.name != INPUTS or spec.datatype != "BYTES":
        raise InvalidInput(f"signature '{signature}' of model '{model}': expected a DT_STRING input keyed "
                           f"'{INPUTS}' for the serialized examples, it takes '{spec.name}' ({spec.datatype})")
    names = {out.name for out in meta.outputs}
    if method == CLASSIFY_METHOD:
        wanted = [n for n in (CLASSES, SCORES) if n in names]
        if not wanted or len(meta.outputs) > 2:
            raise InvalidInput(f"signature '{signature}' of model '{model}': a classification signature gives "
                               f"'{CLASSES}' and/or '{SCORES}', this one gives {sorted(names)}")
    else:
        if names != {OUTPUTS}:
            raise InvalidInput(f"signature '{signature}' of model '{model}': a regression signature gives one "
                               f"output, '{OUTPUTS}'; this one gives {sorted(names)}")
        wanted = [OUTPUTS]
    return InferRequest(model, version, [Tensor(INPUTS, "BYTES", examples)],
                        outputs=[RequestedOutput(n) for n in wanted], parameters={"signature_name": signature},
                        protocol=PROTOCOL_REST if rest else PROTOCOL_GRPC)


# -- results --------------------------------------------------------------------------------------

def classification_result(response: InferResponse, count: int) -> pb.ClassificationResult:
    outputs = {tensor.name: tensor.data for tensor in response.outputs}
    classes, scores = outputs.get(CLASSES), outputs.get(SCORES)
    for name, data in ((CLASSES, classes), (SCORES, scores)):
        if data is not None and (data.ndim != 2 or data.shape[0] != count):
            raise InvalidInput(f"the model's '{name}' has shape {list(data.shape)}; a classification needs "
                               f"[{count} examples, classes]")
    if classes is not None and scores is not None and classes.shape != scores.shape:
        raise InvalidInput(f"'{CLASSES}' {list(classes.shape)} and '{SCORES}' {list(scores.shape)} disagree")
    width = (classes if classes is not None else scores).shape[1]  # type: ignore[union-attr]
    result = pb.ClassificationResult()
    for row in range(count):
        entry = result.classifications.add()
        for column in range(width):
            item = entry.classes.add()
            if classes is not None:
                label = classes[row, column]
                item.label = label.decode("utf-8", errors="replace") if isinstance(label, bytes) else str(label)
            if scores is not None:
                item.score = float(scores[row, column])
    return result


def regression_result(response: InferResponse, count: int) -> pb.RegressionResult:
    (tensor,) = response.outputs
    data = tensor.data
    if data.dtype.kind != "f" or data.shape not in ((count,), (count, 1)):
        raise InvalidInput(f"the model's '{OUTPUTS}' is {tensor.datatype} {list(data.shape)}; a regression "
                           f"needs floats of shape [{count}] or [{count}, 1]")
    result = pb.RegressionResult()
    for value in data.reshape(-1).tolist():
        result.regressions.add(value=value)
    return result


def fill_model_spec(target: pb.ModelSpec, name: str, signature: str, version: str) -> None:
    target.name, target.signature_name = name, signature
    target.version.value = version_number(version)


def rest_classification(result: pb.ClassificationResult) -> dict[str, Any]:
    """``{"results": [[[label, score], ...], ...]}``, each score a float32 as TF Serving writes it
    (for ``orjson.dumps(..., OPT_SERIALIZE_NUMPY)``)."""
    return {"results": [[[c.label, score] for c, score in zip(entry.classes,
                                                               float32_json([c.score for c in entry.classes]),
                                                               strict=True)]
                        for entry in result.classifications]}


def rest_regression(result: pb.RegressionResult) -> dict[str, Any]:
    return {"results": float32_json([r.value for r in result.regressions])}


def task_method(task: pb.InferenceTask, model: str) -> str:
    """A MultiInference task's method, checked as TF Serving checks it (9d981c5c,
    servables/tensorflow/multi_inference.cc:43-83): classify or regress, on the request's one model;
    another method is UNIMPLEMENTED."""
    if not task.model_spec.name:
        raise InvalidInput("Found ModelSpec with an empty model name.")
    if task.model_spec.name != model:
        raise InvalidInput("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
    if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
        raise Unimplemented(f"Unsupported signature method_name: {task.method_name} (expected "
                            f"{CLASSIFY_METHOD} or {REGRESS_METHOD})")
    return task.method_name
