"""config.pbtxt and JSON overrides -> inferd's ModelConfig; a served configuration -> Triton's message
and JSON. Pure functions; protobuf parses, this module only maps and refuses what inferd cannot do."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import FieldDescriptor

from inferd.config import (
    BATCH_WAIT_PARAMETER,
    BATCH_WAITS,
    GROWABLE_REFUSED,
    Accelerator,
    BackendOptimization,
    BatchInput,
    BatchOutput,
    DynamicBatching,
    EnsembleStep,
    InitialState,
    InstanceGroup,
    ModelConfig,
    QueuePolicy,
    RateLimit,
    RateResource,
    SequenceBatching,
    SequenceControl,
    SequenceState,
    ServedConfig,
    TensorConfig,
    VersionPolicy,
    WarmupInput,
    WarmupSample,
    check_model_config,
    check_rate_limit,
)
from inferd.errors import ConfigError
from inferd.modelconfig._proto import triton_model_config_pb2 as mc
from inferd.modelconfig.backend_parameters import check_parameters, intra_op_threads

PBTXT = "config.pbtxt"

# Triton's platform / backend names -> inferd's backend
_PLATFORMS = {"onnxruntime_onnx": "onnx", "pytorch_libtorch": "torch", "tensorflow_savedmodel": "tensorflow",
              "ensemble": "ensemble"}
_BACKENDS = {"onnxruntime": "onnx", "pytorch": "torch", "python": "python", "tensorflow": "tensorflow",
             "armnn_tflite": "tflite"}
# inferd's backend -> what Triton calls it; TFLite: Triton's one TFLite backend (build.py's
# armnn_tflite; TF Serving has no name of its own for it: its platform stays "tensorflow")
_TRITON_BACKEND = {"onnx": "onnxruntime", "torch": "pytorch", "python": "python", "tensorflow": "tensorflow",
                   "torchserve": "python", "tflite": "armnn_tflite"}


def _datatype(value: int) -> str:
    name = mc.DataType.Name(value).removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def _type_of(datatype: str) -> int:
    return int(mc.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"))


# -- reading ---------------------------------------------------------------------------------------
def read_pbtxt(path: Path) -> ModelConfig:
    """Read a model folder's config.pbtxt (Triton's ModelConfig in protobuf text format)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    return parse_pbtxt(text, str(path), path.parent.name)


def parse_pbtxt(text: str, where: str, folder_name: str) -> ModelConfig:
    message = mc.ModelConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ConfigError(f"{where}: {_unsupported(str(exc))}") from None
    return check_model_config(_from_message(message, where, folder_name), where)


def apply_override(base: ModelConfig, text: str, name: str) -> ModelConfig:
    """A load's ``parameters.config`` (Triton's ModelConfig as JSON): every top-level key it sets
    replaces that key of the model's own configuration; the rest stays as the file says."""
    where = f"failed to load '{name}': the configuration override"
    message = mc.ModelConfig()
    try:
        given = json.loads(text)
        if not isinstance(given, dict):
            raise ValueError(f"expected a JSON object, got {type(given).__name__}")
        json_format.ParseDict(_repeated_as_lists(given), message)
    except (json_format.ParseError, ValueError) as exc:
        raise ConfigError(f"{where} is not a model configuration: {_unsupported(str(exc))}") from None
    given = _from_message(message, where, name)
    present = _keys(text)
    if "platform" in present or "backend" in present:
        present.add("backend")
    changes: dict[str, Any] = {}
    for key, attributes in _OVERRIDES.items():
        if key in present:
            changes.update({attr: getattr(given, attr) for attr in attributes})
    return check_model_config(dataclasses.replace(base, **changes), where)


def _repeated_as_lists(given: dict[str, Any]) -> dict[str, Any]:
    """A top-level repeated key given one value instead of a list (``"instance_group": {...}``)
    holds that one value, as Triton's JSON parser (protobuf's C++ one) takes it."""
    repeated = {key for f in mc.ModelConfig.DESCRIPTOR.fields
                if f.is_repeated and not (f.message_type is not None and f.message_type.GetOptions().map_entry)
                for key in (f.name, f.json_name)}
    return {key: [value] if key in repeated and not isinstance(value, list) else value
            for key, value in given.items()}


