from __future__ import annotations

import asyncio

import numpy as np
import pytest

from inferd.config import EnsembleStep, ModelConfig, TensorConfig
from inferd.errors import ModelError
from inferd.runtimes.fake import FakeRuntime
from inferd.scheduling.ensemble import EnsembleScheduler
from inferd.types import CallContext, InferRequest, InferResponse, Tensor, TensorSpec

IN, OUT = (TensorSpec("x", "FP32", (-1,)),), (TensorSpec("y", "FP32", (-1,)),)


def pair() -> dict[str, EnsembleScheduler]:
    """Ensembles "a" and "b", each the other's step, built with no step model to check at load
    (as when two loads race): a request must not recurse."""
    ensembles: dict[str, EnsembleScheduler] = {}

    async def run_step(request: InferRequest) -> InferResponse:
        model = ensembles[request.model_name]
        answer = await model.infer_async({t.name: t.data for t in request.inputs}, CallContext())
        return InferResponse(request.model_name, "1", [Tensor("y", "FP32", answer["y"])])

    for name, step in (("a", "b"), ("b", "a")):
        config = ModelConfig(backend="ensemble", inputs=(TensorConfig("x", "FP32", (-1,)),),
                             outputs=(TensorConfig("y", "FP32", (-1,)),),
                             ensemble=(EnsembleStep(step, -1, {"x": "x"}, {"y": "y"}),))
        runtime = FakeRuntime(IN, OUT, lambda inputs: inputs)
        ensembles[name] = EnsembleScheduler(runtime, config, f"{name}:1", run_step)
    return ensembles


def test_a_step_that_is_an_enclosing_ensemble_is_refused_at_run_time() -> None:
    ensembles = pair()
    refused = r"step 'a' is an ensemble this request runs inside of \(a cycle: a -> b -> a\)"
    with pytest.raises(ModelError, match=refused):
        asyncio.run(ensembles["a"].infer_async({"x": np.ones(2, np.float32)}, CallContext()))


def test_each_step_is_asked_at_the_ensembles_priority() -> None:
    """As Triton's ensemble scheduler (SetPriority of its request's priority on every step)."""
    asked: list[int] = []

    async def run_step(request: InferRequest) -> InferResponse:
        asked.append(request.priority)
        return InferResponse(request.model_name, "1", [Tensor("y", "FP32", request.inputs[0].data)])

    config = ModelConfig(backend="ensemble", inputs=(TensorConfig("x", "FP32", (-1,)),),
                         outputs=(TensorConfig("y", "FP32", (-1,)),),
                         ensemble=(EnsembleStep("step", -1, {"x": "x"}, {"y": "y"}),))
    ensemble = EnsembleScheduler(FakeRuntime(IN, OUT, lambda inputs: inputs), config, "e:1", run_step)
    for priority in (0, 2):
        asyncio.run(ensemble.infer_async({"x": np.ones(2, np.float32)}, CallContext(priority=priority)))
    assert asked == [0, 2]
