"""ONNX models through onnxruntime. Inputs and outputs come from the model unless its configuration says."""

from __future__ import annotations

import ctypes
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from inferd.config import Accelerator, ModelConfig
from inferd.errors import ConfigError, InvalidInput
from inferd.modelconfig.backend_parameters import arena_devices, check_parameters, count
from inferd.runtimes.base import (
    Arrays,
    LoadContext,
    Runtime,
    refuse_torch_options,
    specs_from_config,
    warm_up,
)
from inferd.types import TensorSpec, bfloat16

_V2_BY_ONNX = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(int8)": "INT8",
    "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16", "tensor(string)": "BYTES",
}


GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


class OnnxRuntime(Runtime):
    platform = "onnxruntime_onnx"

    def __init__(self, session: Any, inputs: tuple[TensorSpec, ...],
                 outputs: tuple[TensorSpec, ...], max_batch_size: int, config: ModelConfig | None = None,
                 name: str = "", run_options: Any = None) -> None:
        self._session = session
        self._run_options = run_options  # None, or the run's memory settings
        self._config = config or ModelConfig()
        self._name = name
        self.inputs = inputs
        self.outputs = outputs
        self.max_batch_size = max_batch_size
        self._output_names = [spec.name for spec in outputs]
        self._text_inputs = [spec.name for spec in inputs if spec.datatype == "BYTES"]
        self._text_outputs = [spec.name for spec in outputs if spec.datatype == "BYTES"]
        self._bf16 = any(spec.datatype == "BF16" for spec in inputs + outputs)

    def infer(self, inputs: Arrays) -> Arrays:
        for name in self._text_inputs:
            inputs = {**inputs, name: _as_text(name, inputs[name])}
        if self._bf16:
            values = _run_bf16(self._session, self._output_names, inputs, self._run_options)
        else:
            values = self._session.run(self._output_names, inputs, self._run_options)
        outputs = dict(zip(self._output_names, values, strict=True))
        for name in self._text_outputs:
            outputs[name] = _as_bytes(outputs[name])
        return outputs

    def warmup(self) -> None:
        warm_up(self, self._config, self._name)

    def describe(self) -> str:
        return f"{self.platform} on {', '.join(self._session.get_providers())}"


def _as_text(name: str, array: np.ndarray) -> np.ndarray:
    """BYTES as onnxruntime's strings: it takes Python str (a bytes object would become its repr,
    "b'...'"), so elements must be UTF-8 text."""
    flat = array.reshape(-1)
    out = np.empty(flat.size, dtype=object)
    for index, item in enumerate(flat):
        try:
            out[index] = item.decode("utf-8") if isinstance(item, bytes) else str(item)
        except UnicodeDecodeError:
            raise InvalidInput(f"input '{name}': element {index} is not UTF-8 text, which an ONNX string "
                               "tensor needs") from None
    return out.reshape(array.shape)


def _as_bytes(array: np.ndarray) -> np.ndarray:
    """onnxruntime's strings as BYTES elements (bytes, as every runtime answers them)."""
    flat = array.reshape(-1)
    out = np.empty(flat.size, dtype=object)
    for index, item in enumerate(flat):
        out[index] = item.encode("utf-8") if isinstance(item, str) else bytes(item)
    return out.reshape(array.shape)


_ONNX_BFLOAT16 = 16  # TensorProto.BFLOAT16


def _run_bf16(session: Any, output_names: list[str], inputs: Arrays, run_options: Any) -> list[np.ndarray]:
    """A run with BF16 tensors: onnxruntime's numpy bridge knows no bfloat16, so they cross as
    OrtValues over their 16-bit patterns, and BF16 outputs are copied out of the OrtValue's buffer."""
    import onnxruntime as ort

    values = {}
    for name, array in inputs.items():
        if array.dtype == bfloat16():
            values[name] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                np.asarray(array, order="C").view(np.uint16), _ONNX_BFLOAT16)
        else:
            values[name] = ort.OrtValue.ortvalue_from_numpy(np.asarray(array, order="C"))
    results = session.run_with_ort_values(output_names, values, run_options)
    return [_bf16_numpy(value) if value.data_type() == "tensor(bfloat16)" else value.numpy()
            for value in results]


