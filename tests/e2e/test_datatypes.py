"""Every v2 datatype through every framework runtime and every v2 wire, bit for bit.

Tiny real models (identity, transpose) per datatype: ONNX (onnxruntime), TorchScript, torch.export,
Triton Python-backend models and ensembles (ONNX, then Triton Python). Each answer from the real
server (tritonclient over HTTP binary, HTTP JSON, gRPC raw contents; typed gRPC contents) is
compared byte for byte with the same model run in-process: NaN, infinities, -0.0, subnormals and
integer extremes included."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import ml_dtypes
import numpy as np
import pytest
import requests
import torch
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from inferd.types import bfloat16, numpy_dtype
from tests.conftest import RunningServer, serve
from tests.models import ECHO_MODEL, echo_config

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
           "FP16", "FP32", "FP64", "BF16"]
ONNX_TYPES = {"BOOL": 9, "UINT8": 2, "UINT16": 4, "UINT32": 12, "UINT64": 13, "INT8": 3, "INT16": 5,
              "INT32": 6, "INT64": 7, "FP16": 10, "FP32": 1, "FP64": 11, "BF16": 16, "BYTES": 8}
TORCH_TYPES = {"BOOL": torch.bool, "UINT8": torch.uint8, "UINT16": torch.uint16, "UINT32": torch.uint32,
               "UINT64": torch.uint64, "INT8": torch.int8, "INT16": torch.int16, "INT32": torch.int32,
               "INT64": torch.int64, "FP16": torch.float16, "FP32": torch.float32, "FP64": torch.float64,
               "BF16": torch.bfloat16}
TYPED_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
               "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
               "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
               "FP64": "fp64_contents", "BYTES": "bytes_contents"}  # FP16 and BF16 travel raw only


def edge_values(datatype: str) -> np.ndarray:
    """Eight values of ``datatype`` that a lossy wire would change: extremes, NaN, infinities, -0.0."""
    if datatype == "BOOL":
        return np.array([True, False, True, True, False, False, True, False])
    if datatype == "BYTES":  # onnxruntime's strings are text: UTF-8, with an embedded NUL
        return np.array([b"", b"a\x00b", "h\u00e9llo".encode(), b"\x00", b" ", b"z" * 300, b"{}", b"\""],
                        dtype=object)
    dtype = numpy_dtype(datatype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([info.min, info.max, 0, 1, info.max - 1, info.min + 1, 2 ** 53 + 1 if info.bits == 64
                         else 7, info.max // 3], dtype=dtype)
    wide = np.float64 if datatype == "FP64" else np.float32
    info = ml_dtypes.finfo(dtype)  # numpy's finfo knows no bfloat16
    return np.array([0.0, -0.0, np.nan, np.inf, -np.inf, float(info.max), float(info.smallest_subnormal), 0.1],
                    dtype=wide).astype(dtype)


def sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.resize(edge_values(datatype), shape)


# -- models -------------------------------------------------------------------------------------

def onnx_model(path: Path, datatype: str, op: str, rank: int) -> None:
    helper = onnx.helper
    dims = ["a", "b"][:rank]
    x = helper.make_tensor_value_info("x", ONNX_TYPES[datatype], dims)
    y = helper.make_tensor_value_info("y", ONNX_TYPES[datatype], dims[::-1])
    node = helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0]) if op == "tr" else \
        helper.make_node("Identity", ["x"], ["y"])
    model = helper.make_model(helper.make_graph([node], op, [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True)
    onnx.save(model, str(path))


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


class Transpose(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.t()  # a view: not contiguous


MODULES = {"id": Identity, "tr": Transpose}


def torchscript_model(folder: Path, datatype: str, op: str) -> None:
    (folder / "1").mkdir(parents=True)
    torch.jit.script(MODULES[op]()).save(str(folder / "1/model.pt"))
    tensors = [f'[[{kind}]]\nname = "{name}"\ndatatype = "{datatype}"\nshape = [-1, -1]\n'
               for kind, name in (("input", "x"), ("output", "y"))]
    (folder / "config.toml").write_text("max_batch_size = 0\n" + "\n".join(tensors))


def exported_model(folder: Path, datatype: str, op: str) -> None:
    (folder / "1").mkdir(parents=True)
    dims = {0: torch.export.Dim("a", min=0, max=4096), 1: torch.export.Dim("b", min=0, max=4096)}
    example = torch.zeros(2, 3).to(TORCH_TYPES[datatype])
    program = torch.export.export(MODULES[op](), (example,), dynamic_shapes=(dims,))
    torch.export.save(program, str(folder / "1/model.pt2"))
    (folder / "config.toml").write_text("max_batch_size = 0\n")


TRITON_PYTHON = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", OP(pb_utils.get_input_tensor_by_name(r, "x")
                .as_numpy()))]) for r in requests]
"""
NUMPY_OPS = {"id": lambda x: x, "tr": lambda x: x.T}


