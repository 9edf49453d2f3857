"""Triton's ragged batching on the real server: an ONNX model that takes a ragged input flat and
Triton's BATCH_ACCUMULATED_ELEMENT_COUNT, fed by tritonclient requests of different lengths."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import RunningServer, holds_in_one_of, serve
from tests.models import write
from tests.triton_models import IDENTITY

PYTHON_RAGGED = """
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
dynamic_batching { max_queue_delay_microseconds: 100000 }
"""

CONFIG = """
backend: "onnxruntime"
max_batch_size: 16
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]
output [
  { name: "SUM" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "TOTAL" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "DOUBLED" data_type: TYPE_FP32 dims: [ -1 ] }
]
batch_input [ { kind: BATCH_ACCUMULATED_ELEMENT_COUNT target_name: "INDEX" data_type: TYPE_INT32
                source_input: "INPUT" } ]
batch_output [ { target_name: "DOUBLED" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "INPUT" } ]
dynamic_batching { max_queue_delay_microseconds: 500000 }
instance_group [ { count: 1 kind: KIND_CPU } ]
model_warmup [ { name: "ragged" batch_size: 1
                 inputs { key: "INPUT" value: { data_type: TYPE_FP32 dims: [ 6 ] random_data: true } } } ]
"""


def segment_sum_model(path: Path) -> None:
    """SUM: each request's sum, from INPUT (the batch's elements joined, 1-D) and INDEX (where each
    request's elements end); TOTAL: the batch's element count (which requests shared an execution);
    DOUBLED: INPUT × 2, flat, for the server to scatter back."""
    import onnx

    h, f32, i32, i64 = onnx.helper, onnx.TensorProto.FLOAT, onnx.TensorProto.INT32, onnx.TensorProto.INT64

    def const(name: str, values: list[int]) -> onnx.NodeProto:
        return h.make_node("Constant", [], [name], value=h.make_tensor(name, i64, [len(values)], values))

    def count_up(shape: str, out: str) -> list[onnx.NodeProto]:  # 0 .. n-1 for a shape [n]
        one = h.make_tensor(f"{out}_one", i64, [1], [1])
        return [h.make_node("ConstantOfShape", [shape], [f"{out}_ones"], value=one),
                h.make_node("CumSum", [f"{out}_ones", "zero"], [f"{out}_to"]),
                h.make_node("Sub", [f"{out}_to", "one"], [out])]

    nodes = [const("zero", [0]), const("one", [1]), const("axis1", [1]),
             h.make_node("Constant", [], ["two"], value=h.make_tensor("two", f32, [], [2.0])),
             h.make_node("Shape", ["INPUT"], ["total"]), h.make_node("Shape", ["INDEX"], ["n"]),
             *count_up("total", "position"), *count_up("n", "request"),
             h.make_node("Cast", ["INDEX"], ["ends"], to=i64),
             h.make_node("Unsqueeze", ["position", "axis1"], ["position_col"]),
             h.make_node("Unsqueeze", ["ends", "zero"], ["ends_row"]),
             h.make_node("GreaterOrEqual", ["position_col", "ends_row"], ["past"]),
             h.make_node("Cast", ["past"], ["past_count"], to=i64),
             h.make_node("ReduceSum", ["past_count", "axis1"], ["owner"], keepdims=1),  # [T, 1]: its request
             h.make_node("Unsqueeze", ["request", "zero"], ["request_row"]),
             h.make_node("Equal", ["owner", "request_row"], ["mine"]),
             h.make_node("Cast", ["mine"], ["mask"], to=f32),
             h.make_node("Unsqueeze", ["INPUT", "zero"], ["input_row"]),
             h.make_node("MatMul", ["input_row", "mask"], ["sums_row"]),
             h.make_node("Transpose", ["sums_row"], ["SUM"], perm=[1, 0]),
             h.make_node("Concat", ["n", "one"], ["n_by_1"], axis=0),
             h.make_node("Cast", ["total"], ["total32"], to=i32),
             h.make_node("Expand", ["total32", "n_by_1"], ["TOTAL"]),
             h.make_node("Mul", ["INPUT", "two"], ["DOUBLED"])]
    graph = h.make_graph(nodes, "segment_sum",
                         [h.make_tensor_value_info("INPUT", f32, ["T"]), h.make_tensor_value_info("INDEX", i32, ["N"])],
                         [h.make_tensor_value_info("SUM", f32, ["N", 1]),
                          h.make_tensor_value_info("TOTAL", i32, ["N", 1]),
                          h.make_tensor_value_info("DOUBLED", f32, ["T"])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def alone(artifact: Path, values: np.ndarray) -> dict[str, np.ndarray]:
    """The model run in-process on one request, as the server would run it alone."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    flat = values.reshape(-1)
    names = ["SUM", "TOTAL", "DOUBLED"]
    return dict(zip(names, session.run(names, {"INPUT": flat, "INDEX": np.array([flat.size], np.int32)}),
                    strict=True))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ragged")
    segment_sum_model(root / "segments/1/model.onnx")
    write(root / "segments/config.pbtxt", CONFIG)
    segment_sum_model(root / "not_flat/1/model.onnx")
    write(root / "not_flat/config.pbtxt", CONFIG.replace('dims: [ -1 ] allow_ragged_batch: true',
                                                         'dims: [ -1 ]'))
    write(root / "no_batcher/config.pbtxt", CONFIG.replace("dynamic_batching", "# "))
    segment_sum_model(root / "no_batcher/1/model.onnx")
    write(root / "python_ragged/1/model.py", IDENTITY)
    write(root / "python_ragged/config.pbtxt", PYTHON_RAGGED)
    write(root / "python_batch_input/1/model.py", IDENTITY)
    write(root / "python_batch_input/config.pbtxt", PYTHON_RAGGED + 'batch_input [ { target_name: "N" '
          'data_type: TYPE_INT32 source_input: "INPUT0" } ]\n')
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    with serve(repository, grpc=True) as running:
        yield running


def test_requests_of_different_lengths_share_a_batch_and_get_their_own_answers(
        server: RunningServer, repository: Path) -> None:
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(server.grpc_url)
    lengths = [16, 1, 128, 4, 32, 2, 64, 8]  # powers of two: a batch's total names the requests in it
    inputs = {n: (np.arange(n, dtype=np.float32) * 0.5 + n).reshape(1, n) for n in lengths}

    def call(n: int) -> dict[str, np.ndarray]:
        tensor = triton.InferInput("INPUT", [1, n], "FP32")
        tensor.set_data_from_numpy(inputs[n])
        result = client.infer("segments", [tensor])
        return {name: result.as_numpy(name) for name in ("SUM", "TOTAL", "DOUBLED")}

    def check() -> str | None:
        with ThreadPoolExecutor(len(lengths)) as pool:
            answers = dict(zip(lengths, pool.map(call, lengths), strict=True))
        for n, answer in answers.items():
            expected = alone(repository / "segments/1/model.onnx", inputs[n])
            assert answer["SUM"].shape == (1, 1)
            np.testing.assert_allclose(answer["SUM"], expected["SUM"], rtol=1e-6)
            np.testing.assert_allclose(answer["SUM"], [[inputs[n].sum()]], rtol=1e-6)
            assert answer["DOUBLED"].shape == (1, n)  # scattered with INPUT's shape in this request
            assert answer["DOUBLED"].reshape(-1).tolist() == expected["DOUBLED"].tolist()
        batches: dict[int, list[int]] = {}
        for n, answer in answers.items():
            batches.setdefault(int(answer["TOTAL"][0, 0]), []).append(n)
        for total, members in batches.items():  # each answer came from the batch its total says
            assert sum(members) == total, f"requests of {members} elements answered from a batch of {total}"
        return None if len(batches) < len(lengths) else f"every request ran alone: batches {batches}"

    holds_in_one_of(3, check)


def test_the_config_answers_the_ragged_keys_back(server: RunningServer) -> None:
    import tritonclient.http as triton_http

    config = triton_http.InferenceServerClient(server.url).get_model_config("segments")
    assert config["input"][0]["allow_ragged_batch"] is True
    assert config["batch_input"] == [{"kind": "BATCH_ACCUMULATED_ELEMENT_COUNT", "target_name": ["INDEX"],
                                      "data_type": "TYPE_INT32", "source_input": ["INPUT"]}]
    assert config["batch_output"][0]["target_name"] == ["DOUBLED"]
    import tritonclient.grpc as triton_grpc
    from tritonclient.grpc import model_config_pb2

    message = triton_grpc.InferenceServerClient(server.grpc_url).get_model_config("segments").config
    assert message.input[0].allow_ragged_batch  # Triton's field numbers: its own client reads them
    assert message.batch_input[0].kind == model_config_pb2.BatchInput.BATCH_ACCUMULATED_ELEMENT_COUNT
    assert list(message.batch_output[0].source_input) == ["INPUT"]
    metadata = triton_http.InferenceServerClient(server.url).get_model_metadata("segments")
    assert [tensor["name"] for tensor in metadata["inputs"]] == ["INPUT"]  # INDEX is the server's


def test_sending_the_batch_input_is_refused_saying_the_server_computes_it(server: RunningServer) -> None:
    import requests

    body = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]},
                       {"name": "INDEX", "datatype": "INT32", "shape": [1], "data": [2]}]}
    answer = requests.post(f"{server.base}/v2/models/segments/infer", json=body, timeout=10)
    assert answer.status_code == 400
    assert "BATCH_ACCUMULATED_ELEMENT_COUNT" in answer.json()["error"]


