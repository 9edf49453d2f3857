"""config.pbtxt's ``optimization`` and backend ``parameters`` (Triton's names) reach the real
frameworks: the onnxruntime session's options, torch's call modes, TensorFlow's signature and tag."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inferd.errors import ConfigError
from inferd.modelconfig import parse_pbtxt
from inferd.runtimes.base import LoadContext
from inferd.runtimes.onnx import load as load_onnx
from inferd.runtimes.torch import TorchRuntime
from inferd.runtimes.torch import load as load_torch
from inferd.types import TensorSpec
from tests.runtimes.test_onnx import identity


def _context(tmp_path: Path, artifact: Path, pbtxt: str) -> LoadContext:
    return LoadContext("m", "1", artifact, parse_pbtxt(pbtxt, str(tmp_path / "config.pbtxt"), "m"))


ONNX = 'backend: "onnxruntime"\n'


@pytest.mark.parametrize(("level", "expected"), [
    (0, "ORT_ENABLE_ALL"), (-1, "ORT_ENABLE_BASIC"), (1, "ORT_ENABLE_EXTENDED"), (2, "ORT_DISABLE_ALL")])
def test_the_graph_level_is_onnxruntimes_as_triton_maps_it(tmp_path: Path, level: int, expected: str) -> None:
    import onnxruntime as ort

    runtime = load_onnx(_context(tmp_path, identity(tmp_path / "model.onnx", [2]),
                                 ONNX + f"optimization {{ graph {{ level: {level} }} }}"))
    options = runtime._session.get_session_options()
    assert options.graph_optimization_level == getattr(ort.GraphOptimizationLevel, expected)


def test_onnxruntime_parameters_set_the_session_and_the_run(tmp_path: Path) -> None:
    import onnxruntime as ort

    pbtxt = ONNX + "\n".join(f'parameters: {{ key: "{key}" value: {{ string_value: "{value}" }} }}' for key, value in (
        ("execution_mode", "1"), ("inter_op_thread_count", "2"), ("intra_op_thread_count", "1"),
        ("enable_mem_arena", "0"), ("enable_mem_pattern", "0"), ("session.use_device_allocator_for_initializers", "1")))
    runtime = load_onnx(_context(tmp_path, identity(tmp_path / "model.onnx", [3]), pbtxt))
    options = runtime._session.get_session_options()
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert (options.inter_op_num_threads, options.intra_op_num_threads) == (2, 1)
    assert (options.enable_cpu_mem_arena, options.enable_mem_pattern) == (False, False)
    assert options.get_session_config_entry("session.use_device_allocator_for_initializers") == "1"
    assert runtime._run_options is None
    shrink = '\nparameters: { key: "memory.enable_memory_arena_shrinkage" value: { string_value: "cpu:0" } }'
    shrinking = load_onnx(_context(tmp_path, tmp_path / "model.onnx", ONNX + shrink))
    assert shrinking._run_options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
    for fine in ("cpu", "cpu:0;"):  # onnxruntime reads both as the CPU arena
        x = np.array([4.0, 5.0, 6.0], np.float32)
        loaded = load_onnx(_context(tmp_path, tmp_path / "model.onnx", ONNX + shrink.replace("cpu:0", fine)))
        np.testing.assert_array_equal(loaded.infer({"x": x})["y"], x)
    for each in (runtime, shrinking):
        x = np.array([1.0, 2.0, 3.0], np.float32)
        np.testing.assert_array_equal(each.infer({"x": x})["y"], x)
    with pytest.raises(ConfigError, match=r"shrinks the CPU arena .* but enable_mem_arena is 0"):
        load_onnx(_context(tmp_path, tmp_path / "model.onnx", pbtxt + shrink))


@pytest.mark.parametrize(("value", "refusal"), [
    ("CPU:0", "arenas as device:id separated by ';'"), ("cpu:x", "arenas as device:id"),
    ("bogus", "arenas as device:id"),
    ("gpu:0", "names arena 'gpu:0', which an instance on cpu has not"), ("gpu", "names arena 'gpu:0'"),
    ("cpu:0;cpu:1", "names arena 'cpu:1'")])
def test_an_arena_shrinkage_list_onnxruntime_would_fail_every_run_on_fails_the_load(
        tmp_path: Path, value: str, refusal: str) -> None:
    """onnxruntime takes any text as the run option and then fails each run with it."""
    pbtxt = ONNX + f'parameters: {{ key: "memory.enable_memory_arena_shrinkage" value: {{ string_value: "{value}" }} }}'
    with pytest.raises(ConfigError, match=refusal):
        load_onnx(_context(tmp_path, identity(tmp_path / "model.onnx", [2]), pbtxt))


def test_an_accelerator_this_onnxruntime_lacks_fails_the_load_naming_it(tmp_path: Path) -> None:
    """Triton fails a load whose accelerator its onnxruntime was built without; so does inferd,
    rather than run on the CPU provider alone."""
    pbtxt = ONNX + 'optimization { execution_accelerators { cpu_execution_accelerator [ { name: "openvino" } ] } }'
    with pytest.raises(ConfigError, match=r"no OpenVINOExecutionProvider .*install onnxruntime-openvino"):
        load_onnx(_context(tmp_path, identity(tmp_path / "model.onnx", [2]), pbtxt))


def test_a_parameter_for_another_backend_fails_an_inferred_onnx_model(tmp_path: Path) -> None:
    """A config.pbtxt that names no backend is checked once the artifact says which it is."""
    pbtxt = 'parameters: { key: "INFERENCE_MODE" value: { string_value: "true" } }'
    with pytest.raises(ConfigError, match="'INFERENCE_MODE' is not one inferd serves for this backend"):
        load_onnx(_context(tmp_path, identity(tmp_path / "model.onnx", [2]), pbtxt))


class _Modes(torch.nn.Module):
    """Answers, beside x + 1, the modes its call ran under: inference mode, TorchScript's optimized
    execution, autograd."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        modes = [torch.is_inference_mode_enabled(), torch._C._get_graph_executor_optimize(), torch.is_grad_enabled()]
        return x + 1, torch.tensor(modes)