def _bf16_numpy(value: Any) -> np.ndarray:
    shape = tuple(value.shape())
    count = math.prod(shape)
    if count == 0:
        return np.empty(shape, dtype=bfloat16())
    if value.device_name().lower() != "cpu":
        raise InvalidInput("BF16 outputs of ONNX models can only be read from the CPU")
    buffer = (ctypes.c_uint16 * count).from_address(value.data_ptr())
    return np.ctypeslib.as_array(buffer).copy().view(bfloat16()).reshape(shape)


def load(context: LoadContext) -> OnnxRuntime:
    import onnxruntime as ort

    config = context.config
    refuse_torch_options(config, context.name, "onnxruntime")
    check_parameters("onnx", config.parameters, f"model '{context.name}'")
    on_gpu = context.device.startswith("cuda")
    providers, provider_options = _providers(context, ort.get_available_providers())
    session = ort.InferenceSession(str(context.artifact), _session_options(ort, config), providers=providers,
                                   provider_options=provider_options)
    if on_gpu and session.get_providers()[0] not in GPU_PROVIDERS:  # CUDA failed to load: no silent CPU
        raise ConfigError(f"model '{context.name}' asks for {context.device}, but onnxruntime could not start "
                          "its CUDAExecutionProvider (see the log for the CUDA library it missed)")
    inputs = _specs(session.get_inputs(), config, "input", config.inputs)
    outputs = _specs(session.get_outputs(), config, "output", config.outputs)
    return OnnxRuntime(session, inputs, outputs, config.max_batch_size, config, context.name,
                       _run_options(ort, config.parameters, context.name, context.device))


# Triton's optimization.graph.level -> onnxruntime's GraphOptimizationLevel (by name)
_GRAPH_LEVEL = {0: "ORT_ENABLE_ALL", -1: "ORT_ENABLE_BASIC", 1: "ORT_ENABLE_EXTENDED", 2: "ORT_DISABLE_ALL"}


def _session_options(ort: Any, config: ModelConfig) -> Any:
    """The session as config.pbtxt's parameters and graph level say (Triton's onnxruntime backend's
    names); inter-op threads stay 1 unless asked, as one execution runs per instance."""
    options = ort.SessionOptions()
    parameters = config.parameters
    if config.intra_op_threads:
        options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = count(parameters, "inter_op_thread_count") or 1
    if parameters.get("execution_mode") == "1":
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    if "enable_mem_arena" in parameters:
        options.enable_cpu_mem_arena = parameters["enable_mem_arena"] == "1"
    if "enable_mem_pattern" in parameters:
        options.enable_mem_pattern = parameters["enable_mem_pattern"] == "1"
    initializers = "session.use_device_allocator_for_initializers"
    if initializers in parameters:
        options.add_session_config_entry(initializers, parameters[initializers])
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                               _GRAPH_LEVEL[config.backend_optimization.graph_level])
    if not logging.getLogger("inferd").isEnabledFor(logging.DEBUG):
        options.log_severity_level = 3  # provider fallbacks and graph notes only at --log-level debug
    return options


def _run_options(ort: Any, parameters: dict[str, str], name: str, device: str) -> Any:
    shrinkage = parameters.get("memory.enable_memory_arena_shrinkage")
    if shrinkage is None:
        return None
    # an arena this instance has not (another GPU's, a second CPU's) fails every run: refused now
    arenas = {"cpu:0"} | ({f"gpu:{device.split(':')[1]}"} if device.startswith("cuda") else set())
    for entry, number in arena_devices(shrinkage):
        if f"{entry}:{number}" not in arenas:
            raise ConfigError(f"model '{name}': parameter 'memory.enable_memory_arena_shrinkage' names arena "
                              f"'{entry}:{number}', which an instance on {device} has not (it has "
                              f"{', '.join(sorted(arenas))})")
    if "cpu" in shrinkage and parameters.get("enable_mem_arena") == "0":  # else every run fails saying so
        raise ConfigError(f"model '{name}': parameter 'memory.enable_memory_arena_shrinkage' shrinks the CPU arena "
                          f"('{shrinkage}'), but enable_mem_arena is 0: set one or the other")
    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", shrinkage)
    return options