def _keys(text: str) -> set[str]:
    """The top-level keys the JSON sets, by field name (protobuf JSON also takes lowerCamelCase);
    a key set to its default (``"max_batch_size": 0``) counts, unlike in the parsed message."""
    by_json = {f.json_name: f.name for f in mc.ModelConfig.DESCRIPTOR.fields}
    return {by_json.get(key, key) for key in json.loads(text)}


# the message's top-level keys -> the ModelConfig attributes each one sets
_OVERRIDES = {"backend": ("backend",), "max_batch_size": ("max_batch_size",), "input": ("inputs",),
              "output": ("outputs",), "dynamic_batching": ("dynamic_batching",),
              "instance_group": ("instance_group",), "version_policy": ("version_policy",),
              "parameters": ("parameters", "intra_op_threads"), "response_cache": ("response_cache",),
              "ensemble_scheduling": ("ensemble",), "model_transaction_policy": ("decoupled",),
              "sequence_batching": ("sequence_batching",), "model_warmup": ("warmup_samples",),
              "default_model_filename": ("default_model_filename",), "optimization": ("backend_optimization",),
              "batch_input": ("batch_inputs",), "batch_output": ("batch_outputs",)}


def _unsupported(error: str) -> str:
    if "has no field named" in error or "Message type" in error:
        return f"{error} (inferd does not serve that key of Triton's model configuration)"
    return error


def _from_message(message: mc.ModelConfig, where: str, folder_name: str) -> ModelConfig:
    if message.name and message.name != folder_name:
        raise ConfigError(f"{where}: key 'name' is '{message.name}' but the model's folder is '{folder_name}'")
    backend = _backend(message, where)
    if message.max_batch_size < 0:
        raise ConfigError(f"{where}: key 'max_batch_size' must be >= 0, got {message.max_batch_size}")
    parameters = {key: value.string_value for key, value in message.parameters.items()}
    if backend is not None:  # an inferred backend's loader checks them once it is known
        check_parameters(backend, parameters, where)
    wait = parameters.get(BATCH_WAIT_PARAMETER, "")
    if wait and wait not in BATCH_WAITS:
        raise ConfigError(f"{where}: parameter '{BATCH_WAIT_PARAMETER}' must be one of {', '.join(BATCH_WAITS)}, "
                          f"got {wait!r}")
    return ModelConfig(
        backend=backend,
        max_batch_size=message.max_batch_size,
        intra_op_threads=intra_op_threads(parameters, where),
        dynamic_batching=_batching(message, where),
        instance_group=_instance_group(message, backend, where),
        version_policy=_version_policy(message, where),
        inputs=tuple(_tensor(t, where, "input") for t in message.input),
        outputs=tuple(_tensor(t, where, "output") for t in message.output),
        parameters=parameters,
        response_cache=message.response_cache.enable,
        decoupled=message.model_transaction_policy.decoupled,
        sequence_batching=_sequence_batching(message, where),
        ensemble=tuple(EnsembleStep(step.model_name, int(step.model_version) or -1, dict(step.input_map),
                                    dict(step.output_map)) for step in message.ensemble_scheduling.step),
        warmup_samples=tuple(_warmup(sample, message.max_batch_size, where) for sample in message.model_warmup),
        default_model_filename=_file_name(message.default_model_filename, where),
        backend_optimization=_optimization(message, where),
        batch_inputs=tuple(_batch_input(given, where) for given in message.batch_input),
        batch_outputs=tuple(BatchOutput(mc.BatchOutput.Kind.Name(given.kind), tuple(given.target_name),
                                        tuple(given.source_input)) for given in message.batch_output),
        source=where,
    )


def _batch_input(given: mc.BatchInput, where: str) -> BatchInput:
    if given.data_type == mc.TYPE_INVALID:
        raise ConfigError(f"{where}: batch_input {mc.BatchInput.Kind.Name(given.kind)} needs a data_type "
                          "(TYPE_INT32 or TYPE_FP32)")
    return BatchInput(mc.BatchInput.Kind.Name(given.kind), tuple(given.target_name), _datatype(given.data_type),
                      tuple(given.source_input))


