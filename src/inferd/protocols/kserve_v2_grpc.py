"""KServe v2 over gRPC: ModelInferRequest/Response messages <-> inferd types. Pure functions.

Inputs come as typed ``contents`` or as ``raw_input_contents`` (one little-endian buffer per input);
outputs always go back as ``raw_output_contents``, as Triton answers, which every v2 client reads.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from inferd.errors import InferdError, InvalidInput
from inferd.protocols import tensors
from inferd.protocols._proto import kserve_v2_pb2 as pb
from inferd.protocols.kserve_v2 import classification, priority, refuse_reserved, shared_memory, timeout_us
from inferd.types import InferRequest, InferResponse, ModelMetadata, RequestedOutput, Tensor

# datatype -> the InferTensorContents field that carries it (FP16/BF16 travel raw only)
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
    "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
# the numpy type of each numeric contents field (what its values are before the datatype's cast)
_FIELD_DTYPE = {"bool_contents": np.bool_, "int_contents": np.int32, "int64_contents": np.int64,
                "uint_contents": np.uint32, "uint64_contents": np.uint64, "fp32_contents": np.float32,
                "fp64_contents": np.float64}


def parameters(fields: Any) -> dict[str, Any]:
    """A protobuf map<string, InferParameter> as plain values."""
    if not fields:  # (most requests and tensors carry none)
        return {}
    result = {}
    for key, value in fields.items():
        choice = value.WhichOneof("parameter_choice")
        result[key] = getattr(value, choice) if choice else None
    return result


_RAW_INPUT_KEY = 7 << 3 | 2  # raw_input_contents: field 7, length-delimited
SPLIT_FROM = 64 * 1024  # a request this large has its raw inputs read in place
_MOST_FIELDS = 4096  # top-level fields walked at most: inputs, outputs, parameters and buffers are far fewer


class RawInferRequest:
    """A ModelInferRequest whose ``raw_input_contents`` are read-only views of the bytes it came in:
    protobuf would copy each tensor into its message, and reading one out copies it again (6 ms of
    a 16 MiB request). Everything else is the message's own (``message``, parsed by protobuf)."""

    __slots__ = ("message", "raw_input_contents")

    def __init__(self, message: pb.ModelInferRequest, raw: list[memoryview]) -> None:
        self.message = message
        self.raw_input_contents = raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self.message, name)

    def ByteSize(self) -> int:  # protobuf's name: the size a server budgets for
        return self.message.ByteSize() + sum(len(raw) for raw in self.raw_input_contents)

    @staticmethod
    def FromString(payload: bytes | bytearray | memoryview) -> pb.ModelInferRequest | RawInferRequest:
        """The request a server's bytes hold; a small one, or one this reading does not take
        apart cleanly, is protobuf's own parse (its errors, its message)."""
        if len(payload) >= SPLIT_FROM:
            split = _split_raw_inputs(memoryview(payload))
            if split is not None and split[1]:
                return RawInferRequest(pb.ModelInferRequest.FromString(split[0]), split[1])
        return pb.ModelInferRequest.FromString(payload)  # type: ignore[arg-type]  # (any buffer is read)


def _split_raw_inputs(view: memoryview) -> tuple[bytes, list[memoryview]] | None:
    """The message's top-level fields but raw_input_contents, and views of those (in order).
    None where the wire format is anything but plain (protobuf then parses, and judges, all)."""
    rest, raw = bytearray(), list[memoryview]()
    at, size = 0, len(view)
    for _ in range(_MOST_FIELDS):
        if at >= size:
            return bytes(rest), raw
        key, start = _read_varint(view, at)
        if key is None:
            return None
        wire = key & 7
        if wire == 2:
            length, start = _read_varint(view, start)
            if length is None or start + length > size:
                return None
            end = start + length
            if key == _RAW_INPUT_KEY:
                raw.append(view[start:end].toreadonly())
                at = end
                continue
        elif wire == 0:
            _, end = _read_varint(view, start)
        elif wire in (1, 5):
            end = start + (8 if wire == 1 else 4)
        else:
            return None
        if end > size:
            return None
        rest += view[at:end]
        at = end
    return None  # a message of thousands of fields is protobuf's to read (in C, not a loop here)


