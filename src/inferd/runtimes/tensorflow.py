"""TensorFlow SavedModels (TF Serving's layout: ``<version>/saved_model.pb`` + ``variables/``, or
``<version>/model.savedmodel/``): TF1 graphs (``SavedModelBuilder``, estimators) and TF2 exports
(Keras 3 ``model.export``, ``tf.saved_model.save``).

Loaded as TF Serving loads them: the ``serve`` MetaGraph into a session, each SignatureDef run by
feeding and fetching its tensor names. So the graph, not a Python-side signature check, decides
which shapes it takes (TF1's half_plus_two computes ``[1]`` for an ``[-1, 1]`` input, as under TF
Serving), and metadata is the SignatureDef as written (``x:0`` names, method names, unknown rank).
Every signature is served; ``serving_default`` (or the first) is the model's default.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from inferd.config import ModelConfig
from inferd.errors import ConfigError, InvalidInput
from inferd.modelconfig.backend_parameters import check_parameters, count
from inferd.runtimes.base import Arrays, LoadContext, Runtime, refuse_accelerators, refuse_torch_options, warm_up
from inferd.types import TensorSpec

DEFAULT_SIGNATURE = "serving_default"
INIT_OP_SIGNATURE = "__saved_model_init_op"  # TF2's initializer, not something to serve

log = logging.getLogger("inferd.runtimes.tensorflow")

_V2_BY_TF = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16",
    "float32": "FP32", "float64": "FP64", "bfloat16": "BF16", "string": "BYTES",
}


class _Bundle:
    """The loaded MetaGraph and its session, shared by every signature of one version."""

    def __init__(self, session: Any, meta_graph: Any, name: str) -> None:
        self.session = session
        self.signature_defs: dict[str, Any] = dict(meta_graph.signature_def)
        self.servable = servable_signatures(name, self.signature_defs)
        if not self.servable:
            raise ConfigError(f"model '{name}': the SavedModel has no signature inferd can serve")
        self.default = DEFAULT_SIGNATURE if DEFAULT_SIGNATURE in self.servable else self.servable[0]
        self._callables: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._lock = threading.Lock()
        self.users = 0  # runtimes (signatures) sharing the session: the last to unload closes it

    def runner(self, signature: str, feeds: tuple[str, ...], fetches: tuple[str, ...]) -> Any:
        """A session callable (cached) that feeds and fetches these tensor names."""
        key = (signature, feeds)
        found = self._callables.get(key)
        if found is None:
            from tensorflow.core.protobuf import config_pb2

            with self._lock:
                options = config_pb2.CallableOptions(feed=list(feeds), fetch=list(fetches))
                found = self._callables[key] = self.session._make_callable_from_options(options)
        return found

    def release(self) -> None:
        with self._lock:
            self.users -= 1
            if self.users == 0:
                self.session.close()


class TensorFlowRuntime(Runtime):
    """One signature of a loaded SavedModel. ``signature(name)`` gives a sibling for another one."""

    platform = "tensorflow_savedmodel"
    lenient_rank = True  # a tensor of another rank goes to the graph, which decides (TF Serving's rule)

    def __init__(self, bundle: _Bundle, signature: str, max_batch_size: int, name: str,
                 config: ModelConfig | None = None) -> None:
        import tensorflow as tf

        self._config = config or ModelConfig()
        self._errors = tf.errors
        self._bundle = bundle
        bundle.users += 1
        self._name = name
        self.signature_name = signature
        definition = bundle.signature_defs[signature]
        self.signature_def = definition.SerializeToString()
        self.inputs = _specs(name, signature, definition.inputs, max_batch_size)
        self.outputs = _specs(name, signature, definition.outputs, max_batch_size)
        self.max_batch_size = max_batch_size
        self._input_names = {key: info.name for key, info in definition.inputs.items()}
        self._output_keys = tuple(sorted(definition.outputs))
        self._fetches = tuple(definition.outputs[key].name for key in self._output_keys)

    def warmup(self) -> None:
        warm_up(self, self._config, self._name)

    @property
    def signature_names(self) -> list[str]:
        return self._bundle.servable

    def signature(self, name: str) -> TensorFlowRuntime:
        if name not in self.signature_names:
            raise InvalidInput(f"model '{self._name}' has no signature '{name}'; it has "
                               f"{', '.join(self.signature_names)}")
        return TensorFlowRuntime(self._bundle, name, self.max_batch_size, self._name)

    def other_signatures(self) -> dict[str, Runtime]:
        return {name: self.signature(name) for name in self.signature_names if name != self.signature_name}

    def infer(self, inputs: Arrays) -> Arrays:
        keys = tuple(sorted(inputs))
        run = self._bundle.runner(self.signature_name, tuple(self._input_names[k] for k in keys), self._fetches)
        try:
            results = run(*(_tf_ready(inputs[k]) for k in keys))
        except self._errors.InvalidArgumentError as exc:  # the graph refused the input
            raise InvalidInput(f"model '{self._name}' signature '{self.signature_name}': "
                               f"{exc.message.splitlines()[0]}") from None
        return {key: _to_numpy(value) for key, value in zip(self._output_keys, results, strict=True)}

    def unload(self) -> None:
        self._bundle.release()

    def describe(self) -> str:
        return f"{self.platform} signature {self.signature_name}"


def _tf_ready(array: np.ndarray) -> Any:
    if array.dtype.name == "bfloat16":
        import tensorflow as tf

        return array.view(np.uint16).view(tf.bfloat16.as_numpy_dtype)
    return array


def _to_numpy(value: Any) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.name == "bfloat16":
        from inferd.types import bfloat16

        return array.view(np.uint16).view(bfloat16())
    return array


def servable_signatures(name: str, definitions: dict[str, Any]) -> list[str]:
    """The signatures inferd serves: dense tensors of known dtypes (TF2's init op and sparse or
    composite signatures are skipped, with a log line)."""
    chosen = []
    for signature, definition in sorted(definitions.items()):
        if signature == INIT_OP_SIGNATURE:
            continue
        try:
            _specs(name, signature, definition.inputs, 0)
            _specs(name, signature, definition.outputs, 0)
        except ConfigError as exc:
            log.warning("model %s: signature %s is not served: %s", name, signature, exc.message)
            continue
        chosen.append(signature)
    return chosen


def _specs(model: str, signature: str, infos: Any, max_batch_size: int) -> tuple[TensorSpec, ...]:
    import tensorflow as tf

    specs = []
    for key in sorted(infos):
        info = infos[key]
        if info.WhichOneof("encoding") != "name":
            raise ConfigError(f"tensor '{key}' is {info.WhichOneof('encoding')}, which inferd cannot serve")
        dtype = tf.dtypes.as_dtype(info.dtype).name
        datatype = _V2_BY_TF.get(dtype)
        if datatype is None:
            raise ConfigError(f"tensor '{key}' has dtype {dtype}, which inferd cannot serve")
        shape_proto = info.tensor_shape
        if shape_proto.unknown_rank:
            specs.append(TensorSpec(key, datatype, (-1,), rank_known=False))
            continue
        shape = [int(d.size) if d.size >= 0 else -1 for d in shape_proto.dim]
        if max_batch_size > 0 and shape:
            shape[0] = -1
        specs.append(TensorSpec(key, datatype, tuple(shape)))
    return tuple(specs)


# What importing TensorFlow 2.19+ prints through absl before TF_CPP_MIN_LOG_LEVEL applies
# (tensorflow/tensorflow#100442): absl INFO/WARNING lines and CPU-feature notes
_IMPORT_NOISE = re.compile(rb"WARNING: All log messages before absl::InitializeLog"
                           rb"|[IW]\d{4} [\d:.]+ +\d+ [\w./-]+:\d+\] |To enable the following instructions")


@contextlib.contextmanager
def _stderr_without(noise: re.Pattern[bytes]) -> Iterator[None]:
    """Pass fd 2 through a filter while the block runs: other threads' lines still get through."""
    sys.stderr.flush()
    saved = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)

    def forward() -> None:
        with os.fdopen(read, "rb") as pipe:
            for line in pipe:
                if not noise.match(line):
                    os.write(saved, line)

    thread = threading.Thread(target=forward, name="inferd-tf-import-log", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer closes: the thread drains it and ends
        thread.join(2)  # (a child started meanwhile keeps it open: the thread then forwards its lines)


def _import_tensorflow() -> None:
    if "tensorflow" in sys.modules or log.isEnabledFor(logging.DEBUG):
        return
    with _stderr_without(_IMPORT_NOISE):
        import tensorflow  # noqa: F401


def load(context: LoadContext) -> TensorFlowRuntime:
    _import_tensorflow()
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2

    refuse_torch_options(context.config, context.name, "TensorFlow")
    refuse_accelerators(context.config, context.name, "TensorFlow", (0, -1))  # Triton's 1 turns XLA on
    if context.device.startswith("cuda") and not tf.config.list_physical_devices("GPU"):
        raise ConfigError(f"model '{context.name}' asks for {context.device}, but TensorFlow sees no GPU")
    parameters = context.config.parameters
    check_parameters("tensorflow", parameters, f"model '{context.name}'")
    device = "/GPU:" + context.device.split(":")[1] if context.device.startswith("cuda") else "/CPU:0"
    config = config_pb2.ConfigProto(
        allow_soft_placement=True,
        intra_op_parallelism_threads=count(parameters, "TF_NUM_INTRA_THREADS") or context.config.intra_op_threads,
        inter_op_parallelism_threads=count(parameters, "TF_NUM_INTER_THREADS"))
    tag = parameters.get("TF_GRAPH_TAG", "serve")  # Triton's tensorflow backend's parameters
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph, config=config)
    try:
        with graph.as_default(), graph.device(device):
            meta_graph = tf.compat.v1.saved_model.loader.load(session, [tag], str(context.artifact),
                                                               clear_devices=True)
    except (RuntimeError, ValueError, OSError, tf.errors.OpError) as exc:
        session.close()
        raise ConfigError(f"SavedModel {context.artifact} did not load: {str(exc).splitlines()[0]}") from None
    try:
        bundle = _Bundle(session, meta_graph, context.name)
        default = _default_signature(bundle, parameters.get("TF_SIGNATURE_DEF"), context.name)
    except ConfigError:
        session.close()
        raise
    return TensorFlowRuntime(bundle, default, context.config.max_batch_size, context.name, context.config)


def _default_signature(bundle: _Bundle, asked: str | None, name: str) -> str:
    """config.pbtxt's TF_SIGNATURE_DEF, else serving_default (or the first): what a request that
    names no signature gets."""
    if asked is None:
        return bundle.default
    if asked not in bundle.servable:
        raise ConfigError(f"model '{name}': parameter TF_SIGNATURE_DEF is '{asked}', but the SavedModel's "
                          f"signatures are {bundle.servable}")
    return asked