_GRAPH_LEVELS = (-1, 0, 1, 2)
_ACCELERATORS = {"cpu": ("openvino",), "gpu": ("tensorrt", "cuda")}  # what onnxruntime's backend knows


def _optimization(message: mc.ModelConfig, where: str) -> BackendOptimization:
    if not message.HasField("optimization"):
        return BackendOptimization()
    given = message.optimization
    if given.graph.level not in _GRAPH_LEVELS:
        raise ConfigError(f"{where}: key 'optimization.graph.level' must be -1 (basic), 0 (all), 1 (basic and "
                          f"extended) or 2 (none), got {given.graph.level}")
    chosen = {}
    for device, accelerators in (("cpu", given.execution_accelerators.cpu_execution_accelerator),
                                 ("gpu", given.execution_accelerators.gpu_execution_accelerator)):
        for accelerator in accelerators:
            if accelerator.name not in _ACCELERATORS[device]:
                raise ConfigError(f"{where}: key 'optimization.execution_accelerators.{device}_execution_"
                                  f"accelerator' names '{accelerator.name}'; inferd knows "
                                  f"{', '.join(_ACCELERATORS[device])} (onnxruntime's execution providers)")
        chosen[device] = tuple(Accelerator(a.name, tuple(sorted(a.parameters.items()))) for a in accelerators)
    return BackendOptimization(graph_level=given.graph.level, cpu_accelerators=chosen["cpu"],
                               gpu_accelerators=chosen["gpu"], answer=json_format.MessageToJson(given))


def _file_name(name: str, where: str) -> str:
    if name in (".", "..") or "/" in name or "\\" in name:
        raise ConfigError(f"{where}: key 'default_model_filename' must be a file name in the version folder, "
                          f"got {name!r}")
    return name


_SOURCES = {"zero_data": "zero", "random_data": "random", "input_data_file": "file"}


def _warmup(sample: mc.ModelWarmup, max_batch_size: int, where: str) -> WarmupSample:
    """A model_warmup sample, checked as Triton checks it before the model loads."""
    what = f"{where}: model_warmup '{sample.name}'"
    if max_batch_size == 0 and sample.batch_size > 1:
        raise ConfigError(f"{what}: batch_size {sample.batch_size} needs max_batch_size > 0 (the model has no "
                          "batch dimension)")
    if sample.batch_size > max_batch_size > 0:
        raise ConfigError(f"{what}: batch_size {sample.batch_size} is over max_batch_size {max_batch_size}")
    if not sample.inputs:
        raise ConfigError(f"{what}: needs inputs {{ key: ... value: {{ data_type, dims, zero_data | random_data | "
                          "input_data_file }} }}")
    inputs = []
    for name, given in sorted(sample.inputs.items()):
        source = given.WhichOneof("input_data_type")
        if source is None:
            raise ConfigError(f"{what}: input '{name}' needs zero_data, random_data or input_data_file")
        if given.data_type == mc.TYPE_INVALID:
            raise ConfigError(f"{what}: input '{name}' needs a data_type")
        file = given.input_data_file
        if source == "input_data_file" and (not file or file.startswith("/") or ".." in file.split("/")):
            raise ConfigError(f"{what}: input '{name}': input_data_file must be a file name under the model's "
                              f"warmup/ folder, got {file!r}")
        if any(d < 0 for d in given.dims):
            raise ConfigError(f"{what}: input '{name}': dims must be known (>= 0), got {list(given.dims)}")
        inputs.append(WarmupInput(name, _datatype(given.data_type), tuple(given.dims), _SOURCES[source], file))
    return WarmupSample(sample.name, max(sample.batch_size, 1), max(sample.count, 1), tuple(inputs))


