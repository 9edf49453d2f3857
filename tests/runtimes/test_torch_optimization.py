"""[optimization] on the CPU: bf16 and channels_last answer like the model in-process (bf16 within
the tolerance its 8-bit mantissa allows), padded batches answer exactly like unpadded ones, warm-up
runs every size at load, torch.compile serves an exported program, and what the CPU cannot do
(fp16, CUDA graphs) or TorchScript cannot (torch.compile) is refused at load with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from inferd.config import Optimization, parse_model_config
from inferd.errors import ConfigError
from inferd.runtimes.base import LoadContext
from inferd.runtimes.torch import load
from inferd.runtimes.torch_exec import Executor

# bf16 keeps 8 bits of mantissa: relative error ~2^-8 per rounding, a few roundings deep here
BF16_ATOL = 0.05


class Cnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def cnn() -> torch.nn.Module:
    torch.manual_seed(3)
    model = Cnn().eval()
    with torch.no_grad():  # non-trivial running statistics, so batch norm's folding matters
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


def save(folder: Path, model: torch.nn.Module) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.script(model).save(str(folder / "model.pt"))
    program = torch.export.export(model, (torch.randn(2, 3, 16, 16),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", max=64)},))
    torch.export.save(program, str(folder / "model.pt2"))


def context(folder: Path, artifact: str, optimization: dict[str, Any], max_batch_size: int = 8,
            count: int = 1) -> LoadContext:
    config = parse_model_config({
        "max_batch_size": max_batch_size,
        "input": [{"name": "x", "datatype": "FP32", "shape": [3, 16, 16]}],
        "output": [{"name": "y", "datatype": "FP32", "shape": [5]}],
        "instance_group": {"count": count},
        "optimization": optimization,
    }, "config.toml")
    return LoadContext(name="cnn", version="1", artifact=folder / artifact, config=config)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cnn")
    save(path, cnn())
    return path


def images(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 3, 16, 16)).astype(np.float32)


def expected(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return cnn()(torch.from_numpy(x)).numpy()  # type: ignore[no-any-return]


@pytest.mark.parametrize("artifact", ["model.pt", "model.pt2"])
def test_bf16_channels_last_answers_fp32_close_to_the_model(folder: Path, artifact: str) -> None:
    runtime = load(context(folder, artifact, {"precision": "bf16", "channels_last": True, "warmup": True}))
    runtime.warmup()
    x = images(3)
    y = runtime.infer({"x": x})["y"]
    assert y.dtype == np.float32 and y.shape == (3, 5)  # the declared dtype, not bf16
    np.testing.assert_allclose(y, expected(x), atol=BF16_ATOL)
    with torch.no_grad():  # and it is the bf16 model that ran: the same numbers as bf16 in-process
        model = cnn().to(torch.bfloat16).to(memory_format=torch.channels_last)
        inputs = torch.from_numpy(x).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        bf16 = model(inputs).float().numpy()
    np.testing.assert_allclose(y, bf16, atol=1e-2)
    assert not np.array_equal(y, expected(x))
    assert "bf16, channels_last" in runtime.describe()


@pytest.mark.parametrize("rows", [1, 3, 5, 8])
def test_a_batch_padded_to_the_nearest_size_answers_like_the_unpadded_one(folder: Path, rows: int) -> None:
    runtime = load(context(folder, "model.pt", {"batch_sizes": [2, 4, 8]}))
    x = images(rows, seed=rows)
    y = runtime.infer({"x": x})["y"]
    assert y.shape == (rows, 5)  # the padding rows are sliced off
    np.testing.assert_allclose(y, expected(x), rtol=1e-5, atol=1e-6)


def test_a_batch_larger_than_every_size_runs_in_pieces(folder: Path) -> None:
    runtime = load(context(folder, "model.pt2", {"batch_sizes": [2]}))
    x = images(7)
    np.testing.assert_allclose(runtime.infer({"x": x})["y"], expected(x), rtol=1e-5, atol=1e-6)


class Counting(torch.nn.Module):
    """Records the batch sizes it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.shape[0])
        return x.sum(dim=1)


def test_warmup_runs_every_size_on_every_instance_before_the_first_request() -> None:
    from inferd.types import TensorSpec

    module = Counting()
    spec = (TensorSpec("x", "FP32", (-1, 4)),)
    executor = Executor(torch, module, torch.device("cpu"), spec,
                        Optimization(batch_sizes=(1, 4, 16), warmup=True), 16, "counting", "pytorch_export")
    executor.add_lanes(2)
    executor.warm_up()
    assert module.seen == [1, 4, 16, 1, 4, 16]
    module.seen.clear()
    out = executor.run({"x": np.ones((3, 4), np.float32)})
    assert module.seen == [4] and out[0].shape == (3,)
    module.seen.clear()
    Executor(torch, module, torch.device("cpu"), spec, Optimization(warmup=True), 16, "counting",
             "pytorch_export").warm_up()  # no lanes yet: nothing to warm; with lanes, 1 and max
    plain = Executor(torch, module, torch.device("cpu"), spec, Optimization(warmup=True), 16, "counting",
                     "pytorch_export")
    plain.add_lanes(1)
    plain.warm_up()
    assert module.seen == [1, 16]


def test_warmup_needs_fixed_shapes(tmp_path: Path) -> None:
    save(tmp_path, cnn())
    config = parse_model_config({
        "max_batch_size": 8, "optimization": {"warmup": True},
        "input": [{"name": "x", "datatype": "FP32", "shape": [3, -1, -1]}],
        "output": [{"name": "y", "datatype": "FP32", "shape": [5]}],
    }, "config.toml")
    runtime = load(LoadContext(name="cnn", version="1", artifact=tmp_path / "model.pt", config=config))
    with pytest.raises(ConfigError, match=r"input 'x' is FP32 \[-1, 3, -1, -1\]; declare its shape"):
        runtime.warmup()


@pytest.mark.parametrize(("optimization", "reason"), [
    ({"precision": "fp16"}, 'precision = "fp16" needs a GPU'),
    ({"compile": "cuda_graphs"}, 'compile = "cuda_graphs" needs a GPU'),
    ({"compile": "torch_compile"}, "cannot trace a TorchScript module"),
])
def test_what_cannot_be_honoured_is_refused_at_load(folder: Path, optimization: dict[str, Any],
                                                     reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        load(context(folder, "model.pt", optimization))


def test_torch_compile_serves_an_exported_program(folder: Path) -> None:
    runtime = load(context(folder, "model.pt2", {"compile": "torch_compile", "batch_sizes": [4]}, max_batch_size=4))
    runtime.warmup()  # compiles the one size at load
    x = images(3)
    np.testing.assert_allclose(runtime.infer({"x": x})["y"], expected(x), rtol=1e-4, atol=1e-5)
    assert "torch_compile" in runtime.describe()
