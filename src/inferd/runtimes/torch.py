"""PyTorch models: TorchScript (``model.pt``) and torch.export ExportedPrograms (``model.pt2``).

Inputs are passed positionally in declared order (a sequence model's implicit states, then its control
inputs, after them); a model with ``batch_input`` gets its inputs and batch inputs where Triton's libtorch
backend puts them (see ``_call_order``); a model may return a tensor, a tuple/list of tensors, or a dict of tensors
(matched to outputs by name). A tuple's items go to the outputs in declared order, or by the index
in their names when all follow Triton's ``OUTPUT__<i>``.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, ExitStack
from typing import Any, NoReturn, cast

import numpy as np

from inferd.config import ImageInput, ModelConfig, Optimization, TensorConfig
from inferd.errors import ConfigError, ModelError
from inferd.modelconfig.backend_parameters import check_parameters, count, flag
from inferd.runtimes.base import (
    Arrays,
    LoadContext,
    Runtime,
    conform_outputs,
    refuse_accelerators,
    require_specs,
    specs_from_config,
)
from inferd.runtimes.torch_exec import Executor, concat_rows
from inferd.types import TensorSpec, numpy_dtype, v2_datatype

_log = logging.getLogger("inferd.torch")

_V2_BY_TORCH = {
    "torch.bool": "BOOL", "torch.uint8": "UINT8", "torch.int8": "INT8", "torch.int16": "INT16",
    "torch.int32": "INT32", "torch.int64": "INT64", "torch.float16": "FP16",
    "torch.float32": "FP32", "torch.float64": "FP64", "torch.bfloat16": "BF16",
    "torch.uint16": "UINT16", "torch.uint32": "UINT32", "torch.uint64": "UINT64",
}


class TorchRuntime(Runtime):
    def __init__(self, module: Any, platform: str, inputs: tuple[TensorSpec, ...],
                 outputs: tuple[TensorSpec, ...], max_batch_size: int, device: str,
                 name: str, optimization: Optimization | None = None, instances: int = 1,
                 images: dict[str, ImageInput] | None = None, parameters: Mapping[str, str] | None = None,
                 arguments: tuple[TensorSpec, ...] | None = None) -> None:
        import torch

        self._torch = torch
        self._module = module
        self._forward = module.forward  # skips nn.Module.__call__'s hook machinery
        self._device = torch.device(device)
        self._on_cpu = self._device.type == "cpu"
        optimization = optimization or Optimization()
        self._executor_options = optimization
        # a reduced [optimization] precision changes the output dtype on purpose: cast back then
        self._declared_dtypes = () if optimization.precision else tuple(
            (spec.name, numpy_dtype(spec.datatype), spec.datatype) for spec in outputs if spec.datatype != "BYTES")
        self._output_positions = _tuple_positions(outputs)
        self._name = name
        self.platform = platform
        self.inputs = inputs
        self._arguments = arguments or inputs  # forward's arguments, in its order (batch inputs among them)
        self.outputs = outputs
        self.max_batch_size = max_batch_size
        parameters = parameters or {}
        self._guards = _call_guards(torch, parameters, platform, self._on_cpu)
        self._clean_cache = not self._on_cpu and flag(parameters, "ENABLE_CACHE_CLEANING")
        # eager on the CPU calls the module directly; anything else (a GPU, [optimization]) runs
        # through an Executor with one lane per instance
        self._executor: Executor | None = None
        if optimization.enabled or not self._on_cpu or images:
            with torch.no_grad():
                self._executor = Executor(torch, module, self._device, inputs, optimization, max_batch_size,
                                          name, platform, images)
            self._executor.add_lanes(instances)

    def infer(self, inputs: Arrays) -> Arrays:
        if self._guards or self._clean_cache:
            return self._guarded_infer(inputs)
        return self._infer(inputs)

    def _guarded_infer(self, inputs: Arrays) -> Arrays:
        with ExitStack() as stack:
            for guard in self._guards:
                stack.enter_context(guard())
            outputs = self._infer(inputs)
        if self._clean_cache:
            self._torch.cuda.empty_cache()
        return outputs

    def _infer(self, inputs: Arrays) -> Arrays:
        torch = self._torch
        if torch.is_grad_enabled():  # thread-local; a server never trains, and it is cheaper than
            torch.set_grad_enabled(False)  # entering inference_mode on every call
        if self._executor is not None:
            pieces = [self._name_outputs(piece) for piece in self._executor.run(inputs)]
            return conform_outputs(concat_rows(pieces), self.outputs, self._name)
        args = [self._to_tensor(inputs[spec.name], spec) for spec in self._arguments]
        result = self._forward(*args)
        return conform_outputs(self._name_outputs(result), self.outputs, self._name)

    def _to_tensor(self, array: np.ndarray, spec: TensorSpec) -> Any:
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        if spec.datatype == "BF16":  # numpy's ml_dtypes bfloat16 -> torch via its bits
            tensor = self._torch.from_numpy(array.view(np.int16)).view(self._torch.bfloat16)
        elif spec.datatype == "BYTES":  # Triton's libtorch: a one-dimensional string tensor is a List[str]
            return [item.decode() if isinstance(item, bytes) else str(item) for item in array.reshape(-1)]
        else:
            tensor = self._torch.from_numpy(array)
        return tensor if self._on_cpu else tensor.to(self._device)

    def _name_outputs(self, result: Any) -> Arrays:
        torch = self._torch
        if isinstance(result, torch.Tensor) or (isinstance(result, list) and all(isinstance(i, str) for i in result)):
            result = (result,)
        if isinstance(result, dict):
            return {key: _to_numpy(value, torch) for key, value in result.items()}
        if isinstance(result, list | tuple):
            positions = self._output_positions
            if positions is None:
                if len(result) != len(self.outputs):
                    raise RuntimeError(f"model '{self._name}' returned {len(result)} outputs, "
                                       f"config declares {len(self.outputs)}")
                positions = tuple(range(len(result)))
            named = {}
            for spec, position in zip(self.outputs, positions, strict=True):
                if position >= len(result):
                    raise ModelError(f"The output {spec.name} in the model configuration refers to an output "
                                     f"index which doesn't exist. This model has {len(result)} outputs "
                                     f"(model '{self._name}'; OUTPUT__<i> names the model's i-th output)")
                named[spec.name] = _to_numpy(result[position], torch)
            for name, dtype, datatype in self._declared_dtypes:
                if named[name].dtype != dtype:
                    _refuse_output_type(name, datatype, named[name].dtype, self._name)
            return named
        raise RuntimeError(f"model '{self._name}' returned {type(result).__name__}; expected a "
                           f"tensor, a tuple of tensors or a dict of tensors")

    def warmup(self) -> None:
        if self._executor is not None:
            with self._torch.no_grad():
                self._executor.warm_up()

    def scale(self, count: int) -> None:
        if self._executor is not None:
            self._executor.add_lanes(count)

    def describe(self) -> str:
        extra = _describe(self._executor_options) if self._executor is not None else ""
        return f"{self.platform} on {self._device}{extra}"


def _describe(optimization: Optimization) -> str:
    parts = [optimization.precision, "channels_last" if optimization.channels_last else "", optimization.compile]
    shown = ", ".join(part for part in parts if part)
    return f", {shown}" if shown else ""


def _tuple_positions(outputs: tuple[TensorSpec, ...]) -> tuple[int, ...] | None:
    """Where each declared output is in the tuple the model returns, when every name follows Triton's
    ``<name>__<index>`` convention (declared in any order); None: in declared order."""
    found = [re.fullmatch(r".+__(\d+)", spec.name) for spec in outputs]
    if not outputs or not all(found):
        return None
    return tuple(int(match.group(1)) for match in found if match)


def _refuse_output_type(name: str, expected: str, given: np.dtype[Any], model: str) -> NoReturn:
    """Triton's libtorch backend refuses an output whose dtype is not the declared one (a cast
    would hide a wrong config, e.g. FP32 scores truncated to INT32); its words, then ours."""
    try:
        provided = v2_datatype(given)
    except KeyError:
        provided = str(given)
    raise ModelError(f"configuration expects datatype TYPE_{expected} for output '{name}', "
                     f"model provides TYPE_{provided}: model '{model}' returns {provided} there; "
                     f"declare data_type TYPE_{provided} in config.pbtxt or cast in the model")


def _to_numpy(value: Any, torch: Any) -> np.ndarray:
    if isinstance(value, list):  # a List[str] output: a one-dimensional BYTES tensor
        return np.array([item.encode() if isinstance(item, str) else item for item in value], dtype=object)
    value = value.detach()
    if value.dtype == torch.bfloat16:
        from inferd.types import bfloat16

        return cast(np.ndarray, value.cpu().view(torch.int16).numpy().view(bfloat16()))
    return cast(np.ndarray, value.cpu().numpy())


def _call_guards(torch: Any, parameters: Mapping[str, str], platform: str, on_cpu: bool
                 ) -> tuple[Callable[[], AbstractContextManager[Any]], ...]:
    """What each call runs under, as Triton's pytorch backend parameters ask."""
    guards: list[Callable[[], AbstractContextManager[Any]]] = []
    if flag(parameters, "INFERENCE_MODE"):
        guards.append(torch.inference_mode)
    if flag(parameters, "DISABLE_OPTIMIZED_EXECUTION") and platform == "pytorch_libtorch":
        guards.append(lambda: torch.jit.optimized_execution(False))
    if flag(parameters, "DISABLE_CUDNN") and not on_cpu:
        guards.append(lambda: torch.backends.cudnn.flags(enabled=False))
    return tuple(guards)


