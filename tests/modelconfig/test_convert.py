"""config.pbtxt and JSON overrides -> ModelConfig, and back to Triton's JSON; no server."""

from __future__ import annotations

import dataclasses
import json

import pytest

from inferd.config import (
    BatchInput,
    BatchOutput,
    InitialState,
    ModelConfig,
    QueuePolicy,
    RateLimit,
    RateResource,
    SequenceState,
    ServedConfig,
)
from inferd.errors import ConfigError
from inferd.modelconfig import apply_override, model_config_json, parse_pbtxt

TRITON_ONNX = """
name: "densenet"
platform: "onnxruntime_onnx"
max_batch_size: 4
input [
  { name: "data_0" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 224, 224 ] }
]
output [
  { name: "fc6_1" data_type: TYPE_FP32 dims: [ 1000 ] }
]
dynamic_batching {
  preferred_batch_size: [ 2, 4 ]
  max_queue_delay_microseconds: 1500
  default_queue_policy { max_queue_size: 7 default_timeout_microseconds: 250000 }
}
instance_group [ { count: 3 kind: KIND_CPU } ]
version_policy: { specific: { versions: [ 1, 3 ] } }
parameters: { key: "intra_op_thread_count" value: { string_value: "2" } }
"""


def test_a_triton_config_reads_into_inferds() -> None:
    config = parse_pbtxt(TRITON_ONNX, "densenet/config.pbtxt", "densenet")
    assert (config.backend, config.max_batch_size, config.intra_op_threads) == ("onnx", 4, 2)
    assert [(t.name, t.datatype, t.shape, t.format) for t in config.inputs] == [
        ("data_0", "FP32", (3, 224, 224), "FORMAT_NCHW")]
    assert config.outputs[0].shape == (1000,)
    batching = config.dynamic_batching
    assert batching is not None and batching.preferred_batch_sizes == (2, 4)
    assert (batching.max_queue_delay_ms, batching.max_queue_size, batching.default_timeout_ms) == (1.5, 7, 250.0)
    assert (config.instance_group.count, config.instance_group.kind) == (3, "cpu")
    assert config.version_policy.specific == (1, 3) and config.version_policy.choose([1, 2, 3]) == [1, 3]


@pytest.mark.parametrize(("text", "names"), [
    ('backend: "python"\ninstance_group [ { kind: KIND_CPU } ]', ("python", "process", 1)),
    ('backend: "pytorch"\ninstance_group [ { count: 2 kind: KIND_GPU gpus: [ 1 ] } ]', ("torch", "gpu", 2)),
    ('platform: "pytorch_libtorch"', ("torch", "", 1)),
    ('backend: "onnxruntime"\ninstance_group [ { count: 2 } ]', ("onnx", "", 2)),
    ('backend: "armnn_tflite"', ("tflite", "", 1)),  # Triton's TFLite backend, served by inferd's
    ('backend: "pytorch"\ninstance_group [ { count: 2 kind: KIND_MODEL } ]', ("torch", "model", 2)),
    ('backend: "onnxruntime"\ninstance_group [ { count: 2 }, { count: 3 kind: KIND_CPU } ]', ("onnx", "cpu", 5)),
    ('backend: "python"\nmodel_transaction_policy { decoupled: true }\ninstance_group [ { kind: KIND_CPU } ]',
     ("python", "process", 1)),
])
def test_backends_and_instance_kinds(text: str, names: tuple[str, str, int]) -> None:
    config = parse_pbtxt(text, "m/config.pbtxt", "m")
    assert (config.backend, config.instance_group.kind, config.instance_group.count) == names


STATE = 'sequence_batching { state [ { input_name: "S" output_name: "T" data_type: TYPE_FP32 dims: [ -1, 2 ] %s } ] }'