def test_bad_ragged_configs_are_load_errors_saying_why(server: RunningServer) -> None:
    import requests

    index = {row["name"]: row for row in requests.post(f"{server.base}/v2/repository/index", timeout=5).json()}
    assert index["not_flat"]["state"] == "UNAVAILABLE"
    assert "declares input 'INPUT' with shape [-1, -1]" in index["not_flat"]["reason"]
    assert index["no_batcher"]["state"] == "UNAVAILABLE"
    assert "need dynamic_batching" in index["no_batcher"]["reason"]
    assert index["python_batch_input"]["state"] == "UNAVAILABLE"
    assert "batch_input and batch_output are not served for a model that takes a batch as its requests" in \
        index["python_batch_input"]["reason"]


def test_a_python_model_takes_ragged_requests_each_as_it_came(server: RunningServer) -> None:
    """Triton's Python models get a batch as its requests: ragged ones batch together, nothing is joined."""
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(server.grpc_url)

    def call(n: int) -> np.ndarray:
        tensor = triton.InferInput("INPUT0", [1, n], "FP32")
        tensor.set_data_from_numpy(np.full((1, n), n, np.float32))
        return client.infer("python_ragged", [tensor]).as_numpy("OUTPUT0")

    lengths = [3, 9, 1, 6, 2]
    with ThreadPoolExecutor(len(lengths)) as pool:
        for n, answer in zip(lengths, pool.map(call, lengths), strict=True):
            assert answer.tolist() == np.full((1, n), n, np.float32).tolist()