def _backend(message: mc.ModelConfig, where: str) -> str | None:
    platform, backend = message.platform, message.backend
    if platform and platform not in _PLATFORMS:
        raise ConfigError(f"{where}: key 'platform' is '{platform}'; inferd serves {sorted(_PLATFORMS)}")
    if backend and backend not in _BACKENDS:
        raise ConfigError(f"{where}: key 'backend' is '{backend}'; inferd serves {sorted(_BACKENDS)}")
    chosen = _PLATFORMS.get(platform) or _BACKENDS.get(backend)
    if platform and backend and _PLATFORMS[platform] != _BACKENDS[backend]:
        raise ConfigError(f"{where}: platform '{platform}' and backend '{backend}' disagree")
    return chosen


def _tensor(tensor: mc.ModelInput | mc.ModelOutput, where: str, what: str) -> TensorConfig:
    if not tensor.name:
        raise ConfigError(f"{where}: every {what} needs a 'name'")
    if tensor.data_type == mc.TYPE_INVALID:
        raise ConfigError(f"{where}: {what} '{tensor.name}' needs a 'data_type' (TYPE_FP32, TYPE_STRING, ...)")
    dims = tuple(int(d) for d in tensor.dims)
    if any(d < -1 for d in dims):
        raise ConfigError(f"{where}: {what} '{tensor.name}' key 'dims' must be sizes (-1 = any), got {list(dims)}")
    fmt = ""
    if isinstance(tensor, mc.ModelInput) and tensor.format != mc.ModelInput.FORMAT_NONE:
        fmt = mc.ModelInput.Format.Name(tensor.format)
    labels = tensor.label_filename if isinstance(tensor, mc.ModelOutput) else ""
    reshape = tuple(int(d) for d in tensor.reshape.shape) if tensor.HasField("reshape") else None
    if reshape is not None and (any(d < -1 for d in reshape) or reshape.count(-1) > 1
                                or (-1 in reshape) != (-1 in dims) or _count(reshape) != _count(dims)):
        raise ConfigError(f"{where}: {what} '{tensor.name}' key 'reshape' {list(reshape)} must hold the elements "
                          f"of its dims {list(dims)} (at most one -1, in both or in neither)")
    ragged = isinstance(tensor, mc.ModelInput) and tensor.allow_ragged_batch
    optional = isinstance(tensor, mc.ModelInput) and tensor.optional
    return TensorConfig(name=tensor.name, datatype=_datatype(tensor.data_type), shape=dims, format=fmt,
                        label_filename=labels, reshape=reshape, ragged=ragged, optional=optional)


def _count(shape: tuple[int, ...]) -> int:
    """Elements of a shape, its one -1 aside."""
    count = 1
    for d in shape:
        count *= d if d >= 0 else 1
    return count


def _batching(message: mc.ModelConfig, where: str) -> DynamicBatching | None:
    if not message.HasField("dynamic_batching"):
        return None
    batching = message.dynamic_batching
    if any(size < 1 for size in batching.preferred_batch_size):
        raise ConfigError(f"{where}: key 'dynamic_batching.preferred_batch_size' must be >= 1")
    default = _queue_policy(batching.default_queue_policy)
    return DynamicBatching(
        max_queue_delay_ms=batching.max_queue_delay_microseconds / 1000,
        preferred_batch_sizes=tuple(sorted(batching.preferred_batch_size)),
        max_queue_size=default.max_queue_size,
        default_timeout_ms=default.default_timeout_ms,
        allow_timeout_override=default.allow_timeout_override,
        timeout_action=default.timeout_action,
        priority_levels=batching.priority_levels,
        default_priority_level=batching.default_priority_level,
        priority_queue_policy={int(level): _queue_policy(policy)
                               for level, policy in sorted(batching.priority_queue_policy.items())})


def _queue_policy(policy: mc.ModelQueuePolicy) -> QueuePolicy:
    return QueuePolicy(
        max_queue_size=policy.max_queue_size or 1024,  # Triton's 0 is unbounded; inferd bounds every queue
        default_timeout_ms=policy.default_timeout_microseconds / 1000,
        allow_timeout_override=policy.allow_timeout_override,
        timeout_action=mc.ModelQueuePolicy.TimeoutAction.Name(policy.timeout_action).lower())