# Triton's process-wide TorchScript switches -> torch's setters (applied only when a model sets one)
_JIT_SWITCHES = {"ENABLE_JIT_EXECUTOR": "_jit_set_profiling_executor",
                 "ENABLE_JIT_PROFILING": "_jit_set_profiling_mode",
                 "ENABLE_TENSOR_FUSER": "_jit_set_texpr_fuser_enabled"}


def _apply_process_settings(torch: Any, context: LoadContext) -> None:
    """Threads and TorchScript switches: torch holds them per process, so (as in Triton) a later
    model's different value changes them for every model in the process."""
    parameters = context.config.parameters
    check_parameters("torch", parameters, f"model '{context.name}'")
    refuse_accelerators(context.config, context.name, "torch", (-1, 0, 1, 2))  # Triton's pytorch ignores the level
    threads = count(parameters, "INTRA_OP_THREAD_COUNT") or context.config.intra_op_threads
    if threads:
        torch.set_num_threads(threads)
    inter_op = count(parameters, "INTER_OP_THREAD_COUNT")
    if inter_op and torch.get_num_interop_threads() != inter_op:
        try:
            torch.set_num_interop_threads(inter_op)
        except RuntimeError:  # torch takes it once, before any inter-op work
            _log.warning("model '%s': INTER_OP_THREAD_COUNT %d not applied: this process's inter-op threads "
                         "were set already (%d)", context.name, inter_op, torch.get_num_interop_threads())
    for key, setter in _JIT_SWITCHES.items():
        if key in parameters:
            getattr(torch._C, setter)(flag(parameters, key))


