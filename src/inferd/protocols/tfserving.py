"""TensorFlow Serving's REST and gRPC payloads <-> inferd types. Pure functions.

REST: ``{"instances": [...]}`` (row format: one entry per example, stacked along a new dim 0) or
``{"inputs": ...}`` (columnar: each input given whole), answered with ``{"predictions": [...]}`` or
``{"outputs": ...}``; binary strings travel as ``{"b64": "..."}``. gRPC: TensorProto in and out.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from collections.abc import Iterable
from typing import Any

import numpy as np
from google.protobuf import json_format

from inferd.errors import FailedPrecondition, InferdError, InvalidInput, NotFound, Unimplemented
from inferd.protocols._proto import tfserving_pb2 as pb
from inferd.protocols.tensors import (
    MAX_DIMS,
    checked_cast,
    element_count,
    loads_non_finite,
    non_finite_json,
    numbers_from_json,
)
from inferd.types import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelState,
    Tensor,
    TensorSpec,
    VersionStatus,
    numpy_dtype,
)

PROTOCOL_REST = "tfserving_rest"
PROTOCOL_GRPC = "tfserving_grpc"
SIGNATURE_DEF_MAP_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
_MAX_BROADCAST = 1 << 20  # elements one repeated value may fill
# datatypes TF Serving's JSON does not convert (util/json_tensor.cc at 9d981c5c: AddValueToTensor's
# default case, 336-339, UNIMPLEMENTED on the way in; AddSingleValueAndAdvance's, 939-946, on the way out)
_NOT_IN_JSON = ("FP16", "BF16", "UINT16")

# v2 datatype <-> TF DataType enum value and the TensorProto field that holds typed values
_TF_DTYPE: dict[str, pb.DataType] = {
    "BOOL": pb.DT_BOOL, "UINT8": pb.DT_UINT8, "UINT16": pb.DT_UINT16, "UINT32": pb.DT_UINT32,
    "UINT64": pb.DT_UINT64, "INT8": pb.DT_INT8, "INT16": pb.DT_INT16, "INT32": pb.DT_INT32, "INT64": pb.DT_INT64,
    "FP16": pb.DT_HALF, "FP32": pb.DT_FLOAT, "FP64": pb.DT_DOUBLE, "BF16": pb.DT_BFLOAT16, "BYTES": pb.DT_STRING}
_V2_BY_TF = {value: key for key, value in _TF_DTYPE.items()}
# TensorFlow's DataTypeString: the names TF Serving's JSON errors use
_TF_TYPE_NAME = {"FP16": "half", "BF16": "bfloat16", "UINT16": "uint16"}
_NO_JSON_DTYPE = {"float16": "half", "bfloat16": "bfloat16", "uint16": "uint16"}  # numpy's names
_TYPED_FIELD = {"BOOL": "bool_val", "UINT8": "int_val", "UINT16": "int_val", "INT8": "int_val", "INT16": "int_val",
                "INT32": "int_val", "INT64": "int64_val", "UINT32": "uint32_val", "UINT64": "uint64_val",
                "FP32": "float_val", "FP64": "double_val", "FP16": "half_val", "BF16": "half_val",
                "BYTES": "string_val"}
# the numpy type of each numeric field (what its values are before the datatype's cast): numpy
# alone reads [0, 2**64 - 1] as float64, and 2**64 - 1 came back as 0
_FIELD_DTYPE = {"bool_val": np.bool_, "int_val": np.int32, "int64_val": np.int64, "uint32_val": np.uint32,
                "uint64_val": np.uint64, "float_val": np.float32, "double_val": np.float64}


# inferd's state -> ModelVersionStatus.State (REST answers with its name, gRPC with its number)
_STATE = {ModelState.LOADING: pb.ModelVersionStatus.LOADING, ModelState.READY: pb.ModelVersionStatus.AVAILABLE,
          ModelState.UNLOADING: pb.ModelVersionStatus.UNLOADING, ModelState.UNAVAILABLE: pb.ModelVersionStatus.END}


def tf_dtype_name(datatype: str) -> str:
    return pb.DataType.Name(_TF_DTYPE[datatype])


def version_number(version: str) -> int:
    """TF Serving's versions are int64; inferd's are strings (TorchServe's "1.0" has no number: 0)."""
    return int(version) if version.isascii() and version.isdigit() else 0


def status_not_found(name: str, version: str | None) -> NotFound:
    """GetModelStatus's answer for a model or version it does not know, in TF Serving's words."""
    if version is not None:
        return NotFound(f"Could not find version {version} of model {name}")
    return NotFound(f"Could not find any versions of model {name}")


def servable_not_found(name: str, version: str | None, error: NotFound) -> NotFound:
    """An unknown model or version in TF Serving's words (its clients look for "Servable")."""
    which = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
    return NotFound(f"Servable not found for request: {which}: {error.message}")


def signature_not_found(signature: str, method: str, known: Iterable[str]) -> InferdError:
    """An unknown signature_name in TF Serving's words and code (9d981c5c): Predict's FAILED_PRECONDITION
    (servables/tensorflow/predict_util.cc:87-94), Classify's and Regress's INVALID_ARGUMENT
    (classifier.cc:157-161, regressor.cc:152-156); inferd adds the signatures the model has."""
    has = f" (the model has: {', '.join(sorted(known))})"
    if method == PREDICT_METHOD:
        return FailedPrecondition(f"Serving signature key \"{signature}\" not found.{has}")
    return InvalidInput(f"No signature was found with the name: {signature}{has}")


def models_not_available(rows: list[VersionStatus]) -> str:
    """A reload's new models that did not become available, as TF Serving words them
    (server_core.cc:341-362 at 9d981c5c; its code is UNKNOWN)."""
    names = {row.name for row in rows}
    failures = "".join(f"{{name: {row.name} version: {row.version or '-'}}}"
                       f"{f' due to error: {row.reason}' if row.reason else ''}, " for row in rows)
    return f"{len(names)} model(s) did not become available: {{{failures}}}"


def reload_config_response(metric_names: list[str]) -> pb.ReloadConfigResponse:
    """A reload that succeeded: an OK status, and each metric asked for with its increase (none of
    TF's metrics exist here: 0, as TF Serving answers a name it does not know)."""
    response = pb.ReloadConfigResponse()
    response.status.SetInParent()  # OK: the status is there, with no error (util/status_util.cc:24-31)
    for name in dict.fromkeys(metric_names):
        response.metric.add(name=name, int64_value_increase=0)
    return response


# -- REST -----------------------------------------------------------------------------------------

def loads_rest(body: bytes | bytearray, what: str) -> Any:
    """A REST body as TF Serving reads it: ``NaN``, ``Infinity`` and ``-Infinity`` are numbers."""
    return loads_non_finite(body, what)


def decode_rest_predict(payload: Any, specs: tuple[TensorSpec, ...], model: str, version: str | None,
                        signature: str | None) -> tuple[InferRequest, bool]:
    """A :predict body as an InferRequest; the flag says row format (answer with predictions)."""
    if not isinstance(payload, dict):
        raise InvalidInput("the predict body must be a JSON object with 'instances' or 'inputs'")
    if ("instances" in payload) == ("inputs" in payload):
        raise InvalidInput("the predict body needs exactly one of 'instances' (row format) or 'inputs' (columnar)")
    by_name = {spec.name: spec for spec in specs}
    if "instances" in payload:
        columns = _rows_to_columns(payload["instances"], specs)
    else:
        given = payload["inputs"]
        if isinstance(given, dict) and "b64" not in given:
            columns = {name: value for name, value in given.items() if name in by_name}  # TF ignores the rest
        elif len(specs) == 1:
            columns = {specs[0].name: given}
        else:
            raise InvalidInput(f"'inputs' must name each input: {sorted(by_name)}")
    tensors = []
    for name, value in columns.items():
        spec = by_name.get(name)
        if spec is None:
            raise InvalidInput(f"unknown input '{name}'; the signature takes {sorted(by_name)}")
        tensors.append(Tensor(name, spec.datatype, _array(name, spec.datatype, value)))
    request = InferRequest(model_name=model, model_version=version, inputs=tensors, protocol=PROTOCOL_REST,
                           parameters={"signature_name": signature} if signature else {})
    return request, "instances" in payload


def _rows_to_columns(instances: Any, specs: tuple[TensorSpec, ...]) -> dict[str, list[Any]]:
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("'instances' must be a non-empty list, one entry per example")
    names = [spec.name for spec in specs]
    if len(specs) == 1 and not (isinstance(instances[0], dict) and not _is_b64(instances[0])):
        return {names[0]: instances}  # objects (other than {"b64": ...}) name the input, as in TF Serving
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for index, row in enumerate(instances):
        if not isinstance(row, dict):
            raise InvalidInput(f"instances[{index}] must be an object naming each input: {names}")
        for name, value in row.items():
            if name not in columns:
                raise InvalidInput(f"instances[{index}] has unknown input '{name}'; the signature takes {names}")
            columns[name].append(value)
    missing = [name for name, values in columns.items() if len(values) != len(instances)]
    if missing:
        raise InvalidInput(f"every instance must give every input; missing '{missing[0]}' in some")
    return columns


def _array(name: str, datatype: str, value: Any) -> np.ndarray:
    """A JSON value (nested lists: the shape) as ``datatype``, by TF Serving's JSON rules: integer
    tensors take integers only, values must fit, strings are text or ``{"b64": ...}``."""
    try:
        shape = _nested_shape(value)
        element_count(name, shape)
        flat = _leaves(value, shape)
        if datatype in _NOT_IN_JSON and flat and not isinstance(flat[0], dict):
            raise Unimplemented(f"Conversion of JSON Value: {_json_text(flat[0])} to type: "
                                f"{_TF_TYPE_NAME[datatype]}")
        if datatype == "BYTES":
            array = np.empty(len(flat), dtype=object)
            array[:] = [_bytes_value(item) for item in flat]
        else:
            array = numbers_from_json(flat, datatype)
        return array.reshape(shape)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"input '{name}': cannot read the values as {tf_dtype_name(datatype)}: {exc}") from None


