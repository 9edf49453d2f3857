"""The TFLite runtime in this process: its signatures, answers as tf.lite.Interpreter's, load errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inferd.config import ModelConfig
from inferd.errors import ConfigError, InvalidInput
from inferd.runtimes.base import LoadContext
from inferd.runtimes.loader import load_runtime
from tests import tflite_models

X = np.array([[1.0, -2.0, 0.5]], dtype=np.float32)


@pytest.fixture(scope="module")
def lite() -> bytes:
    return tflite_models.calculator_tflite(2.0)


def context(path: Path, config: ModelConfig | None = None) -> LoadContext:
    return LoadContext("calc", "1", path, config or ModelConfig())


def test_every_signature_answers_as_the_interpreter(tmp_path: Path, lite: bytes) -> None:
    runtime = load_runtime("tflite", context(tflite_models.write_tflite(tmp_path, lite)))
    try:
        assert runtime.signature_name == "serving_default"
        assert [(s.name, s.datatype, s.shape) for s in runtime.inputs] == [("x", "FP32", (-1, 3))]
        assert sorted(runtime.other_signatures()) == ["add", "echo"]
        got = runtime.infer({"x": X})
        for key, value in tflite_models.run_signature(lite, "serving_default", x=X).items():
            np.testing.assert_array_equal(got[key], value)
        added = runtime.signature("add").infer({"a": X, "b": 2 * X})["sum"]
        np.testing.assert_array_equal(added, tflite_models.run_signature(lite, "add", a=X, b=2 * X)["sum"])
        words = np.array([b"a\x00", b"bc"], dtype=object)
        echoed = runtime.signature("echo").infer({"s": words})["same"]
        assert echoed.dtype == object and echoed.tolist() == [b"a\x00", b"bc"]
        with pytest.raises(InvalidInput, match="no signature 'nope'; it has add, echo, serving_default"):
            runtime.signature("nope")
        with pytest.raises(InvalidInput, match=r"TFLite could not run inputs x \[3\] \(it takes x \[-1, 3\]\)"):
            runtime.infer({"x": np.ones(3, np.float32)})
        np.testing.assert_array_equal(runtime.infer({"x": X})["scaled"], 2 * X)  # a refused call leaves it usable
    finally:
        runtime.unload()


def test_load_errors_are_clear(tmp_path: Path, lite: bytes) -> None:
    broken = tmp_path / "broken" / "model.tflite"
    broken.parent.mkdir()
    broken.write_bytes(b"not a flatbuffer")
    with pytest.raises(ConfigError, match=r"TFLite model .*broken/model\.tflite did not load"):
        load_runtime("tflite", context(broken))
    good = tflite_models.write_tflite(tmp_path / "good", lite)
    with pytest.raises(ConfigError, match="TFLite models take no parameters"):
        load_runtime("tflite", context(good, ModelConfig(parameters={"TF_SIGNATURE_DEF": "add"})))


def test_an_empty_signature_metadata_buffer_leaves_the_models_own_signatures(tmp_path: Path, lite: bytes) -> None:
    emptied = tflite_models.with_metadata(lite, "signature_defs_metadata", b"")
    runtime = load_runtime("tflite", context(tflite_models.write_tflite(tmp_path, emptied)))
    assert [runtime.signature_name, *sorted(runtime.other_signatures())] == ["serving_default", "add", "echo"]
    np.testing.assert_array_equal(runtime.infer({"x": X})["scaled"], 2 * X)