def _read_varint(view: memoryview, at: int) -> tuple[int | None, int]:
    value, shift = 0, 0
    while at < len(view) and shift < 64:
        byte = view[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
    return None, at


def decode_infer_request(message: pb.ModelInferRequest | RawInferRequest) -> InferRequest:
    shared = [_shared(tensor) if tensor.parameters else None for tensor in message.inputs]
    raw: list[bytes | memoryview] = list(message.raw_input_contents)
    carried = shared.count(None)  # a region's input has no buffer
    if raw and len(raw) != carried:
        raise InvalidInput(f"raw_input_contents has {len(raw)} buffers for {carried} inputs; "
                           "give one per input (but those in shared memory), in order")
    buffers = iter(raw)
    inputs = [_input(tensor, next(buffers) if raw else None) if where is None else where
              for tensor, where in zip(message.inputs, shared, strict=True)]
    params = parameters(message.parameters)
    if params:
        refuse_reserved(params, _CLIENT_RESERVED)
    outputs = [_output(o) for o in message.outputs] if message.outputs else None
    return InferRequest(model_name=message.model_name, model_version=message.model_version or None,
                        inputs=inputs, id=message.id or None, outputs=outputs, parameters=params,
                        timeout_us=timeout_us(params.get("timeout")) if params else None,
                        priority=priority(params.get("priority")) if params else 0,
                        protocol="kserve_v2_grpc")


def _shared(tensor: Any) -> Tensor | None:
    """An input in a registered shared-memory region (its place; the data plane reads it)."""
    where = shared_memory(parameters(tensor.parameters), f"input '{tensor.name}'")
    if where is None:
        return None
    if tensor.HasField("contents"):
        raise InvalidInput(f"unexpected 'content' provided when using shared memory for input tensor "
                           f"'{tensor.name}'")
    shape = list(tensor.shape)
    return Tensor(tensor.name, tensor.datatype, tensors.shared_placeholder(tensor.name, tensor.datatype, shape),
                  where)


def _output(output: Any) -> RequestedOutput:
    params = parameters(output.parameters)
    where = shared_memory(params, f"output '{output.name}'") if params else None
    if where is not None and "classification" in params:
        raise InvalidInput("output can't set both 'shared_memory_region' and 'classification'")
    return RequestedOutput(output.name, True, classification(output.name, params.get("classification")), where)


def _input(tensor: Any, raw: bytes | memoryview | None) -> Tensor:
    name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
    if not name:
        raise InvalidInput("every input needs a name")
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidInput(f"input '{name}': give raw_input_contents or contents, not both")
        return Tensor(name, datatype, tensors.from_raw(name, datatype, shape, raw))
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        tensors.dtype_for(name, datatype)  # unknown datatype: say so
        raise InvalidInput(f"input '{name}': {datatype} has no typed contents field; send it in "
                           "raw_input_contents")
    values = getattr(tensor.contents, field)
    count = tensors.element_count(name, shape)
    if len(values) != count:
        raise InvalidInput(f"input '{name}': shape {shape} needs {count} elements, {field} has {len(values)}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
    else:
        try:
            array = tensors.checked_cast(np.asarray(values, dtype=_FIELD_DTYPE[field]), datatype)
        except ValueError as exc:
            raise InvalidInput(f"input '{name}': {exc}") from None
    return Tensor(name, datatype, array.reshape(shape))


def encode_infer_response(response: InferResponse) -> pb.ModelInferResponse:
    return encode_infer_answer(response).to_message()


def encode_infer_answer(response: InferResponse) -> InferAnswer:
    message = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version,
                                    id=response.id or "")
    raw: list[bytes | memoryview] = []
    for tensor in response.outputs:
        message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape))
        # one buffer per output, as Triton answers: empty for one written to shared memory
        raw.append(b"" if tensor.shared is not None else tensors.raw_view(tensor.data, tensor.datatype))
    for key, value in response.parameters.items():  # a model's own (Triton's response parameters)
        _set_parameter(message.parameters[key], value)
    return InferAnswer(message, raw)


