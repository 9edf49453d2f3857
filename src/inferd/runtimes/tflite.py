"""TensorFlow Lite models (``<version>/model.tflite``) on ``tf.lite.Interpreter``, served as TF Serving
serves them under ``--prefer_tflite_model`` (its tflite_session.cc at 9d981c5c).

A model's signatures, whichever it has first:

1. SignatureDefs stored in its metadata (``signature_defs_metadata``, written by TF Serving's
   testdata tools with ``signature_def_utils.set_signature_defs``): TF Serving's own source. Their
   tensor names are matched as written, else without the ``:0`` that older converters dropped.
2. Its own signatures (what ``TFLiteConverter`` writes, one per converted function), each run by
   the interpreter's signature runner. TF Serving 9d981c5c ignores these and would mock one from
   tensor names such as ``serving_default_x:0``; inferd serves them by their input and output keys.
3. Neither: one ``serving_default`` of the model's input and output tensors, keyed by their names
   without ``:N`` (TF Serving's mock signature).

Every call resizes the inputs to the shapes sent, as TF Serving does: the batch dimension is any
size, and a tensor of another rank goes to the interpreter, which decides (``lenient_rank``). An
Interpreter is not thread-safe, so each thread that runs the model (one per instance) has its own,
built from the same bytes on its first call.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inferd.config import ModelConfig
from inferd.errors import ConfigError, InvalidInput
from inferd.runtimes.base import Arrays, LoadContext, Runtime, refuse_accelerators, refuse_torch_options, warm_up
from inferd.types import TensorSpec, v2_datatype

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
SIGNATURE_METADATA = b"signature_defs_metadata"  # tflite's signature_def_util: name -> SignatureDef


@dataclass(frozen=True, slots=True)
class _Tensor:
    key: str  # the name requests and answers use
    name: str  # the TFLite tensor's name
    index: int  # in its subgraph
    dtype: np.dtype[Any]
    shape: tuple[int, ...]  # the model's shape signature (-1: any size)


@dataclass(frozen=True, slots=True)
class _Signature:
    key: str
    inputs: tuple[_Tensor, ...]
    outputs: tuple[_Tensor, ...]
    by_runner: bool  # the model's own signature (a subgraph of its own): run by its signature runner
    definition: bytes  # the SignatureDef proto (TF Serving's metadata), serialized


class _Model:
    """One version's bytes and signatures, and each thread's interpreter: shared by its signatures."""

    def __init__(self, content: bytes, signatures: dict[str, _Signature], threads: int) -> None:
        self.content = content
        self.signatures = signatures
        self.names = sorted(signatures)
        self.default = DEFAULT_SIGNATURE if DEFAULT_SIGNATURE in signatures else self.names[0]
        self._threads = threads or None
        self._local = threading.local()

    def _worker(self) -> _Worker:
        worker: _Worker | None = getattr(self._local, "worker", None)
        if worker is None:
            interpreter = _interpreter(self.content, self._threads)
            interpreter.allocate_tensors()
            worker = self._local.worker = _Worker(interpreter)
        return worker

    def run(self, signature: _Signature, inputs: Arrays) -> Arrays:
        worker = self._worker()
        if signature.by_runner:
            return worker.run_signature(signature, inputs)
        return worker.run_tensors(signature, inputs)


class _Worker:
    """One thread's interpreter, and the input shapes it was last allocated for."""

    def __init__(self, interpreter: Any) -> None:
        self.interpreter = interpreter
        self._runners: dict[str, Any] = {}
        self._shapes: dict[int, tuple[int, ...]] = {}

    def run_signature(self, signature: _Signature, inputs: Arrays) -> Arrays:
        runner = self._runners.get(signature.key)
        if runner is None:
            runner = self._runners[signature.key] = self.interpreter.get_signature_runner(signature.key)
        results = runner(**{t.key: _tflite_ready(inputs[t.key], t) for t in signature.inputs})
        return {t.key: _from_tflite(results[t.key]) for t in signature.outputs}

    def run_tensors(self, signature: _Signature, inputs: Arrays) -> Arrays:
        try:
            return self._run_tensors(signature, inputs)
        except BaseException:
            self._shapes.clear()  # a failed resize or allocation: allocate afresh on the next call
            raise

    def _run_tensors(self, signature: _Signature, inputs: Arrays) -> Arrays:
        interpreter = self.interpreter
        ready = {t.index: _tflite_ready(inputs[t.key], t) for t in signature.inputs}
        resized = False
        for index, value in ready.items():
            if self._shapes.get(index) != value.shape:
                interpreter.resize_tensor_input(index, list(value.shape))
                self._shapes[index] = value.shape
                resized = True
        if resized:
            interpreter.allocate_tensors()
        for index, value in ready.items():
            interpreter.set_tensor(index, value)
        interpreter.invoke()
        return {t.key: _from_tflite(interpreter.get_tensor(t.index)) for t in signature.outputs}