def _providers(context: LoadContext, available: list[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """The execution providers, first choice first, each with its options: config.pbtxt's
    execution accelerators for the instance's device, else CUDA (TensorRT first when present) on a
    GPU; the CPU's last. An accelerator this onnxruntime lacks is a load error, never a fallback."""
    optimization = context.config.backend_optimization
    chosen: list[tuple[str, dict[str, Any]]] = []
    on_gpu = context.device.startswith("cuda")
    if on_gpu:
        device_id = int(context.device.split(":")[1])
        if optimization.gpu_accelerators:
            chosen += [_gpu_accelerator(context, given, device_id) for given in optimization.gpu_accelerators]
        elif "TensorrtExecutionProvider" in available:  # first choice, CUDA for what it cannot
            chosen.append(("TensorrtExecutionProvider", {"device_id": device_id, **_trt_cache_options(context)}))
        cuda_options = {"device_id": device_id, **{key: value for key, value in context.config.parameters.items()
                                                   if key in _CUDA_PARAMETERS}}
        if all(name != "CUDAExecutionProvider" for name, _ in chosen):
            chosen.append(("CUDAExecutionProvider", cuda_options))
    for accelerator in optimization.cpu_accelerators:  # "openvino", checked when the config was read
        chosen.append(("OpenVINOExecutionProvider", dict(accelerator.parameters)))
    for name, _ in chosen:
        if name not in available:
            where = context.device if on_gpu and name != "OpenVINOExecutionProvider" else "its CPU accelerator"
            raise ConfigError(f"model '{context.name}' asks for {where}, but this onnxruntime has no {name} (it has "
                              f"{', '.join(available)}); {_INSTALL_HINT[name]}")
    chosen.append(("CPUExecutionProvider", {}))
    return [name for name, _ in chosen], [options for _, options in chosen]


_INSTALL_HINT = {
    "CUDAExecutionProvider": 'install onnxruntime-gpu, or use kind = "cpu"',
    "TensorrtExecutionProvider": "install onnxruntime-gpu with TensorRT, or remove the tensorrt accelerator",
    "OpenVINOExecutionProvider": "install onnxruntime-openvino, or remove the openvino accelerator",
}
_CUDA_PARAMETERS = ("cudnn_conv_algo_search", "gpu_mem_limit", "arena_extend_strategy", "do_copy_in_default_stream")
# Triton's TensorRT accelerator parameters -> onnxruntime's TensorRT provider options (others are trt_* as is)
_TRT_RENAMED = {"max_workspace_size_bytes": "trt_max_workspace_size",
                "int8_calibration_table_name": "trt_int8_calibration_table_name",
                "int8_use_native_calibration_table": "trt_int8_use_native_calibration_table"}
_TRT_PRECISION = {"FP32": None, "FP16": "trt_fp16_enable", "BF16": "trt_bf16_enable", "INT8": "trt_int8_enable"}


def _gpu_accelerator(context: LoadContext, accelerator: Accelerator, device_id: int) -> tuple[str, dict[str, Any]]:
    if accelerator.name == "cuda":
        return "CUDAExecutionProvider", {"device_id": device_id, **dict(accelerator.parameters)}
    options: dict[str, Any] = {"device_id": device_id, **_trt_cache_options(context)}
    for key, value in accelerator.parameters:
        if key == "precision_mode":
            if value not in _TRT_PRECISION:
                raise ConfigError(f"model '{context.name}': the tensorrt accelerator's precision_mode must be "
                                  f"{', '.join(_TRT_PRECISION)}, got {value!r}")
            flag_name = _TRT_PRECISION[value]
            if flag_name:
                options[flag_name] = True
        elif key in _TRT_RENAMED or key.startswith("trt_"):
            options[_TRT_RENAMED.get(key, key)] = value
        else:
            raise ConfigError(f"model '{context.name}': the tensorrt accelerator has no parameter '{key}' (it takes "
                              f"precision_mode, {', '.join(_TRT_RENAMED)} and onnxruntime's trt_* options)")
    return "TensorrtExecutionProvider", options


def _trt_cache_options(context: LoadContext) -> dict[str, Any]:
    return {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(_trt_cache(context))}


def _trt_cache(context: LoadContext) -> Path:
    """TensorRT's engines, built once per model version and GPU (minutes): kept outside the
    repository, which may be read-only (KServe mounts it so), under $INFERD_TRT_CACHE."""
    root = Path(os.environ.get("INFERD_TRT_CACHE") or Path.home() / ".cache" / "inferd" / "tensorrt")
    folder = root / context.name / context.version
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _specs(args: list[Any], config: ModelConfig, kind: str, declared: tuple[Any, ...]
           ) -> tuple[TensorSpec, ...]:
    from_model = {arg.name: _spec(arg) for arg in args}
    if not declared:
        specs = tuple(from_model.values())
        if config.max_batch_size > 0:
            specs = tuple(TensorSpec(s.name, s.datatype, (-1, *s.shape[1:])) for s in specs)
        return specs
    specs = specs_from_config(declared, config.max_batch_size)
    where = Path(config.source).name if config.source else "the model's configuration"  # config.toml or .pbtxt
    for spec in specs:
        if spec.name not in from_model:
            raise ConfigError(f"{where} declares {kind} '{spec.name}' but the ONNX model has "
                              f"{sorted(from_model)}")
        if from_model[spec.name].datatype != spec.datatype:
            raise ConfigError(f"{where} declares {kind} '{spec.name}' as {spec.datatype} but "
                              f"the ONNX model has {from_model[spec.name].datatype}")
        if spec.name in _flat(config):  # ragged: the model takes the batch's elements joined, 1-D
            if kind == "input" and len(from_model[spec.name].shape) > 1:  # a scattered output is read flat
                raise ConfigError(f"{where} makes {kind} '{spec.name}' ragged (allow_ragged_batch or batch_output), "
                                  f"so the model must take it as one 1-D tensor (the requests' elements joined), "
                                  f"but the ONNX model has {list(from_model[spec.name].shape)}")
            continue
        if not _shapes_agree(spec.shape, from_model[spec.name].shape):
            batch = " (the batch dim -1 first, as max_batch_size > 0)" if config.max_batch_size > 0 else ""
            raise ConfigError(f"{where} declares {kind} '{spec.name}' with shape {list(spec.shape)}{batch} but "
                              f"the ONNX model has {list(from_model[spec.name].shape)} (-1: any size)")
    return specs


def _flat(config: ModelConfig) -> set[str]:
    """The tensors a ragged batch joins flat: ragged inputs, scattered outputs."""
    return {t.name for t in config.inputs if t.ragged} | {
        name for output in config.batch_outputs for name in output.target_names}


def _shapes_agree(declared: tuple[int, ...], model: tuple[int, ...]) -> bool:
    """Same rank, and every dim fixed on both sides is the same (-1, a dynamic or symbolic dim,
    matches any). A model that does not say its rank (shape []) is not checked."""
    if not model:
        return True
    return len(declared) == len(model) and all(d == m or d < 0 or m < 0 for d, m in zip(declared, model, strict=True))


def _spec(arg: Any) -> TensorSpec:
    datatype = _V2_BY_ONNX.get(arg.type)
    if datatype is None:
        raise ConfigError(f"ONNX tensor '{arg.name}' has type {arg.type}, which inferd cannot serve")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(arg.name, datatype, shape)