def load(context: LoadContext) -> TorchRuntime:
    import torch

    _apply_process_settings(torch, context)
    if context.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"model '{context.name}' asks for {context.device}, "
                          "but torch sees no CUDA device")
    if context.artifact.suffix == ".pt2":
        return _load_exported(context, torch)
    inputs, outputs = require_specs(context, "TorchScript model (model.pt)")
    eager_cpu = context.device == "cpu" and not context.config.optimization.enabled and not _images(context.config)
    _refuse_bytes(inputs + outputs, context.name, _images(context.config), eager_cpu)
    inputs += _sequence_controls(context.config)
    module = _load_scripted(torch, context)
    if context.config.batch_outputs:
        outputs = _scattered_any_shape(outputs, context.config)
    arguments = None
    if context.config.batch_inputs:
        if not eager_cpu:
            raise ConfigError(f"model '{context.name}': batch_input is served for TorchScript models run eagerly on "
                              "the CPU (no [optimization], no GPU instance group, no image input)")
        arguments = _call_order(torch, module, context.config, inputs, context.name)
    return TorchRuntime(module, "pytorch_libtorch", inputs, outputs, context.config.max_batch_size,
                        context.device, context.name, context.config.optimization,
                        context.config.instance_group.count, _images(context.config), context.config.parameters,
                        arguments)