def triton_type(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def triton_python_model(folder: Path, datatype: str, op: str) -> None:
    """A TritonPythonModel with its config.pbtxt, as a Triton user writes one."""
    (folder / "1").mkdir(parents=True)
    (folder / "1/model.py").write_text(TRITON_PYTHON.replace("OP", "(lambda x: x.T)" if op == "tr" else ""))
    (folder / "config.pbtxt").write_text(
        f'backend: "python"\nmax_batch_size: 0\n'
        f'input [ {{ name: "x" data_type: {triton_type(datatype)} dims: [ -1, -1 ] }} ]\n'
        f'output [ {{ name: "y" data_type: {triton_type(datatype)} dims: [ -1, -1 ] }} ]\n')


def ensemble(folder: Path, datatype: str) -> None:
    """ONNX's identity, then the Triton Python model's transpose."""
    (folder / "1").mkdir(parents=True)
    steps = [("onnx_id", "x", "mid"), ("tpy_tr", "mid", "y")]
    step_text = ", ".join(f'{{ model_name: "{model}_{datatype.lower()}" model_version: -1 input_map '
                          f'{{ key: "x" value: "{source}" }} output_map {{ key: "y" value: "{target}" }} }}'
                          for model, source, target in steps)
    (folder / "config.pbtxt").write_text(
        f'platform: "ensemble"\nmax_batch_size: 0\n'
        f'input [ {{ name: "x" data_type: {triton_type(datatype)} dims: [ -1, -1 ] }} ]\n'
        f'output [ {{ name: "y" data_type: {triton_type(datatype)} dims: [ -1, -1 ] }} ]\n'
        f"ensemble_scheduling {{ step [ {step_text} ] }}\n")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("datatypes")
    for datatype in [*NUMERIC, "BYTES"]:
        for op in ("id", "tr"):
            onnx_model(root / f"onnx_{op}_{datatype.lower()}/1/model.onnx", datatype, op, 2)
        onnx_model(root / f"onnx_sc_{datatype.lower()}/1/model.onnx", datatype, "id", 0)
    for datatype in NUMERIC:
        for op in ("id", "tr"):
            torchscript_model(root / f"ts_{op}_{datatype.lower()}", datatype, op)
        exported_model(root / f"ex_id_{datatype.lower()}", datatype, "id")
    exported_model(root / "ex_tr_fp32", "FP32", "tr")
    for datatype in [*NUMERIC, "BYTES"]:
        for op in ("id", "tr"):
            triton_python_model(root / f"tpy_{op}_{datatype.lower()}", datatype, op)
        ensemble(root / f"ens_tr_{datatype.lower()}", datatype)
    (root / "py_echo_bytes/1").mkdir(parents=True)
    (root / "py_echo_bytes/1/model.py").write_text(ECHO_MODEL.replace('inputs["in"]', 'inputs["x"]'))
    (root / "py_echo_bytes/config.toml").write_text(echo_config("BYTES").replace('"in"', '"x"'))
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    with serve(repo, grpc=True) as running:
        yield running


def in_process(repo: Path, model: str, x: np.ndarray) -> np.ndarray:
    """The model's answer run here, by its own framework."""
    folder = repo / model / "1"
    family, op = model.split("_")[:2]
    if family == "tpy":  # the model's own numpy
        return NUMPY_OPS[op](x)
    if family == "ens":
        return in_process(repo, f"onnx_id_{model.split('_')[2]}", x).T
    if (folder / "model.onnx").exists():
        if x.dtype == bfloat16():  # onnxruntime's numpy bridge has no bfloat16
            return in_process_onnx_bf16(folder / "model.onnx", x)
        session = loaded(folder / "model.onnx")
        feed = np.vectorize(lambda b: b.decode(), otypes=[object])(x) if x.dtype == object else x
        (y,) = session.run(["y"], {"x": feed})
        return np.vectorize(lambda s: s.encode(), otypes=[object])(y) if y.dtype == object else y
    module = loaded(folder / "model.pt") if (folder / "model.pt").exists() else loaded(folder / "model.pt2")
    tensor = torch.from_numpy(x.view(np.int16)).view(torch.bfloat16) if x.dtype == bfloat16() \
        else torch.from_numpy(np.ascontiguousarray(x))
    y = module(tensor)
    if y.dtype == torch.bfloat16:
        return y.contiguous().view(torch.int16).numpy().view(bfloat16())
    return y.contiguous().numpy()


@functools.cache
def loaded(path: Path) -> Any:
    if path.suffix == ".onnx":
        return ort.InferenceSession(str(path))
    return torch.jit.load(str(path)) if path.suffix == ".pt" else torch.export.load(str(path)).module()


def in_process_onnx_bf16(path: Path, x: np.ndarray) -> np.ndarray:
    """A copy of the model with FP32 tensors around the same op: identity and transpose move bits,
    so FP32 values whose low half is zero come back as the same BF16 values."""
    model = onnx.load(str(path))
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.elem_type = ONNX_TYPES["FP32"]
    session = ort.InferenceSession(model.SerializeToString())
    (y,) = session.run(["y"], {"x": x.astype(np.float32)})
    return y.astype(bfloat16())


def same_bits(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape, (got.shape, want.shape)
    if want.dtype == object:
        assert [bytes(g) if isinstance(g, bytes) else g.encode() for g in got.reshape(-1)] == list(want.reshape(-1))
        return
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.tobytes() == want.tobytes(), (got, want)


# -- the wires ----------------------------------------------------------------------------------

def via_http(server: RunningServer, model: str, x: np.ndarray, datatype: str, binary_in: bool,
             binary_out: bool) -> np.ndarray:
    client = thttp.InferenceServerClient(server.url)
    tensor = thttp.InferInput("x", list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary_in)
    output = thttp.InferRequestedOutput(output_name(model), binary_data=binary_out)
    got = client.infer(model, [tensor], outputs=[output]).as_numpy(output_name(model))
    assert got is not None
    return got


def via_grpc(server: RunningServer, model: str, x: np.ndarray, datatype: str) -> np.ndarray:
    client = tgrpc.InferenceServerClient(server.grpc_url)
    tensor = tgrpc.InferInput("x", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)  # raw_input_contents; the answer comes as raw_output_contents
    got = client.infer(model, [tensor]).as_numpy(output_name(model))
    assert got is not None
    return got


def via_grpc_typed(server: RunningServer, model: str, x: np.ndarray, datatype: str) -> np.ndarray:
    client = tgrpc.InferenceServerClient(server.grpc_url)
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="x", datatype=datatype, shape=list(x.shape))
    getattr(tensor.contents, TYPED_FIELD[datatype]).extend(x.reshape(-1).tolist())
    response = client._client_stub.ModelInfer(request)
    got = tgrpc.InferResult(response).as_numpy(output_name(model))
    assert got is not None
    return got


def output_name(model: str) -> str:
    return "output__0" if model.startswith("ex_") else "out" if model.startswith("py_") else "y"


Wire = Callable[[RunningServer, str, np.ndarray, str], np.ndarray]
WIRES: dict[str, Wire] = {
    "http-binary": lambda s, m, x, d: via_http(s, m, x, d, True, True),
    "http-json": lambda s, m, x, d: via_http(s, m, x, d, False, False),
    "http-json-in-binary-out": lambda s, m, x, d: via_http(s, m, x, d, False, True),
    "http-binary-in-json-out": lambda s, m, x, d: via_http(s, m, x, d, True, False),
    "grpc-raw": via_grpc,
    "grpc-typed": via_grpc_typed,
}


def wire_takes(wire: str, datatype: str) -> bool:
    if wire == "grpc-typed":
        return datatype in TYPED_FIELD
    return not (datatype == "BF16" and wire.startswith("http-json"))  # tritonclient sends BF16 as binary only


def cases(families: list[str], types: list[str]) -> list[Any]:
    return [pytest.param(family, datatype, wire, id=f"{family}-{datatype}-{wire}")
            for family in families for datatype in types for wire in WIRES if wire_takes(wire, datatype)]


@pytest.mark.parametrize(("family", "datatype", "wire"),
                         cases(["onnx", "ts", "ex", "tpy"], NUMERIC) + cases(["onnx", "tpy"], ["BYTES"]))
def test_identity_answers_the_same_bits(server: RunningServer, repo: Path, family: str, datatype: str,
                                        wire: str) -> None:
    model = f"{family}_id_{datatype.lower()}"
    x = sample(datatype, (2, 4))
    same_bits(WIRES[wire](server, model, x, datatype), in_process(repo, model, x))


@pytest.mark.parametrize(("family", "datatype", "wire"),
                         cases(["onnx", "ts", "tpy", "ens"], NUMERIC) + cases(["onnx", "tpy", "ens"], ["BYTES"])
                         + cases(["ex"], ["FP32"]))
def test_a_transposed_output_is_row_major(server: RunningServer, repo: Path, family: str, datatype: str,
                                          wire: str) -> None:
    model = f"{family}_tr_{datatype.lower()}"
    x = sample(datatype, (2, 3))
    got = WIRES[wire](server, model, x, datatype)
    same_bits(got, in_process(repo, model, x))
    assert got.shape == (3, 2)


@pytest.mark.parametrize(("family", "datatype", "wire"), cases(["onnx"], [*NUMERIC, "BYTES"]))
def test_a_scalar_stays_a_scalar(server: RunningServer, repo: Path, family: str, datatype: str, wire: str) -> None:
    model = f"{family}_sc_{datatype.lower()}"
    x = sample(datatype, (1,)).reshape(())
    same_bits(WIRES[wire](server, model, x, datatype), in_process(repo, model, x))


@pytest.mark.parametrize("shape", [(0, 4), (4, 0), (0, 0)])
@pytest.mark.parametrize(("family", "datatype", "wire"),
                         cases(["onnx", "ts", "ex", "tpy"], ["FP32", "INT64", "BF16"])
                         + cases(["onnx", "tpy"], ["BYTES"]))
def test_zero_sized_dims(server: RunningServer, repo: Path, family: str, datatype: str, wire: str,
                         shape: tuple[int, int]) -> None:
    model = f"{family}_id_{datatype.lower()}"
    x = sample(datatype, shape)
    same_bits(WIRES[wire](server, model, x, datatype), in_process(repo, model, x))


@pytest.mark.parametrize("wire", ["http-binary", "grpc-raw"])
@pytest.mark.parametrize("family", ["onnx", "ts", "ex", "tpy", "ens"])
def test_a_large_tensor_and_a_one_element_tensor(server: RunningServer, repo: Path, family: str, wire: str) -> None:
    model = f"{family}_tr_fp32"
    for shape in [(1, 1), (96, 1024)]:
        x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
        same_bits(WIRES[wire](server, model, x, "FP32"), in_process(repo, model, x))


def test_json_writes_tritons_tokens_for_non_finite_floats(server: RunningServer) -> None:
    """Triton's JSON writer (rapidjson, kWriteNanAndInfFlag) writes NaN, Infinity and -Infinity and
    its reader takes them; null would read back as NaN, for an infinity too."""
    body = (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],'
            b' "data": [NaN, Infinity, -Infinity, -0.0]}]}')
    response = requests.post(f"{server.base}/v2/models/onnx_id_fp32/infer", data=body, timeout=10)
    assert response.status_code == 200, response.text
    assert b'"data":[NaN,Infinity,-Infinity,-0.0]' in response.content


