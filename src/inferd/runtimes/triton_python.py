"""Triton Python-backend models: ``model.py`` defines ``class TritonPythonModel`` with
``initialize(args)``, ``execute(requests)`` and ``finalize()``, written against
``triton_python_backend_utils`` (inferd's ``triton_pb_utils`` through the import shim).

Each execution is one request holding the whole (possibly dynamically batched) input, so a model
that handles requests one by one sees the batch as one request with a larger dim 0. A decoupled
model's ``execute`` runs on a thread of its own and answers through the request's response sender;
its responses stream out as they are sent, until the final flag.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Generator
from typing import Any

from inferd.config import ServedConfig
from inferd.modelconfig import model_config_json
from inferd.runtimes import triton_pb_utils as pb_utils
from inferd.runtimes.base import (
    SEQUENCE_INPUT,
    Arrays,
    LoadContext,
    Runtime,
    conform_outputs,
    require_specs,
    unpack_sequence,
)
from inferd.types import TensorSpec


class TritonPythonRuntime(Runtime):
    platform = "python"
    takes_sequence = True  # a sequence model's requests show their correlation_id() and flags()

    def __init__(self, model: Any, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                 max_batch_size: int, name: str) -> None:
        self._model = model
        self._name = name
        self.inputs = inputs
        self.outputs = outputs
        self.max_batch_size = max_batch_size

    def infer(self, inputs: Arrays) -> Arrays:
        correlation_id: int | str = 0
        flags = 0
        if SEQUENCE_INPUT in inputs:
            inputs = dict(inputs)
            correlation_id, flags = unpack_sequence(inputs.pop(SEQUENCE_INPUT))
        request = pb_utils.InferenceRequest([pb_utils.Tensor(name, array) for name, array in inputs.items()],
                                            [spec.name for spec in self.outputs], correlation_id=correlation_id,
                                            flags=flags)
        responses = self._model.execute([request])
        if not isinstance(responses, list | tuple) or len(responses) != 1:
            count = len(responses) if isinstance(responses, list | tuple) else type(responses).__name__
            raise RuntimeError(f"TritonPythonModel.execute must return one InferenceResponse per request "
                               f"(1), got {count}")
        response = responses[0]
        if response.has_error():
            error = response.error()
            raise RuntimeError(error.message() if error is not None else "the model answered an error")
        return conform_outputs({t.name(): t.as_numpy() for t in response.output_tensors()}, self.outputs,
                               self._name)

    def infer_stream(self, inputs: Arrays, stop: threading.Event) -> Generator[Arrays, None, None]:
        if not self.decoupled:
            yield self.infer(inputs)
            return
        sent: queue.Queue[tuple[pb_utils.InferenceResponse | None, int] | BaseException] = queue.Queue()
        sender = pb_utils.InferenceResponseSender(lambda response, flags: sent.put((response, flags)), stop.is_set)
        request = pb_utils.InferenceRequest([pb_utils.Tensor(name, array) for name, array in inputs.items()],
                                            [spec.name for spec in self.outputs], sender=sender,
                                            cancelled=stop.is_set)

        def execute() -> None:
            try:
                self._model.execute([request])
            except BaseException as exc:  # handed to the reader, which raises it
                sent.put(exc)

        threading.Thread(target=execute, name=f"inferd-{self._name}-execute", daemon=True).start()
        while not stop.is_set():
            try:
                item = sent.get(timeout=0.05)
            except queue.Empty:
                continue
            if isinstance(item, BaseException):
                raise RuntimeError(f"TritonPythonModel.execute failed: {type(item).__name__}: {item}")
            response, flags = item
            if response is not None:
                if response.has_error():
                    error = response.error()
                    raise RuntimeError(error.message() if error is not None else "the model answered an error")
                yield conform_outputs({t.name(): t.as_numpy() for t in response.output_tensors()}, self.outputs,
                                      self._name)
            if flags & pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL:
                return

    def unload(self) -> None:
        if callable(getattr(self._model, "finalize", None)):
            self._model.finalize()


def load(model_class: type, context: LoadContext) -> TritonPythonRuntime:
    """Build the model and call ``initialize`` with the arguments Triton passes (strings)."""
    inputs, outputs = require_specs(context, "Triton Python model (model.py)")
    config = context.config
    served = ServedConfig(name=context.name, platform="", backend="python", config=config)
    args = {
        "model_config": json.dumps(model_config_json(served)),
        "model_instance_kind": "GPU" if context.device.startswith("cuda") else "CPU",
        "model_instance_name": f"{context.name}_0",
        "model_instance_device_id": context.device.partition(":")[2] or "0",
        "model_repository": str(context.artifact.parent.parent),
        "model_version": context.version,
        "model_name": context.name,
    }
    model = model_class()
    if callable(getattr(model, "initialize", None)):
        model.initialize(args)
    runtime = TritonPythonRuntime(model, inputs, outputs, config.max_batch_size, context.name)
    runtime.decoupled = config.decoupled
    return runtime