def _answer_queue_policy(message: mc.ModelQueuePolicy, policy: QueuePolicy) -> None:
    message.max_queue_size = policy.max_queue_size
    message.default_timeout_microseconds = round(policy.default_timeout_ms * 1000)
    message.allow_timeout_override = policy.allow_timeout_override
    message.timeout_action = mc.ModelQueuePolicy.TimeoutAction.Value(  # type: ignore[assignment]
        policy.timeout_action.upper())


_CONTROL = mc.ModelSequenceBatching.Control


def _sequence_batching(message: mc.ModelConfig, where: str) -> SequenceBatching | None:
    if not message.HasField("sequence_batching"):
        return None
    sequence = message.sequence_batching
    controls = []
    for control_input in sequence.control_input:
        if len(control_input.control) != 1:
            raise ConfigError(f"{where}: sequence_batching control_input '{control_input.name}' must hold one "
                              f"control, got {len(control_input.control)}")
        controls.append(_control(control_input.name, control_input.control[0], where))
    strategy = sequence.WhichOneof("strategy_choice") or ""
    direct, oldest = sequence.direct, sequence.oldest
    return SequenceBatching(
        int(sequence.max_sequence_idle_microseconds) or 1_000_000, tuple(controls), strategy,
        tuple(_state(state, where) for state in sequence.state),
        max_queue_delay_us=int((oldest if strategy == "oldest" else direct).max_queue_delay_microseconds),
        minimum_slot_utilization=float(direct.minimum_slot_utilization),
        max_candidate_sequences=int(oldest.max_candidate_sequences),
        preferred_batch_sizes=tuple(sorted(set(int(size) for size in oldest.preferred_batch_size))),
        preserve_ordering=strategy == "oldest" and oldest.preserve_ordering)


def _state(state: mc.ModelSequenceBatching.State, where: str) -> SequenceState:
    """An implicit state; Triton's refusals of its initial_state at load, the rest in check_states."""
    if state.use_growable_memory:
        raise ConfigError(f"{where}: sequence_batching state '{state.input_name}' key 'use_growable_memory' "
                          f"{GROWABLE_REFUSED}")
    if len(state.initial_state) > 1:
        raise ConfigError(f"{where}: initial_state field for state input '{state.input_name}' must contain exactly "
                          f"one or zero element. Found '{len(state.initial_state)}' elements.")
    initial = None
    if state.initial_state:
        given = state.initial_state[0]
        source = given.WhichOneof("state_data")
        initial = InitialState(given.name, _datatype(given.data_type), tuple(int(d) for d in given.dims),
                               "file" if source == "data_file" else "zero" if source else "", given.data_file)
    return SequenceState(state.input_name, state.output_name, _datatype(state.data_type),
                         tuple(int(d) for d in state.dims), initial, state.use_same_buffer_for_input_output)


def _control(name: str, control: Any, where: str) -> SequenceControl:
    kind = _CONTROL.Kind.Name(control.kind).removeprefix("CONTROL_SEQUENCE_")
    if kind == "CORRID":
        if control.data_type == mc.TYPE_INVALID:
            raise ConfigError(f"{where}: control input '{name}' (CONTROL_SEQUENCE_CORRID) needs a data_type")
        return SequenceControl(name, kind, _datatype(control.data_type))
    given = [(datatype, list(values)) for datatype, values in
             (("INT32", control.int32_false_true), ("FP32", control.fp32_false_true),
              ("BOOL", control.bool_false_true)) if values]
    if len(given) != 1 or len(given[0][1]) != 2:
        raise ConfigError(f"{where}: control input '{name}' needs one of int32_false_true, fp32_false_true, "
                          "bool_false_true with two values (false, true)")
    datatype, values = given[0]
    return SequenceControl(name, kind, datatype, (values[0], values[1]))