def _json_text(value: Any) -> str:
    """A JSON value as TF Serving quotes it in an error (compact, at most 256 bytes)."""
    return json.dumps(value, separators=(",", ":"))[:256]


def _nested_shape(value: Any) -> list[int]:
    """The shape the first entry of each level gives (``_leaves`` checks every other entry)."""
    shape: list[int] = []
    while isinstance(value, list):
        if len(shape) == MAX_DIMS:
            raise ValueError(f"lists nested deeper than {MAX_DIMS} levels")
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _leaves(value: Any, shape: list[int]) -> list[Any]:
    """The values of nested lists of ``shape``, in order; ValueError where a list has another length
    or sits where a value belongs, or a value where a list belongs (ragged: not a tensor)."""
    level = [value]
    for depth, size in enumerate(shape):
        lengths = set(map(len, level))  # every entry is a list: the level above was checked
        if lengths - {size}:
            raise ValueError(f"the lists are ragged (not a tensor): a list of {max(lengths - {size})} at level "
                             f"{depth} where shape {shape} needs {size}")
        level = list(itertools.chain.from_iterable(level))
        inner = depth + 1 < len(shape)
        kinds = set(map(type, level))
        if level and (kinds != {list} if inner else list in kinds):
            where = "a value where a list" if inner else "a list where a value"
            raise ValueError(f"the lists are ragged (not a tensor): {where} belongs at level {depth + 1} "
                             f"of shape {shape}")
    return level


