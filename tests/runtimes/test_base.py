"""What every runtime does with a model's answer: declared outputs, declared shapes, declared dtypes."""

from __future__ import annotations

import re

import numpy as np
import pytest

from inferd.errors import ModelError
from inferd.runtimes.base import conform_outputs
from inferd.types import TensorSpec

SPECS = (TensorSpec("y", "FP32", (-1, 3)),)


def test_outputs_take_their_declared_dtype() -> None:
    out = conform_outputs({"y": np.ones((2, 3), np.float64)}, SPECS, "m")
    assert out["y"].dtype == np.float32 and out["y"].shape == (2, 3)


@pytest.mark.parametrize("shape", [(2, 4), (6,), (1, 2, 3), ()])
def test_an_output_of_another_shape_is_the_models_error_naming_both(shape: tuple[int, ...]) -> None:
    message = f"output 'y' of shape {list(shape)}, but it declares shape [-1, 3]"
    with pytest.raises(ModelError, match=re.escape(message)):
        conform_outputs({"y": np.zeros(shape)}, SPECS, "m")


def test_an_output_that_does_not_convert_is_the_models_error() -> None:
    with pytest.raises(ModelError, match="does not convert to its declared FP32"):
        conform_outputs({"y": np.array([["a", "b", "c"]])}, SPECS, "m")


def test_unknown_rank_takes_any_shape() -> None:
    spec = (TensorSpec("y", "INT64", (-1,), rank_known=False),)
    assert conform_outputs({"y": np.zeros((2, 2, 2))}, spec, "m")["y"].dtype == np.int64
