"""Python models: ``model.py`` defines ``class Model`` with ``load()`` and ``infer(inputs)``.

    class Model:
        def load(self) -> None: ...                       # optional: read weights, warm up
        def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

or Triton's ``class TritonPythonModel`` (see ``triton_python``). config.toml (or config.pbtxt)
declares the inputs and outputs. ``infer`` may run on several threads at once when
``[instance_group] count`` > 1. A decoupled model (``[model_transaction_policy] decoupled = true``)
may make ``infer`` a generator: each dict it yields is one answer, streamed as it comes.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import threading
import types
import zlib
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, TypeVar

from inferd.errors import ConfigError, ModelError
from inferd.runtimes import triton_python
from inferd.runtimes.base import Arrays, LoadContext, Runtime, conform_outputs, require_specs
from inferd.runtimes.triton_pb_utils import install_triton_shim
from inferd.types import TensorSpec

T = TypeVar("T")


class PythonRuntime(Runtime):
    platform = "python"

    def __init__(self, model: Any, inputs: tuple[TensorSpec, ...],
                 outputs: tuple[TensorSpec, ...], max_batch_size: int, name: str) -> None:
        self._model = model
        self._name = name
        self.inputs = inputs
        self.outputs = outputs
        self.max_batch_size = max_batch_size

    def infer(self, inputs: Arrays) -> Arrays:
        result = self._model.infer(inputs)
        if not isinstance(result, dict):
            raise RuntimeError(f"Model.infer must return a dict of arrays, got "
                               f"{type(result).__name__}")
        return conform_outputs(result, self.outputs, self._name)

    def infer_stream(self, inputs: Arrays, stop: threading.Event) -> Generator[Arrays, None, None]:
        result = self._model.infer(inputs)
        if isinstance(result, dict):
            yield conform_outputs(result, self.outputs, self._name)
            return
        try:
            for item in result:
                if not isinstance(item, dict):
                    raise RuntimeError(f"Model.infer must yield dicts of arrays, got {type(item).__name__}")
                yield conform_outputs(item, self.outputs, self._name)
                if stop.is_set():
                    return
        finally:
            close = getattr(result, "close", None)
            if callable(close):
                close()  # a generator left early runs its finally blocks now

    def unload(self) -> None:
        if hasattr(self._model, "unload"):
            self._model.unload()


def _importable_beside(artifact: Path) -> None:
    """A model.py imports the files beside it, as Triton's stub puts the version's folder and the
    model's folder on sys.path (appended, so they never shadow installed packages)."""
    for folder in (str(artifact.parent), str(artifact.parent.parent)):
        if folder not in sys.path:
            sys.path.append(folder)


def _version_package(context: LoadContext) -> str:
    """A package whose folder is the version's, model.py its module: its relative imports (``from .
    import helper``) find the files beside it, as Triton imports model.py as ``<version>.model``."""
    folder = str(context.artifact.parent)
    readable = re.sub(r"\W", "_", f"{context.name}_v{context.version}")
    package = f"inferd_user_models_{readable}_{zlib.crc32(folder.encode()):08x}"  # one per folder
    module = types.ModuleType(package)
    module.__path__ = [folder]
    sys.modules[package] = module
    return package


def load(context: LoadContext) -> Runtime:
    stem = re.sub(r"\W", "_", context.artifact.stem)
    module_name = f"{_version_package(context)}.{stem}"
    _importable_beside(context.artifact)
    spec = importlib.util.spec_from_file_location(module_name, context.artifact)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {context.artifact}")
    loader = spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    install_triton_shim()  # `import triton_python_backend_utils as pb_utils` works in model.py
    try:
        _user_code(lambda: loader.exec_module(module), context.artifact, "importing")
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    triton_class = getattr(module, "TritonPythonModel", None)
    if triton_class is not None:
        return _user_code(lambda: triton_python.load(triton_class, context), context.artifact, "initializing")
    inputs, outputs = require_specs(context, "Python model (model.py)")
    model_class = getattr(module, "Model", None)
    if model_class is None or not callable(getattr(model_class, "infer", None)):
        raise ConfigError(f"{context.artifact} must define `class Model` with an infer(inputs) "
                          "method, or Triton's `class TritonPythonModel` with execute(requests)")
    if inspect.isgeneratorfunction(model_class.infer) and not context.config.decoupled:
        raise ConfigError(f"{context.artifact}: Model.infer is a generator (several answers per request); "
                          "declare it with [model_transaction_policy] decoupled = true")
    model = model_class()
    if callable(getattr(model, "load", None)):
        _user_code(model.load, context.artifact, "loading")
    runtime = PythonRuntime(model, inputs, outputs, context.config.max_batch_size, context.name)
    runtime.decoupled = context.config.decoupled
    return runtime


def _user_code(step: Callable[[], T], artifact: Any, doing: str) -> T:
    """Run model.py's own code at load: its SystemExit (argparse or sys.exit in a script-style
    model.py) or KeyboardInterrupt fails this model's load, never the server."""
    try:
        return step()
    except (SystemExit, KeyboardInterrupt) as exc:
        raise ModelError(f"{artifact} raised {type(exc).__name__}({exc}) while {doing}: a model must not exit "
                         "the process (argparse or sys.exit at import?)") from None