def _is_b64(item: Any) -> bool:
    return isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str)


def _bytes_value(item: Any) -> bytes:
    if _is_b64(item):
        return decode_b64(item["b64"])
    if isinstance(item, str):
        return item.encode("utf-8")
    raise ValueError(f"expected strings or {{'b64': ...}}, got {type(item).__name__}")


def decode_b64(text: str) -> bytes:
    """Base64 (standard or URL-safe alphabet, padding optional); anything else is refused."""
    data = text.encode("ascii", errors="replace")
    data += b"=" * (-len(data) % 4)
    try:
        if b"-" in data or b"_" in data:
            return base64.b64decode(data, altchars=b"-_", validate=True)
        return base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"'b64' is not valid base64 ({exc})") from None


def encode_rest_predict(response: InferResponse, row_format: bool) -> dict[str, Any]:
    outputs = {tensor.name: tensor.data for tensor in response.outputs}
    if row_format:
        scalar = next((name for name, data in outputs.items() if np.ndim(data) == 0), None)
        if scalar is not None:  # TF Serving's words (json_tensor.cc), and the way out
            raise InvalidInput(f"Tensor name: {scalar} has no shape information (a scalar output has no rows to "
                               "answer 'instances' with; ask with 'inputs' (columnar) instead)")
        if len(outputs) == 1:
            ((name, data),) = outputs.items()
            return {"predictions": _json(name, data)}
        sizes = {name: data.shape[0] for name, data in outputs.items()}
        if len(set(sizes.values())) != 1:
            raise InvalidInput(f"the outputs do not share a batch size (dim 0: {sizes}), so they cannot be "
                               "answered as rows ('instances'); ask with 'inputs' (columnar) instead")
        columns = {name: _json(name, data) for name, data in outputs.items()}
        rows = next(iter(sizes.values()))
        return {"predictions": [{name: column[i] for name, column in columns.items()} for i in range(rows)]}
    if len(outputs) == 1:
        ((name, data),) = outputs.items()
        return {"outputs": _json(name, data)}
    return {"outputs": {name: _json(name, data) for name, data in outputs.items()}}


