"""What a Triton Python-backend model imports as ``triton_python_backend_utils`` (``pb_utils``),
served by inferd: tensors, requests and responses, errors, and the configuration helpers.

``install_triton_shim`` makes ``import triton_python_backend_utils as pb_utils`` resolve to this
module; requests here hold numpy arrays on the CPU (``is_cpu()`` is true, DLPack works both ways).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import json
import logging
import re
import struct
import sys
import weakref
from collections.abc import Callable, Generator, Iterator
from typing import Any

import numpy as np

from inferd.errors import (
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    InferdError,
    InvalidInput,
    NotFound,
    Unavailable,
    Unimplemented,
    UnknownError,
)
from inferd.runtimes import model_calls
from inferd.types import (
    InferRequest,
    InferResponse,
    MetricUpdate,
    RequestedOutput,
    numpy_dtype,
    override_file_path,
    v2_datatype,
)
from inferd.types import Tensor as InferTensor

MODULE_NAME = "triton_python_backend_utils"
TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2
TRITONSERVER_MEMORY_GPU, TRITONSERVER_MEMORY_CPU = 0, 1  # python_backend's PreferredMemory::MemoryType (2: default)
TRITON_STRING_TO_NUMPY = {"TYPE_BOOL": bool, "TYPE_UINT8": np.uint8, "TYPE_UINT16": np.uint16,
                          "TYPE_UINT32": np.uint32, "TYPE_UINT64": np.uint64, "TYPE_INT8": np.int8,
                          "TYPE_INT16": np.int16, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64,
                          "TYPE_FP16": np.float16, "TYPE_FP32": np.float32, "TYPE_FP64": np.float64,
                          "TYPE_STRING": np.object_}

_log = logging.getLogger("inferd.python_backend")

# Triton's numeric data types (model_config.proto's DataType) in order; index = the enum value
_TYPES = ("INVALID", "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
          "FP16", "FP32", "FP64", "STRING", "BF16")


def install_triton_shim() -> None:
    """``import triton_python_backend_utils`` gives this module (unless a real one is loaded)."""
    sys.modules.setdefault(MODULE_NAME, sys.modules[__name__])


class TritonError(Exception):
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message: str, code: int = 1) -> None:  # INTERNAL unless told, as Triton's
        super().__init__(message)
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class TritonModelException(Exception):  # Triton's name
    def message(self) -> str:
        return str(self)


class _Capsule:
    """Lets numpy take a bare DLPack capsule (what torch.utils.dlpack.to_dlpack returns)."""

    def __init__(self, capsule: Any) -> None:
        self._capsule = capsule

    def __dlpack__(self, stream: Any = None, **kwargs: Any) -> Any:
        return self._capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU


class Tensor:
    def __init__(self, name: str, data: Any) -> None:
        if not isinstance(name, str):  # as Triton's bindings refuse the argument's type
            raise TypeError(f"Tensor(): name takes a str, got {type(name).__name__}")
        if data is None:
            raise TypeError("Tensor(): data takes a numpy array (or what numpy makes one of), got None")
        if name == "":
            raise TritonModelException("Tensor name cannot be an empty string.")  # Triton's words
        self._name = name
        array = data if isinstance(data, np.ndarray) else np.asarray(data)
        if array.dtype.kind in "US":
            array = np.vectorize(lambda v: v.encode() if isinstance(v, str) else bytes(v), otypes=[object])(array)
        # C-ordered, as Triton's holds it (ascontiguousarray alone would make a 0-d array 1-d)
        self._data = array if array.flags.c_contiguous else np.ascontiguousarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._data

    def is_cpu(self) -> bool:
        return True

    def shape(self) -> list[int]:
        return list(self._data.shape)

    def triton_dtype(self) -> int:
        """The TRITONSERVER_DataType value (TYPE_FP32: 11, BYTES: 13), as numpy_to_triton_type says."""
        return numpy_to_triton_type(self._data.dtype)

    def to_dlpack(self) -> Any:
        if self._data.dtype == np.object_:
            raise TritonModelException("DLPack does not have support for string tensors.")  # Triton's words
        # DLPack (before 1.0) cannot mark an array read-only: a read-only input crosses as a copy
        array = self._data if self._data.flags.writeable else self._data.copy()
        return array.__dlpack__()

    def __dlpack__(self, stream: Any = None, **kwargs: Any) -> Any:
        """The array API's side of DLPack: ``torch.from_dlpack(tensor)`` takes it as Triton's (what
        newer consumers add, such as ``max_version``, is answered with a DLPack 0.x capsule)."""
        return self.to_dlpack()

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU, device 0: a request's tensors here are in CPU memory

    @classmethod
    def from_dlpack(cls, name: str, capsule: Any) -> Tensor:
        """A tensor from a DLPack capsule or an object with ``__dlpack__``; CPU memory only: this
        server has no GPU memory to hold it (Triton built without GPU support says the same)."""
        if name == "":
            raise TritonModelException("Tensor name cannot be an empty string.")
        bare = type(capsule).__name__ == "PyCapsule"
        if not bare and not (hasattr(capsule, "__dlpack__") and hasattr(capsule, "__dlpack_device__")):
            raise TritonModelException("Provided tensor is not supported. Tensor must be a DLPack capsule or have "
                                       "`__dlpack__` and `__dlpack_device__` attributes")
        if not bare:
            device = int(capsule.__dlpack_device__()[0])
            if device == _KDL_CUDA:
                raise TritonModelException("DLPack capsule passed pointer to memory allocated on GPU device, "
                                           "when GPU is not available")
            if device not in (_KDL_CPU, _KDL_CUDA_HOST):
                raise TritonModelException(f"DLDevice type {device} is not support by Python backend.")
        try:
            array = np.from_dlpack(_Capsule(capsule) if bare else capsule)
        except (BufferError, RuntimeError) as exc:  # a bare capsule of GPU memory (numpy reads CPU memory only)
            raise TritonModelException(f"DLPack capsule passed pointer to memory that is not CPU memory ({exc}), "
                                       "when GPU is not available") from None
        return cls(name, array)


_KDL_CPU, _KDL_CUDA, _KDL_CUDA_HOST = 1, 2, 3  # DLPack's DLDeviceType values


class PreferredMemory:
    """Where a BLS call would like its outputs (Triton's): a CPU-only server puts them in CPU
    memory whatever is preferred, as Triton built without GPU support does."""

    def __init__(self, preferred_memory_type: int, preferred_device_id: int = 0) -> None:
        if preferred_memory_type not in (TRITONSERVER_MEMORY_GPU, TRITONSERVER_MEMORY_CPU, _MEMORY_DEFAULT):
            raise TypeError(f"PreferredMemory() takes TRITONSERVER_MEMORY_GPU or TRITONSERVER_MEMORY_CPU, "
                            f"got {preferred_memory_type!r}")
        if preferred_device_id is None:
            raise TypeError("PreferredMemory() needs a preferred_device_id (not None)")
        self.preferred_memory_type = preferred_memory_type
        self.preferred_device_id = preferred_device_id


_MEMORY_DEFAULT = 2


class InferenceTrace:
    """A request's trace as Triton hands it to a model; ``get_context()`` is the OpenTelemetry
    context to pass on, or None: inferd traces no request into a model, so it is always None."""

    def get_context(self) -> str | None:
        return None


_REQUIRED: Any = object()  # an argument Triton's InferenceRequest gives no default
_NO_OUTPUTS: Any = ()  # InferenceResponse's outputs left out (None is refused, as Triton's)
_REQUEST_ARGUMENTS = ("request_id, correlation_id, inputs, requested_output_names, model_name, model_version, "
                      "flags, timeout, preferred_memory, trace and parameters")


class InferenceRequest:
    """One execution's request as the model's ``execute`` sees it. A model may build one itself
    (``InferenceRequest(model_name=..., inputs=..., requested_output_names=...)``) and ``exec`` it to
    call another model the server serves (Triton's BLS): it runs as any client's request to that
    model would (batching, queue, statistics), and its errors come back in the response."""

    def __init__(self, request_id: str = "", correlation_id: int | str = 0, inputs: list[Tensor] = _REQUIRED,
                 requested_output_names: list[str] = _REQUIRED, model_name: str | bytes = _REQUIRED,
                 model_version: int = -1, flags: int = 0, timeout: int = 0, preferred_memory: Any = None,
                 trace: Any = None, parameters: dict[str, Any] | str | None = None, *,
                 sender: InferenceResponseSender | None = None, cancelled: Callable[[], bool] | None = None,
                 **unknown: Any) -> None:  # outputs: numpy, CPU
        # Triton's positional order and defaults (python_backend's pb_stub.cc at f9088ff6): inputs,
        # requested_output_names and model_name have none, and they, request_id, correlation_id and
        # the numbers may not be None. A BLS request's target (str, or bytes read from a BYTES input),
        # its version (-1: the server's choice) and deadline (microseconds, 0: none). No priority:
        # Triton's takes none, so a BLS request joins its target's default level. ``sender`` and
        # ``cancelled`` are the server's, for the requests ``execute`` is given.
        if unknown:
            raise TypeError(f"InferenceRequest() got unexpected keyword arguments {sorted(unknown)}: Triton's "
                            f"takes {_REQUEST_ARGUMENTS} (no priority: a BLS request runs at its target's default "
                            "priority level)")
        given = {"request_id": request_id, "correlation_id": correlation_id, "inputs": inputs,
                 "requested_output_names": requested_output_names, "model_name": model_name,
                 "model_version": model_version, "flags": flags, "timeout": timeout}
        missing = [name for name, value in given.items() if value is _REQUIRED or value is None]
        if missing:
            raise TypeError(f"InferenceRequest() needs {', '.join(missing)} (not None): Triton's takes "
                            f"{_REQUEST_ARGUMENTS}, the first two and the last five with defaults")
        if not isinstance(correlation_id, int | str):
            raise TritonModelException("Correlation ID must be integer or string")  # Triton's words
        _check_arguments(preferred_memory, trace, request_id, model_name, requested_output_names)
        _check_lists(inputs, requested_output_names)
        if sender is None:  # built by the model: its parameters are Triton's kinds (the client's may be any)
            parameters = _checked_parameters(parameters) if not isinstance(parameters, str) else parameters
        self._model_name = model_name.decode() if isinstance(model_name, bytes) else str(model_name)
        self._model_version = model_version
        self._timeout = timeout
        self._trace = trace if trace is not None else InferenceTrace()
        self._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL
        self._sender = sender
        self.sender_taken = False  # execute asked for the response sender (it may answer after returning)
        self._correlation_id = correlation_id
        self._flags = flags
        self._cancelled = cancelled
        self._inputs = inputs
        self._outputs = requested_output_names
        self._id = request_id
        self._parameters = json.loads(parameters) if isinstance(parameters, str) else parameters or {}

    def exec(self, decoupled: bool = False) -> Any:
        """The target model's response; with ``decoupled``, an iterator of its responses as Triton's:
        it ends at the one sent with the final flag, or at an empty one when the flag came alone.
        Sent at once either way: a decoupled call returns once its first response came, as Triton's
        does (python_backend's InferPayload settles the call with its first response).
        A failure is a response whose ``error()`` says why."""
        request = self._call()
        if decoupled:
            return ResponseIterator(model_calls.current().infer_stream(request))
        try:
            answer = model_calls.current().infer(request)
        except InferdError as exc:
            return _failed(exc)
        return _response(answer)

    async def async_exec(self, decoupled: bool = False) -> Any:
        """``exec`` awaited: an ``async def execute`` may await many at once. A call holds no thread
        while it waits, so calls to models that themselves call others never wait for one another
        (a decoupled call waits for its first response on a thread of the loop's executor, as
        Triton's does; its iterator waits as it is read)."""
        if decoupled:
            return await asyncio.to_thread(self.exec, True)
        request = self._call()
        try:
            answer = await asyncio.wrap_future(model_calls.current().start_infer(request))
        except InferdError as exc:
            return _failed(exc)
        return _response(answer)

    def _call(self) -> InferRequest:
        if not self._model_name:
            raise TritonModelException("this request has no model to call: build one with "
                                       "pb_utils.InferenceRequest(model_name=..., inputs=..., "
                                       "requested_output_names=...)")
        parameters = dict(self._parameters)
        if self._correlation_id not in (0, "") or self._flags:
            parameters.update(sequence_id=self._correlation_id,
                              sequence_start=bool(self._flags & TRITONSERVER_REQUEST_FLAG_SEQUENCE_START),
                              sequence_end=bool(self._flags & TRITONSERVER_REQUEST_FLAG_SEQUENCE_END))
        inputs = []
        for tensor in self._inputs:
            array = tensor.as_numpy()
            try:
                datatype = v2_datatype(array.dtype)
            except KeyError:
                raise TritonModelException(f"input '{tensor.name()}' to model '{self._model_name}' has dtype "
                                           f"{array.dtype}, which no Triton datatype holds") from None
            inputs.append(InferTensor(tensor.name(), datatype, array))
        # no output named: every output, as Triton's core answers a request that asks for none
        outputs = [RequestedOutput(name) for name in self._outputs] or None
        return InferRequest(self._model_name, str(self._model_version) if self._model_version >= 0 else None,
                            inputs, id=self._id or None, outputs=outputs, parameters=parameters,
                            timeout_us=self._timeout or None, protocol="bls")

    def inputs(self) -> list[Tensor]:
        return list(self._inputs)

    def requested_output_names(self) -> list[str]:
        return list(self._outputs)

    def request_id(self) -> str:
        return self._id

    def correlation_id(self) -> int | str:
        """The sequence's id (an integer, or a string when the client sent one); 0: none."""
        return self._correlation_id

    def flags(self) -> int:
        """TRITONSERVER_REQUEST_FLAG_SEQUENCE_START | _END for a sequence's first and last request."""
        return self._flags

    def set_flags(self, flags: int) -> None:
        """The flags a BLS call sends (as Triton's, it changes only this object)."""
        self._flags = flags

    def timeout(self) -> int:
        """The request's timeout in microseconds (0: none): the client's, or the one a BLS call was given."""
        return self._timeout

    def trace(self) -> InferenceTrace:
        return self._trace

    def set_release_flags(self, flags: int) -> None:
        """TRITONSERVER_REQUEST_RELEASE_ALL (the default) releases the request with its response.
        RESCHEDULE is refused: Triton reschedules only for ``sequence_batching { iterative_sequence:
        true }``, which inferd does not serve."""
        if flags == TRITONSERVER_REQUEST_RELEASE_RESCHEDULE:
            raise TritonModelException("set_release_flags(TRITONSERVER_REQUEST_RELEASE_RESCHEDULE): request "
                                       "rescheduling needs sequence_batching { iterative_sequence: true }, "
                                       "which inferd does not serve")
        if flags != TRITONSERVER_REQUEST_RELEASE_ALL:
            raise TritonModelException(f"set_release_flags({flags!r}): the release flags are "
                                       "TRITONSERVER_REQUEST_RELEASE_ALL or _RESCHEDULE")
        self._release_flags = flags

    def parameters(self) -> str:
        return json.dumps(self._parameters)

    def is_cancelled(self) -> bool:
        return self._cancelled is not None and self._cancelled()

    def get_response_sender(self) -> InferenceResponseSender:
        """The way back to this request's client; a request the model built has none to send to,
        and its sender's ``send`` says so, as Triton's does."""
        if self._sender is None:
            return InferenceResponseSender(_unsendable, lambda: False)
        self.sender_taken = True
        return self._sender


def _unsendable(response: InferenceResponse | None, flags: int) -> None:
    raise TritonModelException("Unable to send response. Response sender has no reference to the decoupled "
                               "state of the model.")  # Triton's words: a request the model built has no client


def _check_arguments(preferred_memory: Any, trace: Any, request_id: str, model_name: Any,
                     requested_output_names: list[str]) -> None:
    """What Triton's InferenceRequest refuses of the arguments beyond the required ones."""
    if preferred_memory is not None and not isinstance(preferred_memory, PreferredMemory):
        raise TypeError(f"InferenceRequest(): preferred_memory takes a pb_utils.PreferredMemory, "
                        f"got {type(preferred_memory).__name__}")
    if trace is not None and not isinstance(trace, InferenceTrace):
        raise TypeError(f"InferenceRequest(): trace takes the InferenceTrace of a request execute() was given, "
                        f"got {type(trace).__name__}")
    if any(name == "" for name in requested_output_names):
        raise TritonModelException(f"Requested output name for request with id '{request_id}' and model name "
                                   f"'{model_name}' should not be empty.")


def _check_lists(inputs: Any, requested_output_names: Any) -> None:
    """Triton's refusals of what InferenceRequest's lists hold: a non-tensor input (its stub's
    TritonModelException), a requested output name that is not a str (its bindings' TypeError)."""
    if not isinstance(inputs, list | tuple):
        raise TypeError(f"InferenceRequest(): inputs takes a list of pb_utils.Tensor, got {type(inputs).__name__}")
    for index, tensor in enumerate(inputs):
        if not isinstance(tensor, Tensor):
            raise TritonModelException(f"InferenceRequest(): inputs[{index}] is {type(tensor).__name__}, "
                                       "not a pb_utils.Tensor")
    if not isinstance(requested_output_names, list | tuple) or not all(
            isinstance(name, str) for name in requested_output_names):
        raise TypeError(f"InferenceRequest(): requested_output_names takes a list of str, got "
                        f"{requested_output_names!r}")


def _checked_parameters(parameters: Any) -> dict[str, Any]:
    """A request's or response's parameters as Triton takes them: a dict of str to bool, int or str."""
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise TritonModelException(f"Expect dict, got {type(parameters)}")
    for key, value in parameters.items():
        if not isinstance(key, str):
            raise TritonModelException(f"Expect parameters keys to have type str, found type {type(key)}")
        if not isinstance(value, bool | int | str):
            raise TritonModelException(f"Expect parameters values to have type bool/int/str, found type "
                                       f"{type(value)}")
    return parameters


class InferenceResponseSender:
    """A request's way back: ``send`` each response as it is ready, the last one (or none) with
    ``flags=TRITONSERVER_RESPONSE_COMPLETE_FINAL``. A model that is not decoupled may send one
    response this way (and return None from ``execute``), as Triton allows."""

    def __init__(self, sink: Callable[[InferenceResponse | None, int], None],
                 cancelled: Callable[[], bool], decoupled: bool = True) -> None:
        self._sink = sink
        self._cancelled = cancelled
        self._decoupled = decoupled
        self._closed = False
        self.sent = 0

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if flags not in (0, TRITONSERVER_RESPONSE_COMPLETE_FINAL):
            raise TritonModelException("Unable to send response. Unsupported flag provided.")  # Triton's words
        if self._closed:
            raise TritonModelException("Unable to send response. Response sender has been closed.")  # Triton's
        if response is None and not flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            raise TritonModelException("send() needs a response or the final flag")
        if response is not None and not isinstance(response, InferenceResponse):
            raise TritonModelException(f"send() takes an InferenceResponse, not {type(response).__name__}")
        if not self._decoupled and response is not None and self.sent:  # Triton's words, then why
            raise TritonModelException("Unable to send response. Non-decoupled model cannot send more than one "
                                       "response. (model_transaction_policy { decoupled: true } sends more)")
        if not self._decoupled and response is None and not self.sent:
            raise TritonModelException("Unable to send response. Non-decoupled model cannot send complete final "
                                       "before sending a response.")
        self.sent += response is not None
        if flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            self._closed = True
        self._sink(response, flags)

    def is_cancelled(self) -> bool:
        return self._cancelled()

    @property
    def closed(self) -> bool:
        """The final flag was sent."""
        return self._closed


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] = _NO_OUTPUTS, error: TritonError | None = None,
                 parameters: dict[str, Any] | None = None) -> None:
        # Triton's: left out, no outputs (an error response); None, or anything but tensors, refused
        if not isinstance(output_tensors, list | tuple):
            raise TypeError(f"InferenceResponse(): output_tensors takes a list of pb_utils.Tensor, got "
                            f"{type(output_tensors).__name__}")
        for index, tensor in enumerate(output_tensors):
            if not isinstance(tensor, Tensor):
                raise TritonModelException(f"InferenceResponse(): output_tensors[{index}] is "
                                           f"{type(tensor).__name__}, not a pb_utils.Tensor")
        self._outputs = list(output_tensors)
        self._error = error
        self._parameters = json.dumps(_checked_parameters(parameters))

    def parameters(self) -> str:
        """The response's parameters as JSON (Triton's); the client gets them with the response."""
        return self._parameters

    def output_tensors(self) -> list[Tensor]:
        return list(self._outputs)

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


class ResponseIterator:
    """A decoupled BLS call's responses as they come; ``cancel()`` stops the target model's stream."""

    def __init__(self, answers: Generator[InferResponse, None, None]) -> None:
        self._answers = answers
        self._done = False
        self._final = False  # the last response carried the final flag (any but a decoupled target's separate flag)
        self._first = self._read()  # the request goes now, and the call waits for its first response

    def __iter__(self) -> ResponseIterator:
        return self

    def __next__(self) -> InferenceResponse:
        response = self._first if self._first is not None else self._read()
        self._first = None
        if response is None:
            raise StopIteration
        return response

    def _read(self) -> InferenceResponse | None:
        """The next response; None once the stream ended."""
        if self._done:
            return None
        try:
            answer = next(self._answers)
        except StopIteration:
            self._done = True
            if self._final:
                return None
            return InferenceResponse()  # the final flag's response, sent on its own: Triton's holds no outputs
        except InferdError as exc:
            self._done = True
            return _failed(exc)
        self._final = answer.final
        if isinstance(answer.error, InferdError):  # an error response: one of the stream's, which goes on
            return _failed(answer.error)
        return _response(answer)

    def cancel(self) -> None:
        self._done = True
        self._first = None
        self._answers.close()


def _response(answer: InferResponse) -> InferenceResponse:
    return InferenceResponse([Tensor(t.name, t.data) for t in answer.outputs], parameters=answer.parameters or None)


def _failed(error: InferdError) -> InferenceResponse:
    """The response a BLS call that failed gets: the error a client of the target would get."""
    return InferenceResponse(error=TritonError(error.message, _code_of(error)))


def _code_of(error: InferdError) -> int:
    """The TritonError code a BLS caller sees for the error a client of the target would get (a
    request past its timeout is UNAVAILABLE in Triton: "Request timeout expired")."""
    for kind, code in ((InvalidInput, TritonError.INVALID_ARG), (NotFound, TritonError.NOT_FOUND),
                       (Unavailable, TritonError.UNAVAILABLE), (DeadlineExceeded, TritonError.UNAVAILABLE),
                       (AlreadyExists, TritonError.ALREADY_EXISTS), (Unimplemented, TritonError.UNSUPPORTED),
                       (UnknownError, TritonError.UNKNOWN), (Cancelled, TritonError.CANCELLED)):
        if isinstance(error, kind):
            return code
    return TritonError.INTERNAL


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    """Whether the server serves that model (version) now (Triton's model loading API)."""
    if model_version:
        try:
            number = int(model_version)
        except ValueError as exc:
            raise TritonModelException(f"failed to get model version from specified version string "
                                       f"'{model_version}' (details: {exc}), version should be an integral "
                                       "value > 0") from None
        if number < 0:
            raise TritonModelException(f"failed to get model version from specified version string "
                                       f"'{model_version}', version should be an integral value > 0")
    return model_calls.current().is_model_ready(model_name, model_version or None)


def load_model(model_name: str, config: str = "", files: dict[str, bytes] | None = None) -> None:
    """Load (or reload) a model the repository holds, ``config`` (JSON) replacing keys of its
    configuration; or, with ``files`` ({"file:1/model.py": content}) and ``config``, the model
    folder they make. Needs --model-control explicit, as Triton's."""
    folder = _override_files(model_name, config, files)
    try:
        model_calls.current().load_model(model_name, config or None, folder)
    except InferdError as exc:
        raise TritonModelException(exc.message) from None


def _override_files(model_name: str, config: str, files: Any) -> dict[str, bytes] | None:
    """``load_model``'s files as the folder they make (relative path -> content), checked as a
    client's load request's are."""
    if files is None:
        return None
    if not isinstance(files, dict):  # Triton's words
        raise TritonModelException(f"failed to load model '{model_name}', files should be a dictionary of file "
                                   "paths and file contents")
    if files and not config:
        raise TritonModelException(f"failed to load model '{model_name}': override files need config, the "
                                   "model configuration of the folder they make")
    folder = {}
    for key, content in files.items():
        path = override_file_path(key) if isinstance(key, str) else None
        if path is None:
            raise TritonModelException(f"failed to load model '{model_name}': override file {key!r} must be "
                                       "file:<relative path> inside the model folder (e.g. file:1/model.py)")
        if not isinstance(content, bytes):
            raise TritonModelException(f"failed to load model '{model_name}': override file {key!r} must be "
                                       f"bytes, got {type(content).__name__}")
        folder[path] = content
    return folder


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    """Unload a model; needs --model-control explicit, as Triton's."""
    try:
        model_calls.current().unload_model(model_name, unload_dependents)
    except InferdError as exc:
        raise TritonModelException(exc.message) from None


class LogLevel(enum.IntEnum):
    """Triton's Logger.LogLevel (also Logger.INFO, ... as Triton exports them)."""

    INFO, WARNING, ERROR, VERBOSE = range(4)


class Logger:
    LogLevel = LogLevel
    INFO, WARNING, ERROR, VERBOSE = LogLevel.INFO, LogLevel.WARNING, LogLevel.ERROR, LogLevel.VERBOSE

    @staticmethod
    def log_info(message: str) -> None:
        _log.info(_message(message))

    @staticmethod
    def log_warn(message: str) -> None:
        _log.warning(_message(message))

    @staticmethod
    def log_error(message: str) -> None:
        _log.error(_message(message))

    @staticmethod
    def log_verbose(message: str) -> None:
        _log.debug(_message(message))

    @staticmethod
    def log(message: str, level: int = LogLevel.INFO) -> None:
        """At ``level`` (Logger.INFO, WARNING, ERROR or VERBOSE; VERBOSE is the log's debug level);
        a plain int is refused, as Triton's enum is no int."""
        if not isinstance(level, LogLevel):
            raise TypeError(f"Logger.log(): level is Logger.INFO, WARNING, ERROR or VERBOSE, got {level!r}")
        _log.log(_LEVELS[level], _message(message))


def _message(message: Any) -> str:
    """A log message: a str, as Triton's Logger takes (None is a TypeError there too)."""
    if not isinstance(message, str):
        raise TypeError(f"Logger: the message takes a str, got {type(message).__name__}")
    return message


_LEVELS: dict[int, int] = {LogLevel.INFO: logging.INFO, LogLevel.WARNING: logging.WARNING,
                           LogLevel.ERROR: logging.ERROR, LogLevel.VERBOSE: logging.DEBUG}


class _Metric:
    """One labelled series of a :class:`MetricFamily`. Each change goes to the server, which adds up
    the model's instances and shows the series on /metrics; ``value()`` reads this instance's own."""

    _count: list[float]  # shared by this instance's Metric objects of the same family and labels

    def __init__(self, family: MetricFamily, labels: tuple[tuple[str, str], ...], buckets: tuple[float, ...]) -> None:
        self._family = family
        self._labels = labels
        self._buckets = buckets
        # the instance holds the series until it unloads: once, however many Metric objects name it;
        # they are one series, as Triton's, so each reads what any of them counted
        made, key = _made_here.get(), (family._name, labels)
        held = made is not None and key not in made
        self._count = made[key]._count if made is not None and not held else [0.0]
        if made is not None and held:
            made[key] = self
        self._publish("hold" if held else "create", 0.0)

    def increment(self, value: float) -> None:
        kind = self._family._kind
        if kind == MetricFamily.COUNTER and value < 0:
            raise TritonModelException(f"a counter only goes up; increment({value})")
        if kind == MetricFamily.HISTOGRAM:
            raise TritonModelException("a histogram takes observe(value), not increment")
        self._count[0] += value
        self._publish("increment", value)

    def set(self, value: float) -> None:
        if self._family._kind != MetricFamily.GAUGE:
            raise TritonModelException("only a gauge is set")
        self._count[0] = value
        self._publish("set", value)

    def observe(self, value: float) -> None:
        if self._family._kind != MetricFamily.HISTOGRAM:
            raise TritonModelException("only a histogram observes")
        self._count[0] += value  # the sum of what it observed
        self._publish("observe", value)

    def value(self) -> float:
        return self._count[0]

    def _publish(self, op: str, value: float) -> None:
        family = self._family
        update = MetricUpdate(family._name, family._description, _KINDS[family._kind], self._labels, op,
                              float(value), self._buckets)
        with contextlib.suppress(InferdError):  # no server in this process (auto_complete_config's): none shows it
            model_calls.current().record_metric(update)


MadeMetrics = dict[tuple[str, tuple[tuple[str, str], ...]], "_Metric"]  # (family, labels) -> its first Metric
_made_here: contextvars.ContextVar[MadeMetrics | None] = contextvars.ContextVar("inferd_made_metrics", default=None)


@contextlib.contextmanager
def collecting_metrics(made: MadeMetrics) -> Iterator[None]:
    """The series a model instance creates meanwhile go into ``made``, for ``drop_metrics`` when it
    unloads."""
    token = _made_here.set(made)
    try:
        yield
    finally:
        _made_here.reset(token)


def drop_metrics(made: MadeMetrics) -> None:
    """The instance unloads: its series leave /metrics once no other instance holds them (Triton
    counts each series' Metric objects and removes it with the last)."""
    for metric in made.values():
        metric._publish("drop", 0.0)
    made.clear()


class MetricFamily:
    """Triton's custom metrics: a family of labelled series the model counts, gauges or observes,
    shown on the server's /metrics under the family's own name."""

    COUNTER, GAUGE, HISTOGRAM = range(3)
    _name: str
    _description: str
    _kind: int

    def __init__(self, name: str, description: str, kind: int) -> None:
        if kind not in (self.COUNTER, self.GAUGE, self.HISTOGRAM):
            raise TritonModelException(f"MetricFamily '{name}': kind must be COUNTER, GAUGE or HISTOGRAM")
        if not NAME.fullmatch(name):
            raise TritonModelException(f"MetricFamily '{name}': a metric name matches {NAME.pattern}")
        known = _FAMILIES.get(name)
        if known is not None and known._kind != kind:  # as Triton's registry: one kind per family name
            raise TritonModelException(f"MetricFamily '{name}' exists already as a {_KINDS[known._kind]}, not a "
                                       f"{_KINDS[kind]}")
        self._name = name
        self._description = description if known is None else known._description  # the first one's, as Triton's
        self._kind = kind
        _FAMILIES.setdefault(name, self)

    def Metric(self, labels: dict[str, str] | None = None, buckets: list[float] | None = None) -> _Metric:
        if labels is not None and not isinstance(labels, dict):  # Triton's words, these three
            raise TritonModelException("Failed to create metric. Labels must be a dictionary.")
        if buckets is not None and not isinstance(buckets, list):
            raise TritonModelException("Failed to create metric. Buckets must be a list.")
        if buckets is not None and self._kind != self.HISTOGRAM:
            raise TritonModelException("Failed to create metric. Unexpected buckets found.")
        if self._kind == self.HISTOGRAM and not buckets:
            raise TritonModelException(f"MetricFamily '{self._name}': a histogram's Metric needs buckets")
        pairs = tuple((str(key), str(value)) for key, value in (labels or {}).items())
        bad = next((key for key, _ in pairs if not LABEL.fullmatch(key)), None)
        if bad is not None:
            raise TritonModelException(f"MetricFamily '{self._name}': label name {bad!r} does not match "
                                       f"{LABEL.pattern}")
        return _Metric(self, pairs, tuple(float(b) for b in buckets or ()))


_KINDS = {MetricFamily.COUNTER: "counter", MetricFamily.GAUGE: "gauge", MetricFamily.HISTOGRAM: "histogram"}
# the families alive in this process, by name (a family goes with its last reference, as Triton's)
_FAMILIES: weakref.WeakValueDictionary[str, MetricFamily] = weakref.WeakValueDictionary()
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def serialize_byte_tensor(input_tensor: np.ndarray) -> Any:
    """A BYTES tensor as Triton lays it out: each element's length (4 bytes, little-endian), then
    its bytes (a str element as UTF-8). As Triton's: () for an empty tensor, None for one that is
    not object or bytes."""
    if input_tensor.size == 0:
        return ()
    if input_tensor.dtype != np.object_ and input_tensor.dtype.type != np.bytes_:
        return None
    parts = []
    for value in input_tensor.ravel(order="C"):
        item = value if isinstance(value, bytes) else str(value).encode()
        parts += [struct.pack("<I", len(item)), item]
    return b"".join(parts)


def deserialize_bytes_tensor(encoded_tensor: bytes) -> np.ndarray:
    """``serialize_byte_tensor``'s layout back to a flat object array of bytes."""
    items, offset = [], 0
    while offset < len(encoded_tensor):
        (length,) = struct.unpack_from("<I", encoded_tensor, offset)
        offset += 4
        if offset + length > len(encoded_tensor):
            raise TritonModelException("Invalid bytes tensor data: string extends beyond buffer")
        items.append(bytes(encoded_tensor[offset:offset + length]))
        offset += length
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((t for t in model_config.get("input", []) if t.get("name") == name), None)


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((t for t in model_config.get("output", []) if t.get("name") == name), None)


def triton_string_to_numpy(triton_type: str) -> Any:
    """``"TYPE_FP32"`` -> numpy.float32; ``"TYPE_STRING"`` -> numpy.object_."""
    name = triton_type.removeprefix("TYPE_")
    if name == "STRING":
        return np.object_
    return numpy_dtype(name).type


def triton_to_numpy_type(data_type: int) -> Any:
    return triton_string_to_numpy(_TYPES[data_type])


def numpy_to_triton_type(dtype: Any) -> int:
    kind = np.dtype(dtype)
    if kind.kind in "OSU":
        return _TYPES.index("STRING")
    for index, name in enumerate(_TYPES[1:13], start=1):
        if name != "STRING" and numpy_dtype(name) == kind:
            return index
    raise TritonModelException(f"no Triton data type for numpy {kind}")


def using_decoupled_model_transaction_policy(model_config: dict[str, Any]) -> bool:
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


class ModelConfig:
    """What ``TritonPythonModel.auto_complete_config`` is handed and returns: the model's
    configuration (Triton's JSON) that it may complete with tensors, a batch size, dynamic
    batching and the transaction policy. Its additions never contradict what the file says."""

    def __init__(self, model_config: str | dict[str, Any]) -> None:
        self._config: dict[str, Any] = json.loads(model_config) if isinstance(model_config, str) else model_config
        for key in ("input", "output"):
            self._config.setdefault(key, [])
        self._config.setdefault("max_batch_size", 0)

    def as_dict(self) -> dict[str, Any]:
        return self._config

    def _name(self) -> str:
        return str(self._config.get("name", ""))

    def set_max_batch_size(self, max_batch_size: int) -> None:
        if self._config["max_batch_size"] > max_batch_size:
            raise ValueError(f"model '{self._name()}': its configuration says max_batch_size "
                             f"{self._config['max_batch_size']}, auto_complete_config says {max_batch_size}")
        self._config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        for other in ("sequence_batching", "ensemble_scheduling"):
            if other in self._config:
                raise ValueError(f"model '{self._name()}': its configuration schedules with {other}; "
                                 "auto_complete_config cannot set dynamic_batching")
        self._config.setdefault("dynamic_batching", {})

    def set_model_transaction_policy(self, transaction_policy_dict: dict[str, Any]) -> None:
        policy = self._config.setdefault("model_transaction_policy", {})
        for key, value in transaction_policy_dict.items():
            if key != "decoupled":
                raise ValueError(f"model '{self._name()}': model_transaction_policy has no key '{key}'")
            if "decoupled" in policy and bool(policy["decoupled"]) != bool(value):
                raise ValueError(f"model '{self._name()}': its configuration says decoupled "
                                 f"{policy['decoupled']}, auto_complete_config says {value}")
            policy["decoupled"] = bool(value)

    def add_input(self, input: dict[str, Any]) -> None:
        self._add("input", input)

    def add_output(self, output: dict[str, Any]) -> None:
        self._add("output", output)

    def _add(self, kind: str, tensor: dict[str, Any]) -> None:
        if not isinstance(tensor, dict) or "name" not in tensor:
            raise ValueError(f"model '{self._name()}': add_{kind} takes a dict with a 'name', got {tensor!r}")
        unknown = set(tensor) - {"name", "data_type", "dims", "optional", "label_filename", "reshape",
                                 "is_shape_tensor", "allow_ragged_batch"}
        if unknown:
            raise ValueError(f"model '{self._name()}': {kind} '{tensor['name']}' has unknown keys {sorted(unknown)}")
        for current in self._config[kind]:
            if current.get("name") != tensor["name"]:
                continue
            for key in ("data_type", "dims"):  # a key the file left out (or at its default) is filled in
                if key in tensor and current.get(key) not in (None, [], "TYPE_INVALID") and \
                        current[key] != tensor[key]:
                    raise ValueError(f"model '{self._name()}': {kind} '{tensor['name']}' is {key} "
                                     f"{current[key]} in its configuration, {tensor[key]} in auto_complete_config")
                if key in tensor:
                    current[key] = tensor[key]
            return
        for key in ("data_type", "dims"):
            if key not in tensor:
                raise ValueError(f"model '{self._name()}': {kind} '{tensor['name']}' needs '{key}'")
        self._config[kind].append(dict(tensor))