@pytest.mark.parametrize(("text", "named"), [
    ('sequence_batching { control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START } ] } ] }',
     "int32_false_true"),
    ('sequence_batching { control_input [ { name: "C" control [ { kind: CONTROL_SEQUENCE_CORRID } ] } ] }',
     "needs a data_type"),
    ('max_batch_size: 2\nsequence_batching { }\ndynamic_batching { }', "dynamic_batching"),
    ('max_batch_size: 2\nsequence_batching { oldest { preferred_batch_size: [ 4 ] } }',
     "sequence batching preferred batch size must be positive and <= max batch size (2), got 4"),
    ('max_batch_size: 2\nsequence_batching { direct { minimum_slot_utilization: 1.5 } }',
     "minimum slot utilization must be in range (0.0, 1.0], got 1.5"),
    ('sequence_batching { }\nresponse_cache { enable: true }', "cannot have response_cache"),
    ('sequence_batching { control_input [ { name: "INPUT" control [ { kind: CONTROL_SEQUENCE_READY '
     'fp32_false_true: [ 0, 1 ] } ] } ] }\ninput [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 1 ] } ]',
     "also declared as an input"),
    ('model_repository_agents { agents [ { name: "checksum" } ] }', '"model_repository_agents"'),
    ("optimization { graph { level: 3 } }", "'optimization.graph.level' must be -1 (basic), 0 (all)"),
    ('optimization { execution_accelerators { cpu_execution_accelerator [ { name: "tensorrt" } ] } }',
     "names 'tensorrt'; inferd knows openvino"),
    ('optimization { execution_accelerators { gpu_execution_accelerator [ { name: "auto_mixed_precision" } ] } }',
     "names 'auto_mixed_precision'; inferd knows tensorrt, cuda"),
    ('backend: "onnxruntime"\nparameters: { key: "execution_mode" value: { string_value: "2" } }',
     "parameter 'execution_mode' must be 0 or 1, got '2'"),
    ('backend: "pytorch"\nparameters: { key: "INFERENCE_MODE" value: { string_value: "maybe" } }',
     "parameter 'INFERENCE_MODE' must be true or false, got 'maybe'"),
    ('backend: "pytorch"\nparameters: { key: "execution_mode" value: { string_value: "1" } }',
     "parameter 'execution_mode' is not one inferd serves for this backend (known: INTRA_OP_THREAD_COUNT"),
    ('backend: "tensorflow"\nparameters: { key: "TF_NUM_INTER_THREADS" value: { string_value: "-1" } }',
     "parameter 'TF_NUM_INTER_THREADS' must be a thread count (0 to 4096)"),
    ('backend: "onnxruntime"\nparameters: { key: "intra_op_thread_count" value: { string_value: "'
     + "9" * 5000 + '" } }',
     "parameter 'intra_op_thread_count' must be a thread count"),
    ('backend: "onnxruntime"\nparameters: { key: "gpu_mem_limit" value: { string_value: "' + "9" * 21 + '" } }',
     "parameter 'gpu_mem_limit' must be a count (0 to 2^64-1)"),
    ('input [ { name: "a" data_type: TYPE_FP32 dims: [ 2 ] reshape: { shape: [ 3 ] } } ]', "key 'reshape' [3]"),
    ('input [ { name: "a" data_type: TYPE_FP32 dims: [ -1 ] reshape: { shape: [ 2 ] } } ]', "key 'reshape' [2]"),
    ('platform: "tensorrt_plan"', "'platform' is 'tensorrt_plan'"),
    ('backend: "python"\nplatform: "onnxruntime_onnx"', "disagree"),
    ('name: "other"', "key 'name' is 'other' but the model's folder is 'm'"),
    ("instance_group [ { count: 1 kind: KIND_GPU }, { count: 1 } ]", "inferd serves one such group"),
    ("instance_group [ { kind: KIND_MODEL gpus: [ 0 ] } ]", "has kind KIND_MODEL but specifies one or more GPUs"),
    ("instance_group [ { kind: KIND_MODEL }, { kind: KIND_CPU } ]", "inferd serves one such group"),
    ("dynamic_batching { }", "needs max_batch_size > 0"),
    ('input [ { name: "a" dims: [ 1 ] } ]', "needs a 'data_type'"),
    ('backend: "onnxruntime"\nparameters: { key: "colour" value: { string_value: "red" } }', "'colour'"),
    ("max_batch_size: 4 max_batch_size: 8", "max_batch_size"),
    ("max_batch_size: four", "max_batch_size"),
    ('model_warmup [ { name: "w" batch_size: 2 inputs { key: "a" value: { data_type: TYPE_FP32 zero_data: true } } } ]',
     "batch_size 2 needs max_batch_size > 0"),
    ('model_warmup [ { name: "w" } ]', "model_warmup 'w': needs inputs"),
    ('default_model_filename: "../other/model.onnx"', "key 'default_model_filename' must be a file name"),
    ('model_warmup [ { name: "w" inputs { key: "a" value: { data_type: TYPE_FP32 } } } ]',
     "input 'a' needs zero_data, random_data or input_data_file"),
    ('model_warmup [ { name: "w" inputs { key: "a" value: { random_data: true } } } ]', "input 'a' needs a data_type"),
    ('model_warmup [ { name: "w" inputs { key: "a" value: { data_type: TYPE_FP32 input_data_file: "../x" } } } ]',
     "under the model's warmup/ folder"),
    ('model_warmup [ { name: "w" inputs { key: "a" value: { data_type: TYPE_FP32 dims: [ -1 ] zero_data: true } } } ]',
     "dims must be known"),
    (STATE % "use_growable_memory: true use_same_buffer_for_input_output: true",
     "state 'S' key 'use_growable_memory' is not served"),
    (STATE % ('initial_state: [ { data_type: TYPE_FP32 dims: [ 1, 2 ] zero_data: true name: "a" }, '
              '{ data_type: TYPE_FP32 dims: [ 1, 2 ] zero_data: true name: "b" } ]'),
     "initial_state field for state input 'S' must contain exactly one or zero element. Found '2' elements."),
    (STATE % 'initial_state: { data_type: TYPE_INT32 dims: [ 1, 2 ] zero_data: true name: "a" }',
     "state 'S': initial_state data_type INT32 does not match the state's FP32"),
    (STATE % 'initial_state: { data_type: TYPE_FP32 dims: [ 1, 2 ] zero_data: true }', "initial_state needs a 'name'"),
    (STATE % 'initial_state: { data_type: TYPE_FP32 dims: [ -1, 2 ] zero_data: true name: "a" }',
     "initial_state dims [-1, 2] must be fixed sizes (no -1) that fit the state's dims [-1, 2]"),
    (STATE % 'initial_state: { data_type: TYPE_FP32 dims: [ 3, 3 ] zero_data: true name: "a" }',
     "initial_state dims [3, 3] must be fixed sizes"),
    (STATE % 'initial_state: { data_type: TYPE_FP32 dims: [ 3 ] zero_data: true name: "a" }',
     "initial_state dims [3] must be fixed sizes"),
    (STATE % 'initial_state: { data_type: TYPE_FP32 dims: [ 1, 2 ] name: "a" }', "needs zero_data or data_file"),
    (STATE % 'initial_state: { data_type: TYPE_FP32 dims: [ 1, 2 ] data_file: "../s.bin" name: "a" }',
     "data_file must be a file under the model's initial_state/ folder, got '../s.bin'"),
    (STATE.replace("TYPE_FP32", "TYPE_STRING") % 'initial_state: { data_type: TYPE_STRING dims: [ 1, 2 ] '
                                                  'data_file: "s.bin" name: "a" }',
     "a BYTES (TYPE_STRING) state starts from empty strings (zero_data); initial_state data_file is served for "
     "numeric states only"),
    (STATE % "" + '\ninput [ { name: "S" data_type: TYPE_FP32 dims: [ 2 ] } ]',
     "state 'S' is also declared as an input"),
    ('sequence_batching { state [ { input_name: "S" data_type: TYPE_FP32 } ] }',
     "needs an input_name and an output_name"),
    ('sequence_batching { state [ { input_name: "S" output_name: "T" data_type: TYPE_FP32 }, '
     '{ input_name: "S" output_name: "U" data_type: TYPE_FP32 } ] }', "state input_names must be unique"),
    ('sequence_batching { control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_READY '
     'fp32_false_true: [ 0, 1 ] } ] } ] state [ { input_name: "S" output_name: "T" data_type: TYPE_FP32 } ] }',
     "has the name of a control input"),
])
def test_what_inferd_cannot_serve_is_an_error_naming_it(text: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_pbtxt(text, "m/config.pbtxt", "m")
    assert named in caught.value.message and "m/config.pbtxt" in caught.value.message


def test_python_models_get_their_parameters() -> None:
    config = parse_pbtxt('backend: "python"\nparameters: { key: "EXECUTION_ENV_PATH" value: { string_value: "x" } }',
                         "p", "m")
    assert config.parameters == {"EXECUTION_ENV_PATH": "x"}


@pytest.mark.parametrize("policy", ["version_policy: { latest: { num_versions: 0 } }",
                                    "version_policy: { latest: { } }"])
def test_a_latest_policy_of_no_versions_is_a_load_error_as_in_triton(policy: str) -> None:
    """Triton picks no version for ``latest { num_versions: 0 }`` and fails the load, "at least one
    version must be available under the version policy" (core's model_lifecycle.cc, AsyncLoad /
    VersionsToLoad); inferd read it as latest 1 and served a version."""
    with pytest.raises(ConfigError, match=r"m/config.pbtxt: key 'version_policy.latest.num_versions' is 0, so "
                                          r"no version would load"):
        parse_pbtxt(policy, "m/config.pbtxt", "m")
    with pytest.raises(ConfigError, match=r"failed to load 'm'.*num_versions' is 0"):  # a load's override too
        apply_override(ModelConfig(), '{"version_policy": {"latest": {"num_versions": 0}}}', "m")


def test_a_version_policy_naming_no_choice_serves_every_version_as_in_triton() -> None:
    """Triton's VersionsToLoad: neither latest nor specific set means all versions."""
    policy = parse_pbtxt("version_policy: { }", "m/config.pbtxt", "m").version_policy
    assert policy.choose([1, 2, 3]) == [1, 2, 3]
    assert parse_pbtxt("version_policy: { latest: { num_versions: 2 } }", "m/config.pbtxt",
                       "m").version_policy.choose([1, 2, 3]) == [2, 3]


def test_override_replaces_the_keys_it_sets_and_keeps_the_rest() -> None:
    base = parse_pbtxt(TRITON_ONNX, "densenet/config.pbtxt", "densenet")
    changed = apply_override(base, '{"max_batch_size": "8", "dynamic_batching": {}}', "densenet")
    assert changed.max_batch_size == 8 and changed.inputs == base.inputs
    assert changed.dynamic_batching is not None and changed.dynamic_batching.preferred_batch_sizes == ()
    assert changed.instance_group == base.instance_group
    with pytest.raises(ConfigError, match="failed to load 'densenet'"):
        apply_override(base, '{"max_batch_size": 0}', "densenet")  # batching needs a batch dim


def test_allow_timeout_override_reads_and_answers_back() -> None:
    text = TRITON_ONNX.replace("default_timeout_microseconds: 250000",
                               "default_timeout_microseconds: 250000 allow_timeout_override: true")
    config = parse_pbtxt(text, "densenet/config.pbtxt", "densenet")
    assert config.dynamic_batching is not None and config.dynamic_batching.allow_timeout_override
    value = model_config_json(ServedConfig("densenet", "onnxruntime_onnx", "onnx", config))
    assert value["dynamic_batching"]["default_queue_policy"]["allow_timeout_override"] is True
    assert not parse_pbtxt(TRITON_ONNX, "densenet/config.pbtxt", "densenet").dynamic_batching.allow_timeout_override


def test_served_config_as_tritons_json_round_trips() -> None:
    config = parse_pbtxt(TRITON_ONNX, "densenet/config.pbtxt", "densenet")
    value = model_config_json(ServedConfig("densenet", "onnxruntime_onnx", "onnx", config))
    assert value["input"][0]["dims"] == [3, 224, 224]  # numbers, not protobuf JSON's strings
    assert value["dynamic_batching"]["max_queue_delay_microseconds"] == 1500
    assert value["version_policy"] == {"specific": {"versions": [1, 3]}}
    again = apply_override(ModelConfig(), json.dumps(value), "densenet")
    assert again.inputs == config.inputs and again.dynamic_batching == config.dynamic_batching


TRITON_SEQUENCE = """
backend: "python"
max_batch_size: 8
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY bool_false_true: [ false, true ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 5, 7 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_STRING } ] }
  ]
}
"""


def test_sequence_batching_reads_its_controls_and_answers_them_back() -> None:
    config = parse_pbtxt(TRITON_SEQUENCE, "s/config.pbtxt", "s")
    sequence = config.sequence_batching
    assert sequence is not None and sequence.max_sequence_idle_us == 5_000_000
    assert [(c.name, c.kind, c.datatype, c.false_true) for c in sequence.controls] == [
        ("START", "START", "FP32", (0, 1)), ("READY", "READY", "BOOL", (False, True)),
        ("END", "END", "INT32", (5, 7)), ("CORRID", "CORRID", "BYTES", (0, 1))]
    value = model_config_json(ServedConfig("s", "", "python", config))
    assert value["sequence_batching"]["max_sequence_idle_microseconds"] == 5_000_000
    assert value["sequence_batching"]["control_input"][2] == {
        "name": "END", "control": [{"kind": "CONTROL_SEQUENCE_END", "int32_false_true": [5, 7],
                                    "fp32_false_true": [], "bool_false_true": [], "data_type": "TYPE_INVALID"}]}
    again = apply_override(ModelConfig(), json.dumps(value), "s")
    assert again.sequence_batching == sequence
    assert parse_pbtxt("sequence_batching { }", "p", "m").sequence_batching.max_sequence_idle_us == 1_000_000
    for strategy in ("direct { max_queue_delay_microseconds: 100 }", "oldest { max_candidate_sequences: 4 }"):
        read = parse_pbtxt(f"sequence_batching {{ {strategy} }}", "p", "m").sequence_batching
        assert read is not None and read.strategy == strategy.split()[0]
        served = ServedConfig("s", "", "python", dataclasses.replace(config, sequence_batching=read))
        answered = model_config_json(served)
        assert strategy.split()[0] in answered["sequence_batching"]


def test_the_sequence_strategies_fields_are_read_and_answered_back() -> None:
    for strategy, fields in (
            ("oldest { max_candidate_sequences: 4 preferred_batch_size: [ 4, 2 ] max_queue_delay_microseconds: 300 }",
             {"max_candidate_sequences": 4, "preferred_batch_sizes": (2, 4), "max_queue_delay_us": 300}),
            ("direct { max_queue_delay_microseconds: 100 minimum_slot_utilization: 0.5 }",
             {"max_queue_delay_us": 100, "minimum_slot_utilization": 0.5})):
        config = parse_pbtxt(f"max_batch_size: 8\nsequence_batching {{ {strategy} }}", "p", "m")
        read = config.sequence_batching
        assert read is not None and {key: getattr(read, key) for key in fields} == fields
        answered = model_config_json(ServedConfig("m", "", "onnx", config))["sequence_batching"]
        name = strategy.split()[0]
        assert answered[name]["max_queue_delay_microseconds"] == fields["max_queue_delay_us"]
        again = apply_override(ModelConfig(max_batch_size=8), json.dumps({"sequence_batching": answered}), "m")
        assert again.sequence_batching == read


BACKEND_OPTIONS = """
backend: "onnxruntime"
optimization {
  graph { level: 2 }
  priority: PRIORITY_MAX
  input_pinned_memory { enable: true }
  execution_accelerators {
    gpu_execution_accelerator [ { name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } } ]
    cpu_execution_accelerator [ { name: "openvino" } ]
  }
}
parameters: { key: "execution_mode" value: { string_value: "1" } }
parameters: { key: "inter_op_thread_count" value: { string_value: "2" } }
"""


def test_optimization_and_backend_parameters_read_as_tritons_backends_do() -> None:
    """Triton's onnxruntime backend reads the graph level, accelerators and parameters; they are
    answered back as written."""
    config = parse_pbtxt(BACKEND_OPTIONS, "m/config.pbtxt", "m")
    optimization = config.backend_optimization
    assert optimization.graph_level == 2
    assert [(a.name, a.parameters) for a in optimization.gpu_accelerators] == [
        ("tensorrt", (("precision_mode", "FP16"),))]
    assert [a.name for a in optimization.cpu_accelerators] == ["openvino"]
    assert config.parameters == {"execution_mode": "1", "inter_op_thread_count": "2"}
    answer = model_config_json(ServedConfig("m", "onnxruntime_onnx", "onnx", config))
    assert answer["optimization"]["graph"] == {"level": 2}
    assert answer["optimization"]["priority"] == "PRIORITY_MAX"
    assert answer["optimization"]["input_pinned_memory"] == {"enable": True}
    assert answer["optimization"]["execution_accelerators"]["gpu_execution_accelerator"] == [
        {"name": "tensorrt", "parameters": {"precision_mode": "FP16"}}]
    overridden = apply_override(config, json.dumps({"optimization": {"graph": {"level": -1}}}), "m")
    assert overridden.backend_optimization.graph_level == -1 and not overridden.backend_optimization.cpu_accelerators
    assert overridden.parameters == config.parameters


def test_implicit_state_reads_and_answers_back() -> None:
    """Triton's state: input and output names, dims with -1, the initial state (zeros or a file);
    answered back by the configuration endpoint and read again by an override."""
    text = STATE % 'initial_state: { data_type: TYPE_FP32 dims: [ 3, 2 ] data_file: "s.bin" name: "f" }'
    config = parse_pbtxt(text.replace("state [", "direct { } state ["), "s/config.pbtxt", "s")
    sequence = config.sequence_batching
    assert sequence is not None and sequence.strategy == "direct"
    initial = InitialState("f", "FP32", (3, 2), "file", "s.bin")
    assert sequence.states == (SequenceState("S", "T", "FP32", (-1, 2), initial),)
    assert sequence.states[0].start_shape() == (3, 2)
    value = model_config_json(ServedConfig("s", "", "onnxruntime", config))
    assert value["sequence_batching"]["state"] == [{
        "input_name": "S", "output_name": "T", "data_type": "TYPE_FP32", "dims": [-1, 2],
        "initial_state": [{"data_type": "TYPE_FP32", "dims": [3, 2], "data_file": "s.bin", "name": "f"}],
        "use_same_buffer_for_input_output": False, "use_growable_memory": False}]
    assert apply_override(ModelConfig(), json.dumps(value), "s").sequence_batching == sequence
    bare = parse_pbtxt(STATE % "use_same_buffer_for_input_output: true", "p", "m").sequence_batching
    assert bare is not None and bare.states[0].initial is None and bare.states[0].same_buffer
    assert bare.states[0].start_shape() == (1, 2)  # Triton's: each -1 as 1 at a sequence's start


PRIORITIES = """
  priority_levels: 3
  default_priority_level: 2
  priority_queue_policy { key: 1 value: { max_queue_size: 2 default_timeout_microseconds: 5000
                                          timeout_action: DELAY allow_timeout_override: true } }
  priority_queue_policy { key: 3 value: { default_timeout_microseconds: 100 } }
}
instance_group"""


def test_priority_levels_and_queue_policies_read_and_answer_back() -> None:
    text = TRITON_ONNX.replace("}\ninstance_group", PRIORITIES, 1).replace(
        "default_timeout_microseconds: 250000", "default_timeout_microseconds: 250000 timeout_action: DELAY")
    config = parse_pbtxt(text, "densenet/config.pbtxt", "densenet")
    batching = config.dynamic_batching
    assert batching is not None and (batching.priority_levels, batching.default_priority_level) == (3, 2)
    assert batching.default_policy == QueuePolicy(7, 250.0, False, "delay")
    assert batching.priority_queue_policy == {1: QueuePolicy(2, 5.0, True, "delay"),
                                              3: QueuePolicy(1024, 0.1, False, "reject")}  # 0: bounded
    assert batching.policy(2) == batching.default_policy
    value = model_config_json(ServedConfig("densenet", "onnxruntime_onnx", "onnx", config))["dynamic_batching"]
    assert (value["priority_levels"], value["default_priority_level"]) == (3, 2)  # numbers, not strings
    assert value["default_queue_policy"]["timeout_action"] == "DELAY"
    assert value["priority_queue_policy"]["1"] == {"timeout_action": "DELAY", "default_timeout_microseconds": 5000,
                                                   "allow_timeout_override": True, "max_queue_size": 2}
    assert value["priority_queue_policy"]["3"]["timeout_action"] == "REJECT"
    again = apply_override(ModelConfig(), json.dumps({**model_config_json(
        ServedConfig("densenet", "onnxruntime_onnx", "onnx", config))}), "densenet")
    assert again.dynamic_batching == batching


@pytest.mark.parametrize(("batching", "says"), [
    ("priority_levels: 2", r"'dynamic_batching.default_priority_level' must be in range \[1, 2\].*got 0"),
    ("priority_levels: 2 default_priority_level: 3", r"must be in range \[1, 2\] \(priority_levels = 2\), got 3"),
    ("priority_levels: 2 default_priority_level: 1 priority_queue_policy { key: 4 value: {} }",
     r"names level 4; levels must be in range \[1, 2\]"),
    ("default_queue_policy { timeout_action: LATER }", "LATER"),
])
def test_priority_levels_out_of_range_are_refused_as_triton_refuses_them(batching: str, says: str) -> None:
    text = f'backend: "onnxruntime"\nmax_batch_size: 4\ndynamic_batching {{ {batching} }}'
    with pytest.raises(ConfigError, match=says):
        parse_pbtxt(text, "m/config.pbtxt", "m")


def test_without_priority_levels_the_priority_keys_are_ignored_as_in_triton() -> None:
    text = 'backend: "onnxruntime"\nmax_batch_size: 4\ndynamic_batching { default_priority_level: 9 }'
    batching = parse_pbtxt(text, "m/config.pbtxt", "m").dynamic_batching
    assert batching is not None and batching.priority_levels == 0 and batching.level_of(1) == 0


TRITON_RAGGED = """
backend: "onnxruntime"
max_batch_size: 16
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]
output [ { name: "SUM" data_type: TYPE_FP32 dims: [ 1 ] }, { name: "DOUBLED" data_type: TYPE_FP32 dims: [ -1 ] } ]
batch_input [ { kind: BATCH_ACCUMULATED_ELEMENT_COUNT target_name: "INDEX" data_type: TYPE_INT32
                source_input: "INPUT" },
              { kind: BATCH_ITEM_SHAPE_FLATTEN target_name: [ "SHAPES", "SHAPES_AGAIN" ] data_type: TYPE_FP32
                source_input: "INPUT" } ]
batch_output [ { target_name: "DOUBLED" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "INPUT" } ]
dynamic_batching { max_queue_delay_microseconds: 100000 }
"""


def test_ragged_batching_reads_and_answers_back() -> None:
    config = parse_pbtxt(TRITON_RAGGED, "r/config.pbtxt", "r")
    assert config.ragged and config.inputs[0].ragged
    assert config.batch_inputs == (
        BatchInput("BATCH_ACCUMULATED_ELEMENT_COUNT", ("INDEX",), "INT32", ("INPUT",)),
        BatchInput("BATCH_ITEM_SHAPE_FLATTEN", ("SHAPES", "SHAPES_AGAIN"), "FP32", ("INPUT",)))
    assert config.batch_outputs == (BatchOutput("BATCH_SCATTER_WITH_INPUT_SHAPE", ("DOUBLED",), ("INPUT",)),)
    value = model_config_json(ServedConfig("r", "onnxruntime_onnx", "onnx", config))
    assert value["input"][0]["allow_ragged_batch"] is True
    assert value["batch_input"][0] == {"kind": "BATCH_ACCUMULATED_ELEMENT_COUNT", "target_name": ["INDEX"],
                                       "data_type": "TYPE_INT32", "source_input": ["INPUT"]}
    assert value["batch_output"] == [{"target_name": ["DOUBLED"], "kind": "BATCH_SCATTER_WITH_INPUT_SHAPE",
                                      "source_input": ["INPUT"]}]
    again = apply_override(ModelConfig(), json.dumps(value), "r")
    assert (again.inputs, again.batch_inputs, again.batch_outputs) == (
        config.inputs, config.batch_inputs, config.batch_outputs)


_RAGGED_HEAD = ('max_batch_size: 4\ndynamic_batching { }\ninput [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] '
                'allow_ragged_batch: true } ]\noutput [ { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] } ]\n')


@pytest.mark.parametrize(("text", "says"), [
    ('max_batch_size: 4\ninput [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]',
     "need dynamic_batching"),
    (_RAGGED_HEAD + 'batch_input [ { target_name: "N" data_type: TYPE_INT32 } ]', "expects 1 source_input, got 0"),
    (_RAGGED_HEAD + 'batch_input [ { target_name: "N" data_type: TYPE_INT32 source_input: [ "X", "X" ] } ]',
     "expects 1 source_input, got 2"),
    (_RAGGED_HEAD + 'batch_input [ { target_name: "N" data_type: TYPE_INT32 source_input: "Z" } ]',
     "unknown source input name 'Z'; the inputs are ['X']"),
    (_RAGGED_HEAD + 'batch_input [ { target_name: "N" data_type: TYPE_INT64 source_input: "X" } ]',
     "data_type must be TYPE_INT32 or TYPE_FP32, got TYPE_INT64"),
    (_RAGGED_HEAD + 'batch_input [ { target_name: "N" source_input: "X" } ]', "needs a data_type"),
    (_RAGGED_HEAD + 'batch_input [ { data_type: TYPE_INT32 source_input: "X" } ]', "needs a target_name"),
    (_RAGGED_HEAD + 'batch_input [ { target_name: "X" data_type: TYPE_INT32 source_input: "X" } ]',
     "target_name 'X' is already a request input"),
    (_RAGGED_HEAD + 'batch_input [ { kind: BATCH_NEVER target_name: "N" data_type: TYPE_INT32 source_input: "X" } ]',
     "BATCH_NEVER"),
    (_RAGGED_HEAD + 'batch_output [ { target_name: "Z" source_input: "X" } ]', "unknown target output name 'Z'"),
    (_RAGGED_HEAD + 'batch_output [ { target_name: [ "Y", "Y" ] source_input: "X" } ]',
     "target output name 'Y' can only be specified once"),
    (_RAGGED_HEAD + 'batch_output [ { target_name: "Y" source_input: "Q" } ]', "unknown source input name 'Q'"),
])
def test_bad_ragged_batching_is_a_load_error_saying_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_pbtxt(text, "m/config.pbtxt", "m")
    assert says in caught.value.message and "m/config.pbtxt" in caught.value.message


RATE_LIMITED = """
backend: "python"
max_batch_size: 0
instance_group [ { count: 2 kind: KIND_CPU
                   rate_limiter { resources [ { name: "R1" count: 4 global: false },
                                              { name: "G" count: 1 global: true } ]
                                  priority: 2 } } ]
"""


def test_a_rate_limiter_reads_and_answers_back_and_overrides() -> None:
    config = parse_pbtxt(RATE_LIMITED, "m/config.pbtxt", "m")
    limit = config.instance_group.rate_limiter
    assert limit == RateLimit((RateResource("R1", 4), RateResource("G", 1, shared=True)), 2)
    value = model_config_json(ServedConfig("m", "", "python", config))
    assert value["instance_group"][0]["rate_limiter"] == {
        "resources": [{"name": "R1", "global": False, "count": 4}, {"name": "G", "global": True, "count": 1}],
        "priority": 2}
    assert apply_override(ModelConfig(), json.dumps(value), "m").instance_group.rate_limiter == limit
    plain = parse_pbtxt("backend: \"python\"\ninstance_group [ { count: 1 } ]", "p/config.pbtxt", "p")
    answered = model_config_json(ServedConfig("p", "", "python", plain))
    assert plain.instance_group.rate_limiter is None and "rate_limiter" not in answered["instance_group"][0]


@pytest.mark.parametrize(("groups", "named"), [
    ('[ { count: 1 rate_limiter { resources [ { name: "R1" count: 1 } ] } }, { count: 1 } ]', "different rate_limiter"),
    ('[ { rate_limiter { resources [ { name: "R1" count: 1 } ] } }, { rate_limiter { priority: 3 } } ]',
     "different rate_limiter"),
    ('[ { rate_limiter { resources [ { name: "R1" count: 1 }, { name: "R1" count: 2 } ] } } ]',
     "lists resource 'R1' twice"),
    ('[ { rate_limiter { resources [ { count: 1 } ] } } ]', "every resource needs a name"),
])
def test_rate_limiters_inferd_cannot_serve_are_load_errors(groups: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        parse_pbtxt(f'backend: "python"\ninstance_group {groups}', "m/config.pbtxt", "m")


def test_several_groups_with_one_rate_limiter_add_up() -> None:
    text = ('backend: "python"\ninstance_group [ { count: 2 kind: KIND_CPU rate_limiter { resources [ { name: "R" '
            'count: 1 } ] } }, { count: 1 kind: KIND_CPU rate_limiter { resources [ { name: "R" count: 1 } ] } } ]')
    group = parse_pbtxt(text, "m/config.pbtxt", "m").instance_group
    assert group.count == 3 and group.rate_limiter == RateLimit((RateResource("R", 1),))


BATCHED = 'backend: "onnxruntime"\nmax_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 1000 }\n'
WAIT = 'parameters { key: "inferd.batch_wait" value: { string_value: "%s" } }\n'


def test_the_batch_wait_parameter_is_read_for_any_backend_and_an_override_may_set_it_alone() -> None:
    held = parse_pbtxt(BATCHED + WAIT % "delay", "m/config.pbtxt", "m")  # onnxruntime: a parameter it lacks
    assert held.dynamic_batching is not None and held.dynamic_batching.waits(held.parameters, "work-conserving")
    plain = parse_pbtxt(BATCHED, "m/config.pbtxt", "m")
    assert plain.dynamic_batching is not None
    assert not plain.dynamic_batching.waits(plain.parameters, "work-conserving")
    assert plain.dynamic_batching.waits(plain.parameters, "delay")  # the server's flag
    opted_out = parse_pbtxt(BATCHED + WAIT % "work-conserving", "m/config.pbtxt", "m")
    assert opted_out.dynamic_batching is not None
    assert not opted_out.dynamic_batching.waits(opted_out.parameters, "delay")
    overridden = apply_override(plain, '{"parameters": {"inferd.batch_wait": {"string_value": "delay"}}}', "m")
    assert overridden.dynamic_batching is not None
    assert overridden.dynamic_batching.waits(overridden.parameters, "work-conserving")
    rebatched = apply_override(held, '{"dynamic_batching": {"max_queue_delay_microseconds": 5}}', "m")
    assert rebatched.dynamic_batching is not None
    assert rebatched.dynamic_batching.waits(rebatched.parameters, "work-conserving")  # the parameter stays


def test_a_sequence_model_reads_the_batch_wait_parameter_too() -> None:
    text = 'backend: "onnxruntime"\nmax_batch_size: 8\nsequence_batching { direct { } }\n'
    held = parse_pbtxt(text + WAIT % "delay", "m/config.pbtxt", "m")
    assert held.sequence_batching is not None and held.sequence_batching.waits(held.parameters, "work-conserving")
    plain = parse_pbtxt(text, "m/config.pbtxt", "m")
    assert plain.sequence_batching is not None
    assert not plain.sequence_batching.waits(plain.parameters, "work-conserving")
    assert plain.sequence_batching.waits(plain.parameters, "delay")  # the server's flag


@pytest.mark.parametrize(("text", "expected"), [
    (BATCHED + WAIT % "soon", "parameter 'inferd.batch_wait' must be one of work-conserving, delay, got 'soon'"),
    ('max_batch_size: 8\n' + WAIT % "delay", "parameter 'inferd.batch_wait' needs dynamic_batching"),
])
def test_a_bad_batch_wait_parameter_says_what_it_takes(text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        parse_pbtxt(text, "m/config.pbtxt", "m")
