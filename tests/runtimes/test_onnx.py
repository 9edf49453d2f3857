from __future__ import annotations

from pathlib import Path

import pytest

from inferd.config import parse_model_config
from inferd.errors import ConfigError
from inferd.runtimes.base import LoadContext
from inferd.runtimes.onnx import load

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def identity(path: Path, shape: list[int | str]) -> Path:
    """An ONNX model y = x, FP32 of ``shape`` (strings are symbolic dims)."""
    helper = onnx.helper
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def context(artifact: Path, toml: str) -> LoadContext:
    import tomllib

    return LoadContext("m", "1", artifact, parse_model_config(tomllib.loads(toml), "config.toml"))


INPUT = '[[input]]\nname = "x"\ndatatype = "FP32"\nshape = {}\n'


@pytest.mark.parametrize(("toml", "problem"), [
    ("max_batch_size = 4\n" + INPUT.format("[8]"), r"shape \[-1, 8\] \(the batch dim .*has \[-1, 16\]"),
    ("max_batch_size = 4\n" + INPUT.format("[16, 1]"), r"shape \[-1, 16, 1\]"),
    (INPUT.format("[16]"), r"shape \[16\] but the ONNX model has \[-1, 16\]"),
])
def test_a_declared_shape_the_model_cannot_take_fails_the_load(tmp_path: Path, toml: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load(context(identity(tmp_path / "model.onnx", ["batch", 16]), toml))


@pytest.mark.parametrize("toml", [
    "max_batch_size = 4\n" + INPUT.format("[16]"),
    "max_batch_size = 4\n" + INPUT.format("[-1]"),
    INPUT.format("[3, 16]"),
    INPUT.format("[-1, 16]"),
])
def test_a_declared_shape_that_fits_loads(tmp_path: Path, toml: str) -> None:
    runtime = load(context(identity(tmp_path / "model.onnx", ["batch", 16]), toml))
    assert [spec.name for spec in runtime.inputs] == ["x"]


def test_a_mismatch_names_the_file_that_declared_it(tmp_path: Path) -> None:
    from inferd.modelconfig import read_pbtxt

    pbtxt = tmp_path / "config.pbtxt"
    pbtxt.write_text('max_batch_size: 4\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 8 ] } ]\n')
    artifact = identity(tmp_path / "model.onnx", ["batch", 16])
    with pytest.raises(ConfigError, match=r"config\.pbtxt declares input 'x' with shape \[-1, 8\]"):
        load(LoadContext("m", "1", artifact, read_pbtxt(pbtxt)))


def typed_identity(path: Path, element_type: int, shape: list[int | str]) -> Path:
    helper = onnx.helper
    x = helper.make_tensor_value_info("x", element_type, shape)
    y = helper.make_tensor_value_info("y", element_type, shape)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("shape", [[2, 2], [0, 2], []])
def test_strings_cross_as_text_and_come_back_as_bytes(tmp_path: Path, shape: list[int]) -> None:
    """onnxruntime takes str: a bytes element reached the model as its repr ("b'a'")."""
    import numpy as np

    runtime = load(context(typed_identity(tmp_path / "m.onnx", onnx.TensorProto.STRING, ["a", "b"][:len(shape)]),
                           ""))
    x = np.array([b"", b"a\x00b", "é".encode(), b"z"] * 2, dtype=object)[:int(np.prod(shape))].reshape(shape)
    y = runtime.infer({"x": x})["y"]
    assert y.shape == x.shape and y.dtype == object
    assert y.tolist() == x.tolist()


def test_strings_that_are_not_utf8_are_refused_by_name(tmp_path: Path) -> None:
    import numpy as np

    from inferd.errors import InvalidInput

    runtime = load(context(typed_identity(tmp_path / "m.onnx", onnx.TensorProto.STRING, ["n"]), ""))
    with pytest.raises(InvalidInput, match=r"input 'x': element 1 is not UTF-8"):
        runtime.infer({"x": np.array([b"ok", b"\xff"], dtype=object)})


@pytest.mark.parametrize("shape", [[2, 3], [0, 3], []])
def test_bf16_crosses_bit_for_bit(tmp_path: Path, shape: list[int]) -> None:
    """onnxruntime's numpy bridge knows no bfloat16: every BF16 model answered 500."""
    import numpy as np

    from inferd.types import bfloat16

    runtime = load(context(typed_identity(tmp_path / "m.onnx", onnx.TensorProto.BFLOAT16, ["a", "b"][:len(shape)]),
                           ""))
    values = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 3.4e38], dtype=np.float32).astype(bfloat16())
    x = values[:int(np.prod(shape))].reshape(shape)
    y = runtime.infer({"x": x})["y"]
    assert y.dtype == bfloat16() and y.shape == x.shape
    assert y.tobytes() == x.tobytes()
