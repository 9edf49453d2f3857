"""Turning an artifact into a Runtime: pick the framework module, import it only now."""

from __future__ import annotations

import importlib
from typing import cast

from inferd.errors import ConfigError
from inferd.runtimes.base import LoadContext, Runtime
from inferd.runtimes.reshape import ReshapedRuntime, model_context, reshaped

# backend -> (module under inferd.runtimes, the pip extra that brings its framework)
_MODULES: dict[str, tuple[str, str]] = {
    "onnx": ("onnx", "onnx"),
    "torch": ("torch", "torch"),
    "python": ("python", "all"),
    "tensorflow": ("tensorflow", "tensorflow"),
    "tflite": ("tflite", "tensorflow"),
    "torchserve": ("torchserve", "torch"),
    "ensemble": ("ensemble", "all"),
}


def load_runtime(backend: str, context: LoadContext) -> Runtime:
    if backend not in _MODULES:
        raise ConfigError(f"model '{context.name}': backend '{backend}' is not supported yet")
    module_name, extra = _MODULES[backend]
    try:
        module = importlib.import_module(f"inferd.runtimes.{module_name}")
    except ModuleNotFoundError as exc:
        raise ConfigError(f"model '{context.name}' needs {exc.name}, which is not installed: "
                          f"pip install 'inferd[{extra}]'") from exc
    try:
        if backend != "ensemble" and reshaped(context.config):  # Triton's reshape: the model's own shapes inside
            return ReshapedRuntime(cast(Runtime, module.load(model_context(context))), context.config, context.name)
        return cast(Runtime, module.load(context))
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in {"onnxruntime", "torch", "tensorflow"}:
            raise ConfigError(f"model '{context.name}' needs {exc.name}, which is not "
                              f"installed: pip install 'inferd[{extra}]'") from exc
        raise
