"""TensorFlow SavedModels (TF Serving's layout: ``<version>/saved_model.pb`` + ``variables/``, or
``<version>/model.savedmodel/``), exported by Keras 3 ``model.export`` or ``tf.saved_model.save``.

Every signature is served; ``serving_default`` (or the only one) is the model's default, the others
are chosen with ``signature_name``. Inputs and outputs, their dtypes and shapes come from the
signature.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from inferd.errors import ConfigError, InvalidInput
from inferd.runtimes.base import Arrays, LoadContext, Runtime
from inferd.types import TensorSpec

DEFAULT_SIGNATURE = "serving_default"

_V2_BY_TF = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16",
    "float32": "FP32", "float64": "FP64", "bfloat16": "BF16", "string": "BYTES",
}


class TensorFlowRuntime(Runtime):
    """One signature of a loaded SavedModel. ``signature(name)`` gives a sibling for another one."""

    platform = "tensorflow_savedmodel"

    def __init__(self, loaded: Any, signature: str, max_batch_size: int, name: str, device: str) -> None:
        import tensorflow as tf

        self._tf = tf
        self._loaded = loaded  # keeps variables alive
        self._name = name
        self._device = device
        self.signature_name = signature
        self._function = loaded.signatures[signature]
        self.inputs, self.outputs = _signature_specs(self._function, max_batch_size)
        self.max_batch_size = max_batch_size
        self._dtypes = {spec.name: dtype.name for spec, dtype in
                        zip(self.inputs, self._input_dtypes(), strict=True)}

    def _input_dtypes(self) -> list[Any]:
        _, kwargs = self._function.structured_input_signature
        return [kwargs[spec.name].dtype for spec in self.inputs]

    @property
    def signature_names(self) -> list[str]:
        return sorted(self._loaded.signatures.keys())

    def signature(self, name: str) -> TensorFlowRuntime:
        if name not in self._loaded.signatures:
            raise InvalidInput(f"model '{self._name}' has no signature '{name}'; it has "
                               f"{', '.join(self.signature_names)}")
        return TensorFlowRuntime(self._loaded, name, self.max_batch_size, self._name, self._device)

    def other_signatures(self) -> dict[str, Runtime]:
        return {name: self.signature(name) for name in self.signature_names if name != self.signature_name}

    def infer(self, inputs: Arrays) -> Arrays:
        tf = self._tf
        with tf.device(self._device_name()):
            tensors = {name: tf.constant(_tf_ready(array), dtype=self._dtypes[name]) for name, array in inputs.items()}
            result = self._function(**tensors)
        return {name: _to_numpy(value) for name, value in result.items()}

    def _device_name(self) -> str:
        return "/GPU:" + self._device.split(":")[1] if self._device.startswith("cuda") else "/CPU:0"

    def describe(self) -> str:
        return f"{self.platform} signature {self.signature_name}"


def _tf_ready(array: np.ndarray) -> Any:
    if array.dtype == object:  # BYTES: TF takes bytes objects as tf.string
        return array.tolist()
    return array


def _to_numpy(value: Any) -> np.ndarray:
    array: np.ndarray = value.numpy()
    if array.dtype == object:
        return array
    if array.dtype.name == "bfloat16":
        from inferd.types import bfloat16

        return array.view(np.uint16).view(bfloat16())
    return array


def _signature_specs(function: Any, max_batch_size: int) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    _, kwargs = function.structured_input_signature
    inputs = tuple(_spec(name, spec, max_batch_size) for name, spec in sorted(kwargs.items()))
    outputs = tuple(_spec(name, spec, max_batch_size) for name, spec in sorted(function.structured_outputs.items()))
    return inputs, outputs


def _spec(name: str, spec: Any, max_batch_size: int) -> TensorSpec:
    datatype = _V2_BY_TF.get(spec.dtype.name)
    if datatype is None:
        raise ConfigError(f"tensor '{name}' has dtype {spec.dtype.name}, which inferd cannot serve")
    dims = spec.shape.as_list() if spec.shape.rank is not None else [-1]
    shape = [-1 if d is None else int(d) for d in dims]
    if max_batch_size > 0 and shape:
        shape[0] = -1
    return TensorSpec(name, datatype, tuple(shape))


def load(context: LoadContext) -> TensorFlowRuntime:
    import tensorflow as tf

    if context.device.startswith("cuda") and not tf.config.list_physical_devices("GPU"):
        raise ConfigError(f"model '{context.name}' asks for {context.device}, but TensorFlow sees no GPU")
    if context.config.intra_op_threads:
        with contextlib.suppress(RuntimeError):  # set by an earlier model already: the first stays
            tf.config.threading.set_intra_op_parallelism_threads(context.config.intra_op_threads)
    loaded = tf.saved_model.load(str(context.artifact))
    names = sorted(loaded.signatures.keys())
    if not names:
        raise ConfigError(f"SavedModel {context.artifact} has no signatures to serve")
    default = DEFAULT_SIGNATURE if DEFAULT_SIGNATURE in names else names[0]
    return TensorFlowRuntime(loaded, default, context.config.max_batch_size, context.name, context.device)