def _modes(parameters: dict[str, str]) -> list[bool]:
    specs = (TensorSpec("x", "FP32", (2,)),)
    outputs = (TensorSpec("y", "FP32", (2,)), TensorSpec("modes", "BOOL", (3,)))
    runtime = TorchRuntime(_Modes(), "pytorch_libtorch", specs, outputs, 0, "cpu", "m", parameters=parameters)
    answer = runtime.infer({"x": np.zeros(2, np.float32)})
    np.testing.assert_array_equal(answer["y"], np.ones(2, np.float32))
    return [bool(v) for v in answer["modes"]]


def test_torch_calls_run_under_the_modes_its_parameters_ask() -> None:
    assert _modes({}) == [False, True, False]
    assert _modes({"INFERENCE_MODE": "true", "DISABLE_OPTIMIZED_EXECUTION": "true"}) == [True, False, False]
    assert _modes({"INFERENCE_MODE": "false", "DISABLE_OPTIMIZED_EXECUTION": "0"}) == [False, True, False]
    assert torch._C._get_graph_executor_optimize()  # the switch is the call's only


def test_torch_threads_and_refusals_at_load(tmp_path: Path) -> None:
    module = torch.jit.script(torch.nn.Linear(2, 2))
    module.save(str(tmp_path / "model.pt"))
    io = ('input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
          'output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 2 ] } ]\n')
    before = torch.get_num_threads()
    try:
        threads = 'parameters: { key: "INTRA_OP_THREAD_COUNT" value: { string_value: "1" } }'
        pbtxt = 'backend: "pytorch"\n' + io + threads
        runtime = load_torch(_context(tmp_path, tmp_path / "model.pt", pbtxt))
        assert torch.get_num_threads() == 1
        x = np.ones(2, np.float32)
        np.testing.assert_allclose(runtime.infer({"INPUT__0": x})["OUTPUT__0"],
                                   module(torch.from_numpy(x)).detach().numpy(), rtol=1e-6)
    finally:
        torch.set_num_threads(before)
    accelerated = ('backend: "pytorch"\n' + io +
                   'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" } ] } }')
    with pytest.raises(ConfigError, match="execution_accelerators are applied to onnxruntime models only"):
        load_torch(_context(tmp_path, tmp_path / "model.pt", accelerated))


def test_tensorflow_serves_the_signature_and_tag_its_parameters_name(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    from inferd.runtimes.tensorflow import load as load_tf
    from tests import tf_models

    tf_models.build(tmp_path)
    artifact = tmp_path / "calculator" / "1" / "model.savedmodel"
    parameter = 'parameters: {{ key: "{}" value: {{ string_value: "{}" }} }}\n'
    pbtxt = 'backend: "tensorflow"\n' + parameter.format("TF_SIGNATURE_DEF", "add") + parameter.format(
        "TF_NUM_INTRA_THREADS", "1") + parameter.format("TF_NUM_INTER_THREADS", "1")
    runtime = load_tf(_context(tmp_path, artifact, pbtxt))
    try:
        assert [spec.name for spec in runtime.inputs] == ["a", "b"]
        answer = runtime.infer({"a": np.array([2, 3], np.int64), "b": np.array([5, 7], np.int64)})
        expected = tf_models.run_signature(artifact, "add", a=np.array([2, 3], np.int64), b=np.array([5, 7], np.int64))
        np.testing.assert_array_equal(answer["total"], expected["total"])
    finally:
        runtime.unload()
    with pytest.raises(ConfigError, match="TF_SIGNATURE_DEF is 'nope', but the SavedModel's signatures are"):
        load_tf(_context(tmp_path, artifact, 'backend: "tensorflow"\n' + parameter.format("TF_SIGNATURE_DEF", "nope")))
    with pytest.raises(ConfigError, match="did not load"):
        load_tf(_context(tmp_path, artifact, 'backend: "tensorflow"\n' + parameter.format("TF_GRAPH_TAG", "train")))
    with pytest.raises(ConfigError, match=r"graph\.level 1 is not applied to TensorFlow models"):
        load_tf(_context(tmp_path, artifact, 'backend: "tensorflow"\noptimization { graph { level: 1 } }'))