def test_big_unsigned_integers_keep_every_digit_in_json(server: RunningServer) -> None:
    body = (b'{"inputs": [{"name": "x", "datatype": "UINT64", "shape": [1, 2],'
            b' "data": [18446744073709551615, 9007199254740993]}]}')
    response = requests.post(f"{server.base}/v2/models/onnx_id_uint64/infer", data=body, timeout=10)
    assert response.status_code == 200, response.text
    assert b'"data":[18446744073709551615,9007199254740993]' in response.content


@pytest.mark.parametrize("wire", ["http-binary", "grpc-raw", "grpc-typed"])
def test_strings_onnx_cannot_hold_are_a_400(server: RunningServer, wire: str) -> None:
    x = np.array([[b"ok", b"\xff\xfe"]], dtype=object)
    with pytest.raises((InferenceServerException, grpc.RpcError)) as caught:
        WIRES[wire](server, "onnx_id_bytes", x, "BYTES")
    assert "input 'x': element 1 is not UTF-8 text" in str(caught.value)
    assert "400" in str(caught.value) or "INVALID_ARGUMENT" in str(caught.value)


def test_bytes_that_are_not_utf8_are_refused_in_json_not_replaced(server: RunningServer) -> None:
    """A BYTES output that JSON cannot carry is a 400 naming the way to ask for it (binary data),
    never a U+FFFD in place of the bytes; the same answer as binary data is exact."""
    x = np.array([[b"ok", b"\xff\xfe\x00"]], dtype=object)
    with pytest.raises(InferenceServerException, match=r"\[400\] output 'out': BYTES element 1 is not UTF-8"):
        via_http(server, "py_echo_bytes", x, "BYTES", True, False)
    same_bits(via_http(server, "py_echo_bytes", x, "BYTES", True, True), x)