def _set_parameter(parameter: pb.InferParameter, value: Any) -> None:
    """A response parameter as Triton writes it: bool, int64 or string (what a model may give)."""
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    else:
        parameter.string_param = str(value)


_RAW_OUTPUT_TAG = bytes([6 << 3 | 2])  # raw_output_contents: field 6, length-delimited


class InferAnswer:
    """A ModelInferResponse whose raw_output_contents are still the output arrays' own memory.
    ``parts()`` is its wire form as buffers: the message without them, then each as field 6 (the
    highest field, so the bytes are what protobuf itself would write), for a server that sends
    buffers uncopied; ``SerializeToString()`` joins them for one that wants bytes, and a pickle
    (Ray Serve hands answers between processes) carries the plain message."""

    __slots__ = ("message", "raw")

    def __init__(self, message: pb.ModelInferResponse, raw: list[bytes | memoryview]) -> None:
        self.message = message
        self.raw = raw

    def parts(self) -> list[bytes | memoryview]:
        parts: list[bytes | memoryview] = [self.message.SerializeToString()]
        for raw in self.raw:
            parts += (_RAW_OUTPUT_TAG + _varint(len(raw)), raw)
        return parts

    def SerializeToString(self) -> bytes:  # protobuf's name: what servers call on an answer
        return b"".join(self.parts())

    def to_message(self) -> pb.ModelInferResponse:
        self.message.raw_output_contents.extend(bytes(raw) for raw in self.raw)
        return self.message

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return pb.ModelInferResponse.FromString, (self.SerializeToString(),)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


FINAL = "triton_final_response"  # what Triton sets on each streamed answer
EMPTY_FINAL = "triton_enable_empty_final_response"  # a request parameter: end with an empty final answer
_CLIENT_RESERVED = frozenset((EMPTY_FINAL,))  # the one triton_ parameter Triton's gRPC front end takes from clients


def encode_stream_response(response: InferResponse) -> pb.ModelStreamInferResponse:
    """One answer on a ModelStreamInfer stream, flagged final or not as Triton flags it. An error
    response is Triton's: ``error_message``, with the request's id, model and version, and the
    stream goes on."""
    if response.error is not None:
        message = pb.ModelStreamInferResponse(error_message=error_message(response.error), infer_response=(
            pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version,
                                  id=response.id or "")))
    else:
        message = pb.ModelStreamInferResponse(infer_response=encode_infer_response(response))
    message.infer_response.parameters[FINAL].bool_param = response.final
    return message


def error_message(error: Exception) -> str:
    """An error response's words: an InferdError's message, else the exception's text."""
    return error.message if isinstance(error, InferdError) else str(error)


def stream_final_response(request: InferRequest) -> pb.ModelStreamInferResponse:
    """The empty last answer a client asks for with ``triton_enable_empty_final_response``, sent
    after a decoupled model's answers end (Triton's), so the client knows the request is done."""
    message = pb.ModelStreamInferResponse(infer_response=pb.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version or "", id=request.id or ""))
    message.infer_response.parameters[FINAL].bool_param = True
    return message


def stream_error(message: str) -> pb.ModelStreamInferResponse:
    return pb.ModelStreamInferResponse(error_message=message)


def encode_model_metadata(metadata: ModelMetadata) -> pb.ModelMetadataResponse:
    message = pb.ModelMetadataResponse(name=metadata.name, versions=list(metadata.versions),
                                       platform=metadata.platform)
    for specs, target in ((metadata.inputs, message.inputs), (metadata.outputs, message.outputs)):
        for spec in specs:
            target.add(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))
    return message