def _instance_group(message: mc.ModelConfig, backend: str | None, where: str) -> InstanceGroup:
    """The instance groups as one; a process instance's call has no time limit (response_timeout_s
    0), as Triton gives a model's execute none: config.toml is where inferd's limit is set."""
    groups = list(message.instance_group)
    if not groups:
        return InstanceGroup(response_timeout_s=0.0)
    if any(group.count < 0 for group in groups):
        raise ConfigError(f"{where}: key 'instance_group.count' must be >= 1, got {min(g.count for g in groups)}")
    limit = _rate_limit(groups, where)
    return dataclasses.replace(_placement(groups, backend, where), rate_limiter=limit, response_timeout_s=0.0)


def _rate_limit(groups: list[mc.ModelInstanceGroup], where: str) -> RateLimit | None:
    """The groups' rate_limiter: inferd serves a model's groups as one pool, so several groups must
    agree on it (or leave it out)."""
    given = {group.rate_limiter.SerializeToString(deterministic=True) for group in groups
             if group.HasField("rate_limiter")}
    if not given:
        return None
    if len(given) > 1 or not all(group.HasField("rate_limiter") for group in groups):
        raise ConfigError(f"{where}: key 'instance_group' lists {len(groups)} groups with different rate_limiter "
                          "sections; inferd runs a model's groups as one pool of instances, so they must ask for "
                          "the same rate_limiter (or be one group)")
    section = next(group.rate_limiter for group in groups if group.HasField("rate_limiter"))
    resources = tuple(RateResource(r.name, r.count, getattr(r, "global")) for r in section.resources)
    return check_rate_limit(RateLimit(resources, section.priority), where)


def _placement(groups: list[mc.ModelInstanceGroup], backend: str | None, where: str) -> InstanceGroup:
    """The groups' count, kind and devices, as one group."""
    if len(groups) > 1:  # CPU groups add up, as Triton's instances do; GPU placement is one group's
        if any(g.kind in (mc.ModelInstanceGroup.KIND_GPU, mc.ModelInstanceGroup.KIND_MODEL) or g.gpus for g in groups):
            raise ConfigError(f"{where}: key 'instance_group' lists {len(groups)} groups with GPUs or KIND_MODEL; "
                              "inferd serves one such group (several CPU groups add up)")
        merged = mc.ModelInstanceGroup(count=sum(g.count or 1 for g in groups),
                                       kind=max(g.kind for g in groups))  # KIND_CPU over KIND_AUTO
        groups = [merged]
    group = groups[0]
    count = group.count or 1
    if group.kind == mc.ModelInstanceGroup.KIND_MODEL:  # which backends serve it: the loader says
        if group.gpus:  # Triton's ValidateInstanceGroup
            raise ConfigError(f"{where}: key 'instance_group' has kind KIND_MODEL but specifies one or more GPUs "
                              f"({list(group.gpus)}); the model keeps the devices it was saved with")
        return InstanceGroup(count=count, kind="model")
    if group.kind == mc.ModelInstanceGroup.KIND_GPU:
        return InstanceGroup(count=count, kind="gpu", gpus=tuple(group.gpus) or (0,))
    if group.gpus:
        raise ConfigError(f"{where}: key 'instance_group.gpus' needs kind: KIND_GPU")
    # Triton's Python backend runs every instance in a process of its own, whatever the kind says
    # (a decoupled model's answers cross from its process one at a time); a backend not named yet
    # (inferred from the files, or a load's override without it) is decided when it is known
    cpu = "cpu" if group.kind == mc.ModelInstanceGroup.KIND_CPU and backend is not None else ""
    kind = "process" if backend == "python" else cpu
    return InstanceGroup(count=count, kind=kind)


def _version_policy(message: mc.ModelConfig, where: str) -> VersionPolicy:
    """As Triton's model_lifecycle.cc VersionsToLoad reads it: a policy that names no choice serves
    every version, and one that selects none (``latest { num_versions: 0 }``) fails the load."""
    if not message.HasField("version_policy"):
        return VersionPolicy()
    policy = message.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice in ("all", None):
        return VersionPolicy(latest=None, all=True)
    if choice == "specific":
        versions = tuple(int(v) for v in policy.specific.versions)
        if not versions or any(v < 1 for v in versions):
            raise ConfigError(f"{where}: key 'version_policy.specific.versions' must list versions >= 1")
        return VersionPolicy(latest=None, specific=versions)
    if policy.latest.num_versions == 0:
        raise ConfigError(f"{where}: key 'version_policy.latest.num_versions' is 0, so no version would load; "
                          "at least one version must be available under the version policy (1 or more)")
    return VersionPolicy(latest=policy.latest.num_versions)


