"""The GPU paths' parts that run anywhere: instances spread over the listed GPUs, a device memory
error is a clear ModelError that leaves the instance serving, ONNX and TensorFlow refuse the options
only torch honours and warm up when asked."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from inferd.config import Optimization, parse_model_config
from inferd.errors import ConfigError, ModelError
from inferd.runtimes.base import LoadContext
from inferd.runtimes.fake import FakeRuntime
from inferd.runtimes.spread import DeviceSpread
from inferd.runtimes.torch_exec import Executor
from inferd.types import TensorSpec
from tests import models

SPEC = (TensorSpec("x", "FP32", (-1, 8)),)
OUT = (TensorSpec("y", "FP32", (-1,)),)


def tagged(tag: float) -> FakeRuntime:
    return FakeRuntime(SPEC, OUT, lambda inputs: {"y": np.full(len(inputs["x"]), tag, np.float32)}, 8)


def test_instance_threads_are_spread_over_the_devices_in_turn() -> None:
    devices = [tagged(0.0), tagged(1.0)]
    spread = DeviceSpread(list(devices))
    seen: list[float] = []
    barrier = threading.Barrier(4)

    def instance() -> None:
        barrier.wait()
        for _ in range(3):  # a thread keeps its device
            seen.append(float(spread.infer({"x": np.ones((2, 8), np.float32)})["y"][0]))

    threads = [threading.Thread(target=instance) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(seen) == [0.0] * 6 + [1.0] * 6  # two threads on each device, three calls each
    assert devices[0].calls == [2, 2, 2, 2, 2, 2] and devices[1].calls == [2, 2, 2, 2, 2, 2]
    assert spread.inputs == SPEC and spread.max_batch_size == 8


class RunsOutOnce(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.failed:
            self.failed = True
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return x * 2


def test_out_of_memory_is_a_clear_model_error_and_the_instance_serves_on() -> None:
    executor = Executor(torch, RunsOutOnce(), torch.device("cpu"), SPEC, Optimization(), 8, "big", "pytorch_export")
    executor.add_lanes(1)
    x = np.ones((4, 8), np.float32)
    with pytest.raises(ModelError, match=r"model 'big' ran out of memory on cpu running a batch of 4 rows; "
                                         r"retry, or lower max_batch_size: CUDA out of memory"):
        executor.run({"x": x})
    np.testing.assert_array_equal(executor.run({"x": x})[0].numpy(), x * 2)  # its lane came back


def onnx_context(tmp_path: Path, optimization: dict[str, object], shape: list[int]) -> LoadContext:
    torch.onnx.export(models.mlp(), (torch.randn(2, 8),), str(tmp_path / "model.onnx"), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False)
    config = parse_model_config({"max_batch_size": 8, "optimization": optimization,
                                 "input": [{"name": "x", "datatype": "FP32", "shape": shape}],
                                 "output": [{"name": "y", "datatype": "FP32", "shape": [5]}]}, "config.toml")
    return LoadContext(name="mlp", version="1", artifact=tmp_path / "model.onnx", config=config)


@pytest.mark.parametrize("key", ["precision", "channels_last", "compile", "batch_sizes"])
def test_onnx_refuses_what_only_torch_honours(tmp_path: Path, key: str) -> None:
    from inferd.runtimes.onnx import load

    value = {"precision": "bf16", "channels_last": True, "compile": "torch_compile", "batch_sizes": [4]}[key]
    with pytest.raises(ConfigError, match=f"\\[optimization\\] {key} is honoured by torch models only; "
                                          "onnxruntime cannot apply it"):
        load(onnx_context(tmp_path, {key: value}, [8]))


def test_onnx_warms_up_when_asked(tmp_path: Path) -> None:
    from inferd.runtimes.onnx import load

    runtime = load(onnx_context(tmp_path, {"warmup": True}, [8]))
    runtime.warmup()
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_allclose(runtime.infer({"x": x})["y"], models.run_mlp(x), rtol=1e-4, atol=1e-5)
    assert "CPUExecutionProvider" in runtime.describe()


def test_generic_warmup_runs_a_batch_of_one_and_of_the_maximum() -> None:
    from inferd.runtimes.base import warm_up

    runtime = tagged(0.0)
    config = parse_model_config({"max_batch_size": 8, "optimization": {"warmup": True}}, "config.toml")
    warm_up(runtime, config, "fake")
    assert runtime.calls == [1, 8]
    warm_up(runtime, parse_model_config({"max_batch_size": 8}, "config.toml"), "fake")
    assert runtime.calls == [1, 8]  # not asked: nothing ran
