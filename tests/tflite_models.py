"""Small TFLite models built with tf.lite.TFLiteConverter, and the in-process answers to compare with."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np


def _module(scale: float) -> Any:
    """Three signatures: serving_default (x -> doubled, total), add (a, b -> sum), echo (strings)."""
    import tensorflow as tf

    class Calculator(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def scale(self, x: Any) -> dict[str, Any]:
            return {"scaled": x * scale, "total": tf.reduce_sum(x, axis=1)}

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="a"),
                                      tf.TensorSpec([None, 3], tf.float32, name="b")])
        def add(self, a: Any, b: Any) -> dict[str, Any]:
            return {"sum": a + b}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="s")])
        def echo(self, s: Any) -> dict[str, Any]:
            return {"same": tf.identity(s)}

    return Calculator()


def save_calculator(folder: Path, scale: float, only_default: bool = False) -> None:
    """The calculator as a SavedModel in ``folder`` (serving_default only, or all three)."""
    import tensorflow as tf

    module = _module(scale)
    signatures = {"serving_default": module.scale}
    if not only_default:
        signatures.update(add=module.add, echo=module.echo)
    tf.saved_model.save(module, str(folder), signatures=signatures)


def calculator_tflite(scale: float, only_default: bool = False) -> bytes:
    """The calculator converted by TFLiteConverter: its signatures are the model's own."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as saved:
        save_calculator(Path(saved), scale, only_default)
        return bytes(tf.lite.TFLiteConverter.from_saved_model(saved).convert())


def write_tflite(version_dir: Path, content: bytes) -> Path:
    version_dir.mkdir(parents=True, exist_ok=True)
    path = version_dir / "model.tflite"
    path.write_bytes(content)
    return path


def without_signatures(content: bytes) -> bytes:
    """The model with its own signatures removed (as old converters wrote models)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    model.signatureDefs = []
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


class _Raw(str):
    """A FlexBuffer string whose bytes are given as they are (a serialized proto is not UTF-8)."""

    data: bytes

    def __new__(cls, data: bytes) -> _Raw:
        text = super().__new__(cls, data.decode("latin-1"))
        text.data = data
        return text

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.data


def with_stored_signature_defs(content: bytes, definitions: dict[str, Any]) -> bytes:
    """The model with SignatureDefs in its ``signature_defs_metadata``, laid out as TF Serving's
    testdata tools (signature_def_utils.set_signature_defs) write them: a FlexBuffer map of key ->
    serialized SignatureDef."""
    from flatbuffers import flexbuffers

    builder = flexbuffers.Builder()
    with builder.Map():
        for key, definition in sorted(definitions.items()):
            builder.Key(key)
            builder.String(_Raw(definition.SerializeToString()))
    return with_metadata(content, "signature_defs_metadata", bytes(builder.Finish()))


def with_metadata(content: bytes, name: str, data: bytes) -> bytes:
    """The model with one more metadata entry: ``name`` -> a buffer holding ``data``."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    buffer = schema.BufferT()
    buffer.data = list(data) or None
    model.buffers.append(buffer)
    metadata = schema.MetadataT()
    metadata.name, metadata.buffer = name, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), metadata]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def interpreter(content: bytes) -> Any:
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tf.lite.Interpreter(model_content=content)


def run_signature(content: bytes, signature: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    """What tf.lite.Interpreter answers in this process: the reference for the server's answers."""
    return dict(interpreter(content).get_signature_runner(signature)(**inputs))