# -- answering -------------------------------------------------------------------------------------
def model_config_message(served: ServedConfig) -> mc.ModelConfig:
    """What the model configuration extension answers, as Triton's message."""
    config = served.config
    # a Python model's platform (its metadata's "python") is left empty, as Triton's configuration
    # leaves it, so the answer loads back as an override
    message = mc.ModelConfig(name=served.name, platform="" if served.backend == "python" else served.platform,
                             backend=_TRITON_BACKEND.get(served.backend, ""),
                             max_batch_size=config.max_batch_size)
    policy = config.version_policy
    if policy.all:
        message.version_policy.all.SetInParent()
    elif policy.specific:
        message.version_policy.specific.versions.extend(policy.specific)
    else:
        message.version_policy.latest.num_versions = policy.latest or 1
    for tensor in config.inputs:
        added_input = message.input.add(name=tensor.name, data_type=_type_of(tensor.datatype),
                                        dims=list(tensor.shape),
                                        format=mc.ModelInput.Format.Value(tensor.format or "FORMAT_NONE"),
                                        allow_ragged_batch=tensor.ragged, optional=tensor.optional)
        if tensor.reshape is not None:
            added_input.reshape.shape.extend(tensor.reshape)
    for tensor in config.outputs:
        added_output = message.output.add(name=tensor.name, data_type=_type_of(tensor.datatype),
                                          dims=list(tensor.shape), label_filename=tensor.label_filename)
        if tensor.reshape is not None:
            added_output.reshape.shape.extend(tensor.reshape)
    batching = config.dynamic_batching
    if batching is not None:
        dynamic = message.dynamic_batching
        dynamic.preferred_batch_size.extend(batching.preferred_batch_sizes)
        dynamic.max_queue_delay_microseconds = round(batching.max_queue_delay_ms * 1000)
        _answer_queue_policy(dynamic.default_queue_policy, batching.default_policy)
        dynamic.priority_levels = batching.priority_levels
        dynamic.default_priority_level = batching.default_priority_level
        for level, own in batching.priority_queue_policy.items():
            _answer_queue_policy(dynamic.priority_queue_policy[level], own)
    group = config.instance_group
    kind = group.resolved_kind(served.backend)
    if served.backend != "ensemble":  # an ensemble has no instances of its own
        added_group = message.instance_group.add(name=f"{served.name}_0", count=group.count, gpus=list(group.gpus),
                                                 kind=_KINDS.get(kind, mc.ModelInstanceGroup.KIND_CPU))
        if group.rate_limiter is not None:
            _answer_rate_limit(added_group.rate_limiter, group.rate_limiter)
    for key, value in config.parameters.items():
        message.parameters[key].string_value = value
    message.response_cache.enable = config.response_cache
    if config.backend_optimization.answer:
        json_format.Parse(config.backend_optimization.answer, message.optimization)
    message.model_transaction_policy.decoupled = config.decoupled
    if config.sequence_batching is not None:
        _answer_sequence(message.sequence_batching, config.sequence_batching)
    for step in config.ensemble:
        message.ensemble_scheduling.step.add(model_name=step.model_name, model_version=step.model_version,
                                             input_map=step.input_map, output_map=step.output_map)
    message.default_model_filename = config.default_model_filename
    for batch_input in config.batch_inputs:
        message.batch_input.add(kind=mc.BatchInput.Kind.Value(batch_input.kind),
                                target_name=list(batch_input.target_names),
                                data_type=_type_of(batch_input.datatype), source_input=list(batch_input.source_inputs))
    for batch_output in config.batch_outputs:
        message.batch_output.add(kind=mc.BatchOutput.Kind.Value(batch_output.kind),
                                 target_name=list(batch_output.target_names),
                                 source_input=list(batch_output.source_inputs))
    for sample in config.warmup_samples:
        added = message.model_warmup.add(name=sample.name, batch_size=sample.batch_size, count=sample.count)
        for given in sample.inputs:
            entry = added.inputs[given.name]
            entry.data_type = _type_of(given.datatype)  # type: ignore[assignment]
            entry.dims.extend(given.dims)
            if given.source == "file":
                entry.input_data_file = given.file
            else:
                setattr(entry, f"{given.source}_data", True)
    return message


