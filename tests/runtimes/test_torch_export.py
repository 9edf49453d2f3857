"""torch.export programs: a fixed batch dim cannot be served with batching, and load says how to fix it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inferd.config import parse_model_config
from inferd.errors import ConfigError
from inferd.runtimes.base import LoadContext
from inferd.runtimes.torch import load


class Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _export(path: Path, dynamic: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = Linear().eval()
    shapes = ({0: torch.export.Dim("batch", min=1, max=64)},) if dynamic else None
    torch.export.save(torch.export.export(model, (torch.randn(2, 16),), dynamic_shapes=shapes), str(path))
    return model


def _context(path: Path, max_batch_size: int) -> LoadContext:
    config = parse_model_config({"max_batch_size": max_batch_size}, "config.toml")
    return LoadContext(name="fixed", version="1", artifact=path, config=config)


def test_fixed_batch_with_batching_is_refused_with_the_fix(tmp_path: Path) -> None:
    _export(tmp_path / "model.pt2", dynamic=False)
    with pytest.raises(ConfigError) as caught:
        load(_context(tmp_path / "model.pt2", 8))
    message = caught.value.message
    assert "input 'x' was exported with a fixed batch size of 2" in message
    assert "max_batch_size = 8" in message and "torch.export.Dim('batch')" in message


def test_fixed_batch_without_batching_serves_its_shape(tmp_path: Path) -> None:
    model = _export(tmp_path / "model.pt2", dynamic=False)
    runtime = load(_context(tmp_path / "model.pt2", 0))
    assert runtime.inputs[0].shape == (2, 16)
    x = np.arange(32, dtype=np.float32).reshape(2, 16)
    got = runtime.infer({"x": x})["output__0"]
    np.testing.assert_allclose(got, model(torch.from_numpy(x)).detach().numpy(), rtol=1e-6)


def test_dynamic_batch_serves_any_batch(tmp_path: Path) -> None:
    model = _export(tmp_path / "model.pt2", dynamic=True)
    runtime = load(_context(tmp_path / "model.pt2", 8))
    assert runtime.inputs[0].shape == (-1, 16)
    x = np.ones((5, 16), np.float32)
    np.testing.assert_allclose(runtime.infer({"x": x})["output__0"],
                               model(torch.from_numpy(x)).detach().numpy(), rtol=1e-6)


def test_programs_load_side_by_side(tmp_path: Path) -> None:
    """A repository's versions load on threads at once; torch.export.load keeps its deserializer in
    a global, and two loads at once failed with "_CURRENT_DESERIALIZER is already set"."""
    from concurrent.futures import ThreadPoolExecutor

    _export(tmp_path / "model.pt2", dynamic=True)
    with ThreadPoolExecutor(8) as pool:
        runtimes = list(pool.map(lambda _: load(_context(tmp_path / "model.pt2", 0)), range(8)))
    assert len({id(runtime) for runtime in runtimes}) == 8
    assert all(runtime.inputs[0].shape == (-1, 16) for runtime in runtimes)