def _call_order(torch: Any, module: Any, config: ModelConfig, inputs: tuple[TensorSpec, ...],
                name: str) -> tuple[TensorSpec, ...]:
    """The inputs and batch inputs in forward's order, as Triton's libtorch backend places them
    (pytorch_backend 266fd38, model_instance_state.cc AddInputToMap): when every configured input is
    an argument of ``forward``, each tensor goes to the argument of its name; else when every
    configured input is named ``<name>__<i>``, each goes to argument ``i``; else the inputs in
    declared order, then the batch inputs' targets in the configuration's order."""
    targets = tuple(TensorSpec(target, given.datatype, (-1,))
                    for given in config.batch_inputs for target in given.target_names)
    specs = inputs + targets
    arguments = _forward_arguments(torch, module)
    if len(arguments) != len(specs):
        raise ConfigError(f"model '{name}': forward takes {len(arguments)} arguments {arguments}; the configuration "
                          f"gives {len(specs)}: inputs {[s.name for s in inputs]} and batch inputs "
                          f"{[s.name for s in targets]}")
    if all(spec.name in arguments for spec in inputs):
        where = {spec.name: arguments.index(spec.name) for spec in specs if spec.name in arguments}
    elif all(_named_index(spec.name) is not None for spec in inputs):
        where = {spec.name: index for spec in specs if (index := _named_index(spec.name)) is not None}
    else:
        return specs
    missing = [spec.name for spec in specs if spec.name not in where]
    if missing or sorted(where.values()) != list(range(len(specs))):
        raise ConfigError(f"model '{name}': cannot place {missing or [s.name for s in specs]} among forward's "
                          f"arguments {arguments}: name each tensor as forward's argument, or <name>__<i> for "
                          f"argument i (each i once)")
    return tuple(sorted(specs, key=lambda spec: where[spec.name]))


def _scattered_any_shape(outputs: tuple[TensorSpec, ...], config: ModelConfig) -> tuple[TensorSpec, ...]:
    """An output a ``batch_output`` scatters is the whole batch's, read flat (as Triton's backend reads
    it): any shape, not the per-request dims clients get."""
    scattered = {name for given in config.batch_outputs for name in given.target_names}
    return tuple(TensorSpec(spec.name, spec.datatype, (-1,), rank_known=False) if spec.name in scattered else spec
                 for spec in outputs)


def _forward_arguments(torch: Any, module: Any) -> list[str]:
    """The names of ``forward``'s arguments, ``self`` left out."""
    arguments = list(module.forward.schema.arguments)
    if arguments and isinstance(arguments[0].type, torch._C.ClassType):
        arguments = arguments[1:]
    return [argument.name for argument in arguments]


def _named_index(name: str) -> int | None:
    """``i`` of a name following Triton's ``<name>__<i>`` (its first ``__``), else None."""
    found = name.find("__")
    index = name[found + 2:]
    return int(index) if found >= 0 and index.isdigit() else None


def _load_scripted(torch: Any, context: LoadContext) -> Any:
    """On the instance's device; under KIND_MODEL where the model was saved (Triton's pytorch backend
    loads it without a device then, and prepares the inputs on the CPU: the model moves them)."""
    if context.config.instance_group.kind == "model":
        return torch.jit.load(str(context.artifact)).eval()
    return torch.jit.load(str(context.artifact), map_location=context.device).eval()


_EXPORT_LOAD = threading.Lock()  # torch.export.load keeps its deserializer in a global: one at a time