class TFLiteRuntime(Runtime):
    """One signature of a TFLite model. ``signature(name)`` gives a sibling for another one."""

    platform = "tflite"
    lenient_rank = True  # inputs are resized to what is sent: another rank goes to the interpreter

    def __init__(self, model: _Model, signature: str, max_batch_size: int, name: str,
                 config: ModelConfig | None = None) -> None:
        self._config = config or ModelConfig()
        self._model = model
        self._name = name
        self.signature_name = signature
        self._signature = model.signatures[signature]
        self.signature_def = self._signature.definition
        self.inputs = tuple(_spec(t) for t in self._signature.inputs)
        self.outputs = tuple(_spec(t) for t in self._signature.outputs)
        self.max_batch_size = max_batch_size

    def warmup(self) -> None:
        warm_up(self, self._config, self._name)

    @property
    def signature_names(self) -> list[str]:
        return self._model.names

    def signature(self, name: str) -> TFLiteRuntime:
        if name not in self._model.signatures:
            raise InvalidInput(f"model '{self._name}' has no signature '{name}'; it has "
                               f"{', '.join(self.signature_names)}")
        return TFLiteRuntime(self._model, name, self.max_batch_size, self._name)

    def other_signatures(self) -> dict[str, Runtime]:
        return {name: self.signature(name) for name in self.signature_names if name != self.signature_name}

    def infer(self, inputs: Arrays) -> Arrays:
        try:
            return self._model.run(self._signature, inputs)
        except (ValueError, RuntimeError) as exc:  # the interpreter refused the shapes or values
            sent = ", ".join(f"{key} {list(value.shape)}" for key, value in sorted(inputs.items()))
            takes = ", ".join(f"{spec.name} {list(spec.shape)}" for spec in self.inputs)
            raise InvalidInput(f"model '{self._name}' signature '{self.signature_name}': TFLite could not run "
                               f"inputs {sent} (it takes {takes}): {str(exc).strip().splitlines()[0]}") from None

    def unload(self) -> None:
        """Nothing to close: the interpreters go with the last reference to the model."""

    def describe(self) -> str:
        return f"{self.platform} signature {self.signature_name}"


def _interpreter(content: bytes, threads: int | None = None) -> Any:
    """A fresh interpreter of the model (without the warning that tf.lite's is deprecated in favour
    of ai_edge_litert, a package inferd does not depend on)."""
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        return tf.lite.Interpreter(model_content=content, num_threads=threads)


def _spec(tensor: _Tensor) -> TensorSpec:
    shape = list(tensor.shape)
    if shape:
        shape[0] = -1  # resized per call: any batch
    return TensorSpec(tensor.key, v2_datatype(tensor.dtype), tuple(shape))


def _tflite_ready(array: np.ndarray, tensor: _Tensor) -> np.ndarray:
    """A request's array as the interpreter takes it: its own dtype (BYTES as numpy bytes)."""
    if tensor.dtype.kind == "S" and array.dtype != object:
        return array.astype(object)
    return array


def _from_tflite(array: np.ndarray) -> np.ndarray:
    """An output as inferd answers it: strings as an object array of bytes (inferd's BYTES)."""
    if array.dtype.kind in "SU":
        strings = np.empty(array.shape, dtype=object)
        strings.flat[:] = [bytes(item) if array.dtype.kind == "S" else str(item).encode() for item in array.flat]
        return strings
    return np.array(array, copy=True)


def read_signatures(content: bytes, interpreter: Any) -> dict[str, _Signature]:
    """The model's signatures (metadata SignatureDefs, else its own, else one mocked from its tensors)."""
    stored = _stored_signature_defs(content)
    if stored:
        return {key: _stored_signature(key, definition, interpreter) for key, definition in stored.items()}
    own = interpreter.get_signature_list()
    if own:
        return {key: _own_signature(key, interpreter) for key in own}
    return {DEFAULT_SIGNATURE: _mock_signature(interpreter)}


def _stored_signature_defs(content: bytes) -> dict[str, Any]:
    """The SignatureDefs in the model's ``signature_defs_metadata`` (a FlexBuffer map of key ->
    serialized SignatureDef), or none."""
    from flatbuffers import flexbuffers
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(content, 0)
    for i in range(model.MetadataLength()):
        metadata = model.Metadata(i)
        if metadata.Name() != SIGNATURE_METADATA:
            continue
        data = model.Buffers(metadata.Buffer()).DataAsNumpy()
        if isinstance(data, int):  # an empty buffer (or one stored past the flatbuffer): nothing to read
            return {}
        stored = flexbuffers.GetRoot(data.tobytes()).AsMap
        definitions = {}
        for key, value in zip(stored.Keys, stored.Values, strict=True):
            definition = meta_graph_pb2.SignatureDef()
            definition.ParseFromString(value.AsStringBytes)
            definitions[key.AsKey] = definition
        return definitions
    return {}


