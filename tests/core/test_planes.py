"""The data plane and model control over a real registry of Python models, without a server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from inferd.auth import AccessPolicy
from inferd.config import ModelConfig
from inferd.core import DataPlane, ModelControl
from inferd.errors import Forbidden, InvalidInput, NotFound, Unauthenticated
from inferd.repository.registry import ModelRegistry
from inferd.runtimes.base import Runtime
from inferd.scheduling.factory import build_scheduler
from inferd.scheduling.scheduler import Scheduler
from inferd.types import InferRequest, ModelState, Tensor
from tests.models import PYTHON_MODEL, write

CONFIG = """
backend = "python"
max_batch_size = 4
[instance_group]
kind = "cpu"
count = 2
[version_policy]
all = true
[[input]]
name = "x"
datatype = "FP64"
shape = [-1]
[[output]]
name = "y"
datatype = "FP64"
shape = [-1]
"""


def wrap(runtime: Runtime, config: ModelConfig, name: str, version: str) -> Scheduler:
    return build_scheduler(runtime, config, name, version)


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry[Scheduler]:
    for version in (1, 2):
        write(tmp_path / "m" / str(version) / "model.py", PYTHON_MODEL)
    write(tmp_path / "m/config.toml", CONFIG)
    write(tmp_path / "broken/config.toml", "max_batch_sise = 4\n")
    (tmp_path / "broken/1").mkdir(parents=True)
    registry: ModelRegistry[Scheduler] = ModelRegistry(tmp_path, wrap=wrap)
    asyncio.run(registry.load_all())
    return registry


def test_index_and_describe_report_the_real_state(registry: ModelRegistry[Scheduler]) -> None:
    control = ModelControl(registry)
    rows = control.index(None)
    assert [(r.name, r.version, r.state) for r in rows] == [
        ("broken", "1", ModelState.UNAVAILABLE), ("m", "1", ModelState.READY), ("m", "2", ModelState.READY)]
    assert "max_batch_sise" in rows[0].reason
    assert [r.version for r in control.index(None, ready_only=True)] == ["1", "2"]
    described = control.describe("m", None)
    assert [(d.version, d.instances, d.busy, d.max_batch_size, d.default) for d in described] == [
        ("1", 2, 0, 4, False), ("2", 2, 0, 4, True)]
    with pytest.raises(NotFound):
        control.describe("absent", None)


def test_changes_need_model_control_and_the_token(registry: ModelRegistry[Scheduler]) -> None:
    with pytest.raises(Forbidden, match="--model-control explicit"):
        ModelControl(registry).scale("m", 3, None)
    guarded = ModelControl(registry, AccessPolicy(model_control=True, token="s3cret"))
    with pytest.raises(Unauthenticated):
        guarded.scale("m", 3, "Bearer wrong")
    with pytest.raises(Unauthenticated):
        asyncio.run(guarded.unload("m", None))
    assert [r.state for r in guarded.index(None) if r.name == "m"] == [ModelState.READY] * 2


def test_scale_resizes_every_version(registry: ModelRegistry[Scheduler]) -> None:
    control = ModelControl(registry, AccessPolicy(model_control=True))
    control.scale("m", 3, None)
    assert [d.instances for d in control.describe("m", None)] == [3, 3]
    with pytest.raises(InvalidInput, match="at least one worker"):
        control.scale("m", 0, None)


def test_infer_answers_like_the_model_and_counts_executions(registry: ModelRegistry[Scheduler]) -> None:
    data = DataPlane(registry)
    x = np.array([[1.0, 2.5, -3.0], [0.0, 4.0, 8.0]])  # two rows of a batch
    response = asyncio.run(data.infer(InferRequest("m", "1", [Tensor("x", "FP64", x)])))
    assert response.model_version == "1"
    np.testing.assert_array_equal(response.outputs[0].data, x * 2 + 10)
    stats = registry.get("m", "1")[0].statistics()
    assert (stats.executions, stats.inferences, stats.busy, stats.queued) == (1, 2, 0, 0)
    assert data.model_metadata("m", None, None).versions == ("1", "2")
    assert data.is_model_ready("m", "2", None) and not data.is_model_ready("broken", None, None)
    assert [s.state for s in data.version_states("m", None, None)] == [ModelState.READY, ModelState.READY]
    with pytest.raises(NotFound):
        data.version_states("m", "9", None)


def test_auth_inference_guards_every_read_but_health(registry: ModelRegistry[Scheduler]) -> None:
    access = AccessPolicy(token="s3cret", guard_inference=True)
    data, control = DataPlane(registry, access=access), ModelControl(registry, access)
    data.set_ready(True)
    reads = [lambda c: data.server_metadata(c), lambda c: data.model_metadata("m", None, c),
             lambda c: data.signature_metadata("m", None, c), lambda c: data.version_states("m", None, c),
             lambda c: data.model_ready("m", None, c), lambda c: data.is_model_ready("m", None, c),
             lambda c: data.authorize(c),
             lambda c: control.index(c), lambda c: control.models(c), lambda c: control.describe("m", c)]
    for read in reads:
        with pytest.raises(Unauthenticated):
            read(None)
        with pytest.raises(Unauthenticated):
            read("Bearer wrong")
        read("Bearer s3cret")
    assert data.live() and data.ready()  # health probes take no credentials


TRITON_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
                for r in requests]
"""


def test_a_front_end_worker_joins_no_requests_for_a_triton_python_model(tmp_path: Path) -> None:
    """Its execute sees each client's request (own id, parameters): requests arriving together at
    a worker go on their own (group_rows 0), while another batched model's may be joined."""
    batched = CONFIG.replace("[version_policy]\nall = true\n", "[dynamic_batching]\n")
    write(tmp_path / "plain/1/model.py", PYTHON_MODEL)
    write(tmp_path / "plain/config.toml", batched)
    write(tmp_path / "triton/1/model.py", TRITON_MODEL)
    write(tmp_path / "triton/config.toml", batched)
    registry: ModelRegistry[Scheduler] = ModelRegistry(tmp_path, wrap=wrap)
    asyncio.run(registry.load_all())
    data = DataPlane(registry)
    assert (data.group_rows("plain", None), data.group_rows("triton", None)) == (4, 0)
    asyncio.run(registry.close())
