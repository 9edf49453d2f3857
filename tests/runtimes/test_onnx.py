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