def _stored_signature(key: str, definition: Any, interpreter: Any) -> _Signature:
    inputs = {d["name"]: d for d in interpreter.get_input_details()}
    outputs = {d["name"]: d for d in interpreter.get_output_details()}

    def tensors(infos: Any, details: dict[str, dict[str, Any]], what: str) -> tuple[_Tensor, ...]:
        found = []
        for name in sorted(infos):
            info = infos[name]
            tensor_name = info.name if info.name in details else info.name.split(":")[0]
            if tensor_name not in details:
                raise ConfigError(f"signature '{key}' {what} '{name}' references an unknown tensor "
                                  f"'{info.name}'; the model's {what}s are {sorted(details)}")
            info.name = tensor_name  # TF Serving's metadata shows the TFLite name
            found.append(_tensor(name, details[tensor_name]))
        return tuple(found)

    ins = tensors(definition.inputs, inputs, "input")
    outs = tensors(definition.outputs, outputs, "output")
    return _Signature(key, ins, outs, by_runner=False, definition=definition.SerializeToString())


def _own_signature(key: str, interpreter: Any) -> _Signature:
    runner = interpreter.get_signature_runner(key)
    ins = tuple(_tensor(name, d) for name, d in sorted(runner.get_input_details().items()))
    outs = tuple(_tensor(name, d) for name, d in sorted(runner.get_output_details().items()))
    return _Signature(key, ins, outs, by_runner=True, definition=_signature_def(ins, outs))


def _mock_signature(interpreter: Any) -> _Signature:
    ins = _tensors_by_name(interpreter.get_input_details())
    outs = _tensors_by_name(interpreter.get_output_details())
    return _Signature(DEFAULT_SIGNATURE, ins, outs, by_runner=False, definition=_signature_def(ins, outs))


def _tensors_by_name(details: list[dict[str, Any]]) -> tuple[_Tensor, ...]:
    """Tensors keyed by their names without ``:N``; where two would share a key (``Call:0`` and
    ``Call:1``; TF Serving then keeps only the last) they keep their whole names."""
    short = [d["name"].split(":")[0] for d in details]
    keys = [key if short.count(key) == 1 else d["name"] for key, d in zip(short, details, strict=True)]
    return tuple(sorted((_tensor(key, d) for key, d in zip(keys, details, strict=True)), key=lambda t: t.key))


def _tensor(key: str, details: dict[str, Any]) -> _Tensor:
    shape = details.get("shape_signature")
    if shape is None or len(shape) == 0:
        shape = details["shape"]
    return _Tensor(key, details["name"], int(details["index"]), np.dtype(details["dtype"]),
                   tuple(int(d) for d in shape))


def _signature_def(inputs: tuple[_Tensor, ...], outputs: tuple[_Tensor, ...]) -> bytes:
    """A predict SignatureDef of these tensors (their TFLite names, dtypes, shape signatures)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import meta_graph_pb2

    definition = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
    for tensors, infos in ((inputs, definition.inputs), (outputs, definition.outputs)):
        for tensor in tensors:
            info = infos[tensor.key]
            info.name = tensor.name
            info.dtype = tf.dtypes.as_dtype(tf.string if tensor.dtype.kind == "S" else tensor.dtype).as_datatype_enum
            for size in tensor.shape:
                info.tensor_shape.dim.add().size = size
    return bytes(definition.SerializeToString())


def _check_dtypes(name: str, signatures: dict[str, _Signature]) -> None:
    for signature in signatures.values():
        for tensor in signature.inputs + signature.outputs:
            try:
                v2_datatype(tensor.dtype)
            except KeyError:
                raise ConfigError(f"model '{name}': signature '{signature.key}' tensor '{tensor.key}' has dtype "
                                  f"{tensor.dtype}, which inferd cannot serve") from None


def load(context: LoadContext) -> TFLiteRuntime:
    refuse_torch_options(context.config, context.name, "TFLite")
    refuse_accelerators(context.config, context.name, "TFLite", (0,))
    if context.device != "cpu":
        raise ConfigError(f"model '{context.name}' asks for {context.device}, but TFLite models run on the CPU")
    if context.config.parameters:
        raise ConfigError(f"model '{context.name}': TFLite models take no parameters, got "
                          f"{sorted(context.config.parameters)}")
    path = Path(context.artifact)
    try:
        content = path.read_bytes()
        interpreter = _interpreter(content)
        signatures = read_signatures(content, interpreter)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"TFLite model {path} did not load: {str(exc).strip().splitlines()[0]}") from None
    _check_dtypes(context.name, signatures)
    model = _Model(content, signatures, context.config.intra_op_threads)
    return TFLiteRuntime(model, model.default, context.config.max_batch_size, context.name, context.config)
