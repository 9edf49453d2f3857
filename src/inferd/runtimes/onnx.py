"""ONNX models through onnxruntime. Inputs and outputs come from the model unless its configuration says."""

from __future__ import annotations

import ctypes
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from inferd.config import ModelConfig
from inferd.errors import ConfigError, InvalidInput
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
                 name: str = "") -> None:
        self._session = session
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
            values = _run_bf16(self._session, self._output_names, inputs)
        else:
            values = self._session.run(self._output_names, inputs)
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


def _run_bf16(session: Any, output_names: list[str], inputs: Arrays) -> list[np.ndarray]:
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
    results = session.run_with_ort_values(output_names, values)
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

    refuse_torch_options(context.config, context.name, "onnxruntime")
    options = ort.SessionOptions()
    if context.config.intra_op_threads:
        options.intra_op_num_threads = context.config.intra_op_threads
    options.inter_op_num_threads = 1
    if not logging.getLogger("inferd").isEnabledFor(logging.DEBUG):
        options.log_severity_level = 3  # provider fallbacks and graph notes only at --log-level debug
    providers = ["CPUExecutionProvider"]
    provider_options: list[dict[str, Any]] = [{}]
    on_gpu = context.device.startswith("cuda")
    if on_gpu:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError(f"model '{context.name}' asks for {context.device}, but this onnxruntime has no "
                              f"CUDAExecutionProvider (it has {', '.join(ort.get_available_providers())}); "
                              "install onnxruntime-gpu, or use kind = \"cpu\"")
        device_id = int(context.device.split(":")[1])
        providers.insert(0, "CUDAExecutionProvider")
        provider_options.insert(0, {"device_id": device_id})
        if "TensorrtExecutionProvider" in ort.get_available_providers():  # first choice, CUDA for what it cannot
            providers.insert(0, "TensorrtExecutionProvider")
            provider_options.insert(0, {"device_id": device_id, "trt_engine_cache_enable": True,
                                        "trt_engine_cache_path": str(_trt_cache(context))})
    session = ort.InferenceSession(str(context.artifact), options, providers=providers,
                                   provider_options=provider_options)
    if on_gpu and session.get_providers()[0] not in GPU_PROVIDERS:  # CUDA failed to load: no silent CPU
        raise ConfigError(f"model '{context.name}' asks for {context.device}, but onnxruntime could not start "
                          "its CUDAExecutionProvider (see the log for the CUDA library it missed)")
    config = context.config
    inputs = _specs(session.get_inputs(), config, "input", config.inputs)
    outputs = _specs(session.get_outputs(), config, "output", config.outputs)
    return OnnxRuntime(session, inputs, outputs, config.max_batch_size, config, context.name)


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
        if not _shapes_agree(spec.shape, from_model[spec.name].shape):
            batch = " (the batch dim -1 first, as max_batch_size > 0)" if config.max_batch_size > 0 else ""
            raise ConfigError(f"{where} declares {kind} '{spec.name}' with shape {list(spec.shape)}{batch} but "
                              f"the ONNX model has {list(from_model[spec.name].shape)} (-1: any size)")
    return specs


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