def _json(name: str, data: Any) -> Any:
    """One output for ``orjson.dumps(..., option=OPT_SERIALIZE_NUMPY)`` as TF Serving writes it: a
    scalar as one value, float32 in its shortest form (1.2, not 1.2000000476837158), NaN and
    infinities as the tokens ``NaN``, ``Infinity`` and ``-Infinity`` (orjson alone writes null)."""
    array = np.asarray(data)
    if array.dtype.kind in "OSU":  # a scalar string output comes as bytes_ (kind S), not object
        return _bytes_json(array.tolist(), force_b64=name.endswith("_bytes"))
    unwritable = _NO_JSON_DTYPE.get(array.dtype.name)
    if unwritable is not None:  # TF Serving writes no value of these (json_tensor.cc:939-946): only empty lists
        if array.size:
            raise InvalidInput(f"Failed to write JSON value for tensor type: {unwritable} (output '{name}')")
        return array.astype(np.float32).tolist()
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        return non_finite_json(array)
    array = np.asarray(array, dtype=array.dtype.newbyteorder("="), order="C")
    return array[()] if array.ndim == 0 else array  # orjson writes numpy scalars, not 0-d arrays


def float32_json(values: list[float]) -> list[Any]:
    """Classification scores and regression values as TF Serving writes them (a float32 each, in
    its shortest form; NaN and infinities as tokens), for ``orjson.dumps(..., OPT_SERIALIZE_NUMPY)``."""
    return list(_json("", np.asarray(values, dtype=np.float32)))


def _bytes_json(value: Any, force_b64: bool) -> Any:
    if isinstance(value, list):
        return [_bytes_json(v, force_b64) for v in value]
    raw = value if isinstance(value, bytes) else str(value).encode()
    if not force_b64:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(raw).decode("ascii")}


def rest_status(versions: list[VersionStatus]) -> dict[str, Any]:
    """``GET /v1/models/{m}``: the versions' states in TF Serving's status shape. A version's status is
    its health, as TF Serving's: OK while it loads or unloads, an error only where it failed."""
    return {"model_version_status": [
        {"version": row.version, "state": pb.ModelVersionStatus.State.Name(_STATE[row.state]),
         "status": {"error_code": "UNKNOWN" if row.reason else "OK", "error_message": row.reason}}
        for row in versions]}


def rest_metadata(name: str, version: str, signatures: dict[str, ModelMetadata]) -> dict[str, Any]:
    """``GET .../metadata``: the SignatureDefMap as TF Serving prints it (every field, int64 as text)."""
    defs = json_format.MessageToDict(signature_def_map(signatures), always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True)
    return {"model_spec": {"name": name, "signature_name": "", "version": version},
            "metadata": {"signature_def": defs}}


def signature_def(meta: ModelMetadata) -> pb.SignatureDef:
    """TensorFlow's own SignatureDef where the model has one; else one made from the tensors."""
    definition = pb.SignatureDef()
    if meta.signature_def:
        definition.ParseFromString(meta.signature_def)
        return definition
    definition.method_name = PREDICT_METHOD
    for specs, target in ((meta.inputs, definition.inputs), (meta.outputs, definition.outputs)):
        for spec in specs:
            info = target[spec.name]
            info.name, info.dtype = spec.name, _TF_DTYPE[spec.datatype]
            if not spec.rank_known:
                info.tensor_shape.unknown_rank = True
                continue
            for size in spec.shape:
                info.tensor_shape.dim.add(size=size)
    return definition


def method_name(meta: ModelMetadata) -> str:
    return signature_def(meta).method_name


# -- gRPC -----------------------------------------------------------------------------------------