_KINDS = {"gpu": mc.ModelInstanceGroup.KIND_GPU, "model": mc.ModelInstanceGroup.KIND_MODEL}  # else KIND_CPU


def _answer_rate_limit(message: mc.ModelRateLimiter, limit: RateLimit) -> None:
    message.SetInParent()
    message.priority = limit.priority
    for resource in limit.resources:
        added = message.resources.add(name=resource.name, count=resource.count)
        setattr(added, "global", resource.shared)  # a Python keyword: not a constructor argument


def _answer_sequence(message: mc.ModelSequenceBatching, sequence: SequenceBatching) -> None:
    message.max_sequence_idle_microseconds = sequence.max_sequence_idle_us
    if sequence.strategy == "direct":
        message.direct.SetInParent()
        message.direct.max_queue_delay_microseconds = sequence.max_queue_delay_us
        message.direct.minimum_slot_utilization = sequence.minimum_slot_utilization
    elif sequence.strategy == "oldest":
        message.oldest.max_candidate_sequences = sequence.max_candidate_sequences
        message.oldest.preferred_batch_size.extend(sequence.preferred_batch_sizes)
        message.oldest.max_queue_delay_microseconds = sequence.max_queue_delay_us
        message.oldest.preserve_ordering = sequence.preserve_ordering
        message.oldest.SetInParent()
    for control in sequence.controls:
        added = message.control_input.add(name=control.name).control.add(
            kind=_CONTROL.Kind.Value(f"CONTROL_SEQUENCE_{control.kind}"))
        if control.kind == "CORRID":
            added.data_type = _type_of(control.datatype)  # type: ignore[assignment]
        elif control.datatype == "FP32":
            added.fp32_false_true.extend(float(v) for v in control.false_true)
        elif control.datatype == "BOOL":
            added.bool_false_true.extend(bool(v) for v in control.false_true)
        else:
            added.int32_false_true.extend(int(v) for v in control.false_true)
    for state in sequence.states:
        added_state = message.state.add(input_name=state.input_name, output_name=state.output_name,
                                        data_type=_type_of(state.datatype), dims=list(state.dims),
                                        use_same_buffer_for_input_output=state.same_buffer)
        if state.initial is not None:
            initial = added_state.initial_state.add(name=state.initial.name, data_type=_type_of(state.initial.datatype),
                                                    dims=list(state.initial.dims))
            if state.initial.source == "file":
                initial.data_file = state.initial.file
            else:
                initial.zero_data = True


def model_config_json(served: ServedConfig) -> dict[str, Any]:
    """The same as JSON, as Triton's HTTP endpoint writes it (every field, 64-bit integers as
    numbers rather than protobuf JSON's strings)."""
    message = model_config_message(served)
    value = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                      always_print_fields_with_no_presence=True)
    return _numbers(mc.ModelConfig.DESCRIPTOR, value)


_WIDE = (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
         FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64)


def _numbers(descriptor: Any, value: dict[str, Any]) -> dict[str, Any]:
    for field in descriptor.fields:
        if field.name not in value:
            continue
        item = value[field.name]
        if field.type in _WIDE:
            value[field.name] = [int(v) for v in item] if isinstance(item, list) else int(item)
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_type = field.message_type.fields_by_name["value"].message_type
            if value_type is not None:  # a map of messages (priority_queue_policy): each value's
                for entry in item.values():
                    _numbers(value_type, entry)
        elif field.message_type is not None:
            for entry in item if isinstance(item, list) else [item]:
                _numbers(field.message_type, entry)
    return value
