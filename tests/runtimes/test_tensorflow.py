"""The TensorFlow runtime in-process: signatures share one session, which closes with the last."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inferd.config import ModelConfig
from inferd.errors import InvalidInput
from inferd.runtimes.base import LoadContext
from inferd.runtimes.loader import load_runtime
from tests import tf_models


def test_signatures_share_the_session_until_the_last_unloads(tmp_path: Path) -> None:
    tf_models.build_half_plus_two_tf1(tmp_path / "1")
    runtime = load_runtime("tensorflow", LoadContext("hp", "1", tmp_path / "1", ModelConfig()))
    others = runtime.other_signatures()
    assert runtime.signature_name == "serving_default"
    assert sorted(others) == ["any_rank", "classify_x_to_y", "regress_x_to_y", "regress_x_to_y2"]
    assert [(s.name, s.shape, s.rank_known) for s in others["any_rank"].inputs] == [("z", (-1,), False)]
    np.testing.assert_array_equal(runtime.infer({"x": np.array([[2.0]], np.float32)})["y"], [[3.0]])
    with pytest.raises(InvalidInput, match="model 'hp' signature 'serving_default'"):
        runtime.infer({"x": np.ones((2, 3), np.float64)})  # the graph refuses a double
    runtime.unload()
    z = others["any_rank"].infer({"z": np.full((2, 2), 4.0, np.float32)})["w"]
    np.testing.assert_array_equal(z, np.full((2, 2), 2.0))
    for other in others.values():
        other.unload()
    with pytest.raises(Exception, match="closed"):
        others["any_rank"].infer({"z": np.ones(1, np.float32)})


def test_only_warmup_of_the_optimization_options_applies_to_tensorflow(tmp_path: Path) -> None:
    from inferd.config import parse_model_config
    from inferd.errors import ConfigError

    tf_models.build_half_plus_two_tf1(tmp_path / "1")
    refused = parse_model_config({"optimization": {"precision": "bf16"}}, "config.toml")
    with pytest.raises(ConfigError, match="\\[optimization\\] precision is honoured by torch models only; "
                                          "TensorFlow cannot apply it"):
        load_runtime("tensorflow", LoadContext("hp", "1", tmp_path / "1", refused))
    unbatched = parse_model_config({"optimization": {"warmup": True}}, "config.toml")
    runtime = load_runtime("tensorflow", LoadContext("hp", "1", tmp_path / "1", unbatched))
    with pytest.raises(ConfigError, match=r"input 'x' is FP32 \[-1, 1\]; declare its shape"):
        runtime.warmup()  # without batching, x's -1 has no size to warm up with
    runtime.unload()
    batched = parse_model_config({"max_batch_size": 4, "optimization": {"warmup": True}}, "config.toml")
    runtime = load_runtime("tensorflow", LoadContext("hp", "1", tmp_path / "1", batched))
    runtime.warmup()  # rows of 1 and 4
    np.testing.assert_array_equal(runtime.infer({"x": np.array([[2.0]], np.float32)})["y"], [[3.0]])
    runtime.unload()