def decode_tensor(name: str, proto: pb.TensorProto) -> Tensor:
    datatype = _V2_BY_TF.get(proto.dtype)
    if datatype is None:
        known = proto.dtype in pb.DataType.values()
        raise InvalidInput(f"input '{name}': dtype {pb.DataType.Name(proto.dtype) if known else proto.dtype} "
                           "is not supported")
    shape = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input '{name}': tensor_shape must be fully known, got {shape}")
    count = element_count(name, shape)
    dtype = numpy_dtype(datatype)
    if proto.tensor_content:
        if datatype == "BYTES":
            raise InvalidInput(f"input '{name}': DT_STRING values go in string_val")
        if len(proto.tensor_content) != count * dtype.itemsize:
            raise InvalidInput(f"input '{name}': shape {shape} of {tf_dtype_name(datatype)} needs "
                               f"{count * dtype.itemsize} bytes of tensor_content, got {len(proto.tensor_content)}")
        return Tensor(name, datatype, np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<")).reshape(shape))
    values = list(getattr(proto, _TYPED_FIELD[datatype]))
    if len(values) == 1 and 1 < count <= _MAX_BROADCAST:
        values = values * count  # TF Serving broadcasts a single value
    if len(values) != count:
        raise InvalidInput(f"input '{name}': shape {shape} needs {count} values, got {len(values)}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = values
    elif datatype in ("FP16", "BF16"):
        if values and not 0 <= min(values) <= max(values) <= 0xFFFF:  # half_val holds 16-bit patterns
            raise InvalidInput(f"input '{name}': half_val holds the 16-bit patterns of {tf_dtype_name(datatype)} "
                               f"values (0..65535), got {min(values) if min(values) < 0 else max(values)}")
        array = np.asarray(values, dtype=np.uint16).view(dtype)
    else:
        try:
            array = checked_cast(np.asarray(values, dtype=_FIELD_DTYPE[_TYPED_FIELD[datatype]]), datatype)
        except (ValueError, OverflowError) as exc:
            raise InvalidInput(f"input '{name}': {exc}") from None
    return Tensor(name, datatype, array.reshape(shape))


def encode_tensor(data: np.ndarray, datatype: str) -> pb.TensorProto:
    """A tensor in the typed field of its dtype, as TF's ``Tensor::AsProtoField`` writes it (what TF
    Serving answers Predict with, and what its clients read: ``float_val``, ``int64_val``, ...)."""
    proto = pb.TensorProto(dtype=_TF_DTYPE[datatype])
    for size in data.shape:
        proto.tensor_shape.dim.add(size=int(size))
    flat = data.reshape(-1)
    if datatype == "BYTES":
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    elif datatype in ("FP16", "BF16"):
        proto.half_val.extend(flat.view(np.uint16).tolist())
    else:
        getattr(proto, _TYPED_FIELD[datatype]).extend(flat.tolist())
    return proto


def model_spec_version(spec: pb.ModelSpec) -> tuple[str | None, str | None]:
    """(version, label) named by a ModelSpec; both None: the default version."""
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return str(spec.version.value), None
    if choice == "version_label":
        return None, spec.version_label
    return None, None


def signature_def_map(signatures: dict[str, ModelMetadata]) -> pb.SignatureDefMap:
    message = pb.SignatureDefMap()
    for sig, meta in signatures.items():
        message.signature_def[sig].CopyFrom(signature_def(meta))
    return message


def encode_predict_response(response: InferResponse, spec: pb.ModelSpec) -> pb.PredictResponse:
    message = pb.PredictResponse()
    message.model_spec.name = spec.name
    message.model_spec.version.value = version_number(response.model_version)
    message.model_spec.signature_name = spec.signature_name or "serving_default"
    for tensor in response.outputs:
        message.outputs[tensor.name].CopyFrom(encode_tensor(tensor.data, tensor.datatype))
    return message


def encode_model_metadata(name: str, version: str, signatures: dict[str, ModelMetadata]
                          ) -> pb.GetModelMetadataResponse:
    message = pb.GetModelMetadataResponse()
    message.model_spec.name = name
    message.model_spec.version.value = version_number(version)
    packed = message.metadata["signature_def"]
    packed.type_url = SIGNATURE_DEF_MAP_URL  # TF Serving's type name: clients Unpack by it
    packed.value = signature_def_map(signatures).SerializeToString()
    return message


def encode_model_status(versions: list[VersionStatus]) -> pb.GetModelStatusResponse:
    message = pb.GetModelStatusResponse()
    for row in versions:
        status = message.model_version_status.add(version=version_number(row.version), state=_STATE[row.state])
        status.status.error_code = 2 if row.reason else 0  # UNKNOWN, OK
        status.status.error_message = row.reason
    return message