def _load_exported(context: LoadContext, torch: Any) -> TorchRuntime:
    with _EXPORT_LOAD:  # two at once failed with "_CURRENT_DESERIALIZER is already set"
        program = torch.export.load(str(context.artifact))
    config = context.config
    if config.max_batch_size > 0:
        _refuse_static_batch(program, context.name, config.max_batch_size)
    if config.inputs and config.outputs:
        inputs = specs_from_config(config.inputs, config.max_batch_size)
        outputs = specs_from_config(config.outputs, config.max_batch_size)
    else:
        inputs, outputs = _exported_specs(program, config.max_batch_size)
    _refuse_bytes(inputs + outputs, context.name, _images(config))
    inputs += _sequence_controls(config)
    module = program.module()
    if context.device != "cpu":
        module = module.to(context.device)
    return TorchRuntime(module, "pytorch_export", inputs, outputs, config.max_batch_size,
                        context.device, context.name, config.optimization, config.instance_group.count,
                        _images(config), config.parameters)


def _exported_specs(program: Any, max_batch_size: int
                    ) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Read names, dtypes and shapes from the exported graph; symbolic sizes become -1."""
    user_inputs = set(program.graph_signature.user_inputs)
    inputs, outputs = [], []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            inputs.append(_spec_of(node.name, node.meta["val"], max_batch_size))
        elif node.op == "output":
            values = node.args[0] if isinstance(node.args[0], list | tuple) else [node.args[0]]
            for index, value in enumerate(values):
                outputs.append(_spec_of(f"output__{index}", value.meta["val"], max_batch_size))
    return tuple(inputs), tuple(outputs)


def _refuse_static_batch(program: Any, name: str, max_batch_size: int) -> None:
    """A program exported with a fixed dim 0 fails every other batch size at its guards, so a
    batching configuration cannot serve it: say so at load, with the fix."""
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        shape = getattr(node.meta.get("val"), "shape", ())
        if shape and isinstance(shape[0], int):
            raise ConfigError(
                f"model '{name}': input '{node.name}' was exported with a fixed batch size of {shape[0]}, "
                f"but max_batch_size = {max_batch_size} makes dim 0 the batch; export it with a dynamic "
                f"batch (torch.export.export(model, args, dynamic_shapes={{'{node.name}': "
                "{0: torch.export.Dim('batch')}})) or set max_batch_size = 0")


def _spec_of(name: str, fake: Any, max_batch_size: int) -> TensorSpec:
    shape = [d if isinstance(d, int) else -1 for d in fake.shape]
    if max_batch_size > 0 and shape:
        shape[0] = -1
    datatype = _V2_BY_TORCH.get(str(fake.dtype))
    if datatype is None:
        raise ConfigError(f"tensor '{name}' has dtype {fake.dtype}, which inferd cannot serve")
    return TensorSpec(name, datatype, tuple(shape))


def _sequence_controls(config: ModelConfig) -> tuple[TensorSpec, ...]:
    """A sequence model's control inputs (START, END, READY, CORRID), which the sequence batcher adds to
    each request: forward takes them as its last arguments, in the configuration's order, as Triton's
    libtorch backend gives them (its QA models: ``INPUT__0, START__1, READY__2``)."""
    batching = config.sequence_batching
    if batching is None:
        return ()
    controls = tuple(TensorConfig(c.name, c.datatype, (1,)) for c in batching.controls)
    return specs_from_config(controls, config.max_batch_size)


def _images(config: ModelConfig) -> dict[str, ImageInput]:
    return {tensor.name: tensor.image for tensor in config.inputs if tensor.image is not None}


def _refuse_bytes(specs: tuple[TensorSpec, ...], name: str, images: dict[str, ImageInput],
                  eager_cpu: bool = False) -> None:
    """BYTES tensors other than images only as Triton's libtorch backend takes them: List[str], one
    dimension (a model without a batch dim), called directly on the CPU."""
    for spec in specs:
        if spec.datatype == "BYTES" and spec.name not in images and not (eager_cpu and len(spec.shape) == 1):
            raise ConfigError(f"model '{name}': tensor '{spec.name}' is BYTES of shape {list(spec.shape)}; torch "
                              "models take strings as a List[str] of one dimension (max_batch_size 0, one dim), on "
                              "the CPU without [optimization]; use a Python model to decode strings, or an [image] "
                              "input for encoded images")
