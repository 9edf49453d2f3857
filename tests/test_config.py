from __future__ import annotations

from pathlib import Path

import pytest

from inferd.config import (
    InitialState,
    Optimization,
    QueuePolicy,
    RateLimit,
    RateResource,
    SequenceState,
    ServerSettings,
    capture_sizes,
    load_model_config,
    parse_model_config,
)
from inferd.errors import ConfigError

FULL = """
backend = "onnx"
max_batch_size = 32
[dynamic_batching]
max_queue_delay_ms = 5
preferred_batch_sizes = [16, 8, 32]
max_queue_size = 10
default_timeout_ms = 100
[instance_group]
count = 2
kind = "cpu"
[version_policy]
all = true
[version_labels]
stable = 1
[[input]]
name = "x"
datatype = "FP32"
shape = [512]
[[output]]
name = "y"
datatype = "FP32"
shape = [10]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_full_config_is_read(tmp_path: Path) -> None:
    config = load_model_config(write(tmp_path, FULL))
    assert config.max_batch_size == 32
    assert config.dynamic_batching is not None
    assert config.dynamic_batching.preferred_batch_sizes == (8, 16, 32)
    assert config.dynamic_batching.max_queue_size == 10
    assert config.instance_group.count == 2
    assert config.version_policy.all
    assert config.version_labels == {"stable": 1}
    assert config.inputs[0].shape == (512,)


def test_missing_file_is_the_default(tmp_path: Path) -> None:
    assert load_model_config(tmp_path / "absent.toml").max_batch_size == 0


@pytest.mark.parametrize(("text", "message"), [
    ("max_batch_sise = 3", "key 'max_batch_sise' is not known; did you mean 'max_batch_size'\\?"),
    ("[instance_group]\ncuont = 2", "key 'cuont' is not known; did you mean 'count'\\?"),
    ("[dynamic_batching]\nmax_queue_delay = 2", "'max_queue_delay' is not known; did you mean 'max_queue_delay_ms'"),
    ("flavour = 'vanilla'", "key 'flavour' is not known$"),
    ("max_batch_size = 'big'", "key 'max_batch_size' must be an integer"),
    ("max_batch_size = -1", "key 'max_batch_size' must be >= 0"),
    ("max_batch_size = true", "key 'max_batch_size' must be an integer"),
    ("backend = 'caffe'", "key 'backend' must be one of"),
    ("[dynamic_batching]\nmax_queue_delay_ms = 1", "needs max_batch_size > 0"),
    ("max_batch_size = 4\n[dynamic_batching]\npreferred_batch_sizes = [8]", "must not exceed"),
    ("max_batch_size = 4\n[dynamic_batching]\nmax_queue_size = 0", "'max_queue_size' must be >= 1"),
    ("max_batch_size = 4\n[dynamic_batching]\nbatch_wait = 'later'", "'batch_wait' must be one of"),
    ("[sequence_batching]\nbatch_wait = 'soon'", "\\[sequence_batching\\]: key 'batch_wait' must be one of"),
    ("[instance_group]\ncount = 0", "'count' must be >= 1"),
    ("[instance_group]\nkind = 'tpu'", "'kind' must be one of"),
    ("[instance_group]\nresponse_timeout_s = 0", "'response_timeout_s' must be a finite number > 0"),
    ("[instance_group]\nresponse_timeout_s = nan", "'response_timeout_s' must be a finite number > 0, got nan"),
    ("[instance_group]\nresponse_timeout_s = inf", "'response_timeout_s' must be a finite number > 0, got inf"),
    ("max_batch_size = 2\n[dynamic_batching]\ndefault_timeout_ms = nan", "'default_timeout_ms' must be a finite"),
    ("[instance_group]\nmemory_limit_mb = -5", "'memory_limit_mb' must be >= 0"),
    ("[instance_group.rate_limiter]\npriority = -1", "'priority' must be >= 0"),
    ("[instance_group.rate_limiter]\nresources = [{ name = 'R', count = -1 }]", "'count' must be >= 0"),
    ("[instance_group.rate_limiter]\nresources = [{ name = 'R', cuont = 1 }]", "'cuont' is not known"),
    ("[instance_group.rate_limiter]\nresources = ['R']", "resources #0 must be a table"),
    ("[instance_group.rate_limiter]\nresources = [{ name = 'R' }, { name = 'R' }]", "lists resource 'R' twice"),
    ("[version_policy]\nlatest = 1\nall = true", "takes one of"),
    ("[[input]]\nname = 'x'\ndatatype = 'FLOAT'\nshape = [1]", "key 'datatype' must be one of"),
    ("[[input]]\nname = 'x'\ndatatype = 'FP32'\nshape = [-2]", "key 'shape' must be a list"),
    ("[[input]]\nname = 'x'\ndatatype = 'FP32'\nshape = [1]\ndims = [1]", "key 'dims' is not known"),
    ("this is = not toml", "not valid TOML"),
    ("max_batch_size = 99999999999999999999999", "'max_batch_size' must be <= 2147483647"),
    ("[instance_group]\ncount = 2147483648", "'count' must be <= 2147483647"),
    ("max_batch_size = 2\n[dynamic_batching]\npreferred_batch_sizes = [1, 4294967296]",
     "integers from 1 to 2147483647"),
    ("max_batch_size = 2\n[dynamic_batching]\nmax_queue_delay_ms = 1e300", "'max_queue_delay_ms' must be a finite"),
    ("[version_policy]\nspecific = [9223372036854775808]", "integers from 1 to 9223372036854775807"),
    ("[version_policy]\nlatest = 4294967296", "'latest' must be from 1 to 2147483647"),
    ("[version_labels]\nstable = 9223372036854775808", "'stable' must be a version number from 1"),
    ("[[input]]\nname = 'x'\ndatatype = 'FP32'\nshape = [9223372036854775808]", "key 'shape' must be a list"),
    ("[sequence_batching]\nmax_sequence_idle_microseconds = 9223372036854775808", "must be <= 9223372036854775807"),
    ("[sequence_batching]\nmax_sequence_idle_microseconds = 0", "'max_sequence_idle_microseconds' must be >= 1"),
    ("[[sequence_batching.control_input]]\nname = 'S'\nkind = 'BEGIN'", "key 'kind' must be one of START END"),
    ("[[sequence_batching.control_input]]\nkind = 'START'", "key 'name' is required"),
    ("[[sequence_batching.control_input]]\nname = 'S'\nkind = 'START'\nfalse_true = [1]",
     "'false_true' must be two numbers"),
    ("[[sequence_batching.control_input]]\nname = 'S'\nkind = 'START'\ndatatype = 'UINT64'",
     "control input 'S' \\(START\\) must be one of INT32 FP32 BOOL"),
    ("[[sequence_batching.control_input]]\nname = 'C'\nkind = 'CORRID'\ndatatype = 'FP32'",
     "must be one of UINT64 INT64 UINT32 INT32 BYTES"),
    ("max_batch_size = 2\n[dynamic_batching]\n[sequence_batching]", "cannot have dynamic_batching"),
    ("[model_transaction_policy]\ndecoupled = true\n[sequence_batching]", "cannot have model_transaction_policy"),
    ("[[sequence_batching.state]]\ninput_name = 'S'\noutput_name = 'T'\ndatatype = 'FP32'\nuse_growable_memory = true",
     "key 'use_growable_memory' is not served"),
    ("[[sequence_batching.state]]\ninput_name = 'S'\noutput_name = 'T'\ndatatype = 'FP32'\nshape = [2]\n"
     "[sequence_batching.state.initial_state]\nname = 'i'\nshape = [2]", "give one of zero_data = true or data_file"),
    ("[[sequence_batching.state]]\ninput_name = 'S'\noutput_name = 'T'\ndatatype = 'FP32'\nshape = [2]\n"
     "[sequence_batching.state.initial_state]\nname = 'i'\nshape = [3]\nzero_data = true",
     "initial_state dims \\[3\\] must be fixed sizes"),
    ("[[sequence_batching.state]]\ninput_name = 'S'\noutput_name = 'T'\ndims = [2]", "key 'dims' is not known"),
    ("[sequence_batching.direct]\n[sequence_batching.oldest]", "takes one of \\[sequence_batching.direct\\] and"),
    ("max_batch_size = 2\n[sequence_batching.oldest]\npreferred_batch_size = [3]",
     "preferred batch size must be positive and <= max batch size \\(2\\), got 3"),
    ("[sequence_batching.direct]\nminimum_slot_utilization = 2", "must be in range \\(0.0, 1.0\\], got 2"),
    ("[sequence_batching.oldest]\nmax_queue_delay = 5", "key 'max_queue_delay' is not known"),
    ("[optimization]\nprecision = 'int8'", "'precision' must be one of \\('bf16', 'fp16'\\), got 'int8'"),
    ("[optimization]\ncompile = 'xla'", "'compile' must be one of"),
    ("[optimization]\nbatch_sizes = [1, 2]", "'batch_sizes' needs max_batch_size > 0"),
    ("max_batch_size = 4\n[optimization]\nbatch_sizes = [2, 8]", "must not exceed max_batch_size \\(4\\)"),
    ("[optimization]\nchannel_last = true", "'channel_last' is not known; did you mean 'channels_last'"),
    ("max_batch_size = 2\n[dynamic_batching]\ntimeout_action = 'drop'",
     "'timeout_action' must be one of \\('reject', 'delay'\\), got 'drop'"),
    ("max_batch_size = 2\n[dynamic_batching]\npriority_levels = 2\ndefault_priority_level = 3",
     "'dynamic_batching.default_priority_level' must be in range \\[1, 2\\]"),
    ("max_batch_size = 2\n[dynamic_batching]\npriority_levels = 2\ndefault_priority_level = 1\n"
     "[dynamic_batching.priority_queue_policy.3]", "names level 3; levels must be in range \\[1, 2\\]"),
    ("max_batch_size = 2\n[dynamic_batching]\npriority_levels = 1\ndefault_priority_level = 1\n"
     "[dynamic_batching.priority_queue_policy.first]", "priority_queue_policy.first\\] must be a table named by"),
    ("max_batch_size = 2\n[dynamic_batching]\npriority_levels = 1\ndefault_priority_level = 1\n"
     "[dynamic_batching.priority_queue_policy.1]\nmax_queue_size = 0",
     "priority_queue_policy.1\\]: key 'max_queue_size' must be >= 1"),
])
def test_errors_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_model_config(path)
    assert str(path) in info.value.message


def test_a_config_toml_that_cannot_be_read_or_nests_too_deep_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "config.toml").mkdir()  # a folder where the file should be
    with pytest.raises(ConfigError, match=r"config\.toml: cannot read"):
        load_model_config(tmp_path / "config.toml")
    (tmp_path / "deep").mkdir()
    path = write(tmp_path / "deep", "x = " + "[" * 5000 + "]" * 5000)
    with pytest.raises(ConfigError, match="not valid TOML: nested too deeply") as info:
        load_model_config(path)
    assert str(path) in info.value.message


def test_optimization_and_the_sizes_a_compiled_model_is_built_for(tmp_path: Path) -> None:
    text = ("max_batch_size = 48\n[optimization]\nprecision = 'bf16'\nchannels_last = true\n"
            "compile = 'cuda_graphs'\nbatch_sizes = [32, 1, 8]\nwarmup = true\n")
    config = load_model_config(write(tmp_path, text))
    assert config.optimization == Optimization("bf16", True, "cuda_graphs", (1, 8, 32), True)
    assert capture_sizes(config.optimization, 48) == (1, 8, 32)
    assert capture_sizes(Optimization(compile="cuda_graphs"), 48) == (1, 2, 4, 8, 16, 32, 48)
    assert capture_sizes(Optimization(compile="cuda_graphs"), 0) == ()
    assert not load_model_config(write(tmp_path, "max_batch_size = 2")).optimization.enabled


def test_gpu_instances_are_counted_per_listed_gpu(tmp_path: Path) -> None:
    config = load_model_config(write(tmp_path, "[instance_group]\ncount = 2\nkind = 'gpu'\ngpus = [0, 1, 3]"))
    assert config.instance_group.instances == 6
    assert load_model_config(write(tmp_path, "[instance_group]\ncount = 2")).instance_group.instances == 2


def test_python_models_and_handlers_default_to_process_instances(tmp_path: Path) -> None:
    group = load_model_config(write(tmp_path, "")).instance_group
    assert group.resolved_kind("python") == "process"
    assert group.resolved_kind("torchserve") == "process"
    assert group.resolved_kind("onnx") == "cpu"
    chosen = load_model_config(write(tmp_path, "[instance_group]\nkind = 'cpu'")).instance_group
    assert chosen.resolved_kind("python") == "cpu"


def test_server_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="model-control"):
        ServerSettings(model_control="sometimes")
    with pytest.raises(ConfigError, match="http-port"):
        ServerSettings(http_port=70000)
    with pytest.raises(ConfigError, match="--drain-timeout must be a finite number"):
        ServerSettings(drain_timeout=float("nan"))
    with pytest.raises(ConfigError, match="--header-timeout must be a finite number of seconds > 0, got inf"):
        ServerSettings(header_timeout=float("inf"))
    with pytest.raises(ConfigError, match=r"--max-inflight-size \(99\) must hold at least one body"):
        ServerSettings(max_body_bytes=100, max_inflight_bytes=99)
    with pytest.raises(ConfigError, match="--max-connections must be positive"):
        ServerSettings(max_connections=0)
    with pytest.raises(ConfigError, match=r"--large-body-rate must be 0 \(no limit\) or a size per second, got -1"):
        ServerSettings(large_body_rate=-1)
    with pytest.raises(ConfigError, match=r"--max-connections \(2\) must be at least --workers \(3\)"):
        ServerSettings(max_connections=2, workers=3)


@pytest.mark.parametrize(("total", "workers"), [(1000, 1), (1000, 3), (3, 2), (5, 5), (7, 16)])
def test_workers_split_the_limits_to_their_totals(total: int, workers: int) -> None:
    """--max-connections and --max-inflight-size hold for the whole server: the workers' shares
    add up to the total (each took total // workers, at least 1: 2 connections of 3 over 2 workers)."""
    from inferd.server import split

    shares = [split(total, workers, part) for part in range(workers)]
    assert sum(shares) == total and max(shares) - min(shares) <= 1


def test_remote_repositories_name_their_schemes() -> None:
    with pytest.raises(ConfigError, match="remote repositories are s3://"):
        ServerSettings(remote_repository="http://example.invalid/models")
    assert ServerSettings(remote_repository="s3://bucket/models").remote_repository == "s3://bucket/models"


def _ensemble(steps: list[dict[str, object]], **extra: object) -> dict[str, object]:
    tensor = {"datatype": "FP32", "shape": [2]}
    return {"platform": "ensemble", "input": [{"name": "x", **tensor}], "output": [{"name": "y", **tensor}],
            "ensemble_scheduling": {"step": steps}, **extra}


def test_ensemble_steps_are_ordered_as_their_tensors_flow() -> None:
    from inferd.config import ensemble_order

    config = parse_model_config(_ensemble([
        {"model_name": "last", "input_map": {"a": "l", "b": "r"}, "output_map": {"o": "y"}},
        {"model_name": "left", "input_map": {"i": "x"}, "output_map": {"o": "l"}},
        {"model_name": "right", "model_version": 2, "input_map": {"i": "x"}, "output_map": {"o": "r"}},
    ]), "config.toml")
    assert config.backend == "ensemble"
    assert config.ensemble[2].model_version == 2 and config.ensemble[1].model_version == -1
    waves = ensemble_order(config, "config.toml")
    assert [[s.model_name for s in wave] for wave in waves] == [["left", "right"], ["last"]]


@pytest.mark.parametrize(("steps", "extra", "message"), [
    ([], {}, "needs at least one step"),
    ([{"model_name": "m", "input_map": {"i": "nowhere"}, "output_map": {"o": "y"}}], {},
     "step 'm' takes 'nowhere', but no step makes it"),
    ([{"model_name": "a", "input_map": {"i": "q"}, "output_map": {"o": "p"}},
      {"model_name": "b", "input_map": {"i": "p"}, "output_map": {"o": "q"}},
      {"model_name": "c", "input_map": {"i": "x"}, "output_map": {"o": "y"}}], {}, "the steps form a cycle"),
    ([{"model_name": "m", "input_map": {"i": "x"}, "output_map": {"o": "x"}}], {}, "'x' is made twice"),
    ([{"model_name": "m", "input_map": {"i": "x"}, "output_map": {"o": "z"}}], {}, "output 'y' is made by no step"),
    ([{"model_name": "m", "input_map": {"i": "x"}, "output_map": {"o": "y"}}],
     {"max_batch_size": 4, "dynamic_batching": {}}, "an ensemble is not batched itself"),
    ([{"model_name": "m", "model_version": 0, "input_map": {"i": "x"}, "output_map": {"o": "y"}}], {},
     "model_version' must be a version >= 1"),
])
def test_an_ensemble_that_could_never_run_is_refused(steps: list[dict[str, object]], extra: dict[str, object],
                                                      message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_model_config(_ensemble(steps, **extra), "config.toml")


def test_platform_names_only_ensembles_and_steps_need_one() -> None:
    with pytest.raises(ConfigError, match="key 'platform' may only be \"ensemble\""):
        parse_model_config({"platform": "onnxruntime_onnx"}, "config.toml")
    with pytest.raises(ConfigError, match="ensemble steps need platform"):
        parse_model_config({"ensemble_scheduling": {"step": [{"model_name": "m"}]}}, "config.toml")


def test_sequence_batching_in_config_toml(tmp_path: Path) -> None:
    config = load_model_config(write(tmp_path, """
[sequence_batching]
max_sequence_idle_microseconds = 250000
[[sequence_batching.control_input]]
name = "START"
kind = "START"
datatype = "FP32"
false_true = [0.0, 1.0]
[[sequence_batching.control_input]]
name = "ID"
kind = "CORRID"
"""))
    sequence = config.sequence_batching
    assert sequence is not None and sequence.max_sequence_idle_us == 250_000
    assert [(c.name, c.kind, c.datatype, c.false_true) for c in sequence.controls] == [
        ("START", "START", "FP32", (0.0, 1.0)), ("ID", "CORRID", "UINT64", (0, 1))]
    assert load_model_config(write(tmp_path, "")).sequence_batching is None


def test_the_sequence_strategy_in_config_toml(tmp_path: Path) -> None:
    oldest = load_model_config(write(tmp_path, """
max_batch_size = 8
[sequence_batching.oldest]
max_candidate_sequences = 16
preferred_batch_size = [8, 4]
max_queue_delay_microseconds = 500
preserve_ordering = true
""")).sequence_batching
    assert oldest is not None and (oldest.strategy, oldest.max_candidate_sequences, oldest.preferred_batch_sizes,
                                   oldest.max_queue_delay_us, oldest.preserve_ordering) == (
        "oldest", 16, (4, 8), 500, True)
    direct = load_model_config(write(tmp_path, """
max_batch_size = 8
[sequence_batching]
max_sequence_idle_microseconds = 7
[sequence_batching.direct]
minimum_slot_utilization = 0.25
""")).sequence_batching
    assert direct is not None and (direct.strategy, direct.minimum_slot_utilization,
                                   direct.max_sequence_idle_us) == ("direct", 0.25, 7)


def test_implicit_state_in_config_toml(tmp_path: Path) -> None:
    config = load_model_config(write(tmp_path, """
[[sequence_batching.state]]
input_name = "STATE_IN"
output_name = "STATE_OUT"
datatype = "INT32"
shape = [-1]
[sequence_batching.state.initial_state]
name = "start"
shape = [3]
data_file = "start.bin"
[[sequence_batching.state]]
input_name = "H"
output_name = "H_OUT"
datatype = "FP32"
shape = [2]
"""))
    sequence = config.sequence_batching
    assert sequence is not None
    assert sequence.states == (
        SequenceState("STATE_IN", "STATE_OUT", "INT32", (-1,),
                      InitialState("start", "INT32", (3,), "file", "start.bin")),
        SequenceState("H", "H_OUT", "FP32", (2,)))


def test_priority_levels_and_their_queue_policies(tmp_path: Path) -> None:
    config = load_model_config(write(tmp_path, """
max_batch_size = 4
[dynamic_batching]
max_queue_size = 16
timeout_action = "delay"
default_timeout_ms = 100
priority_levels = 2
default_priority_level = 2
[dynamic_batching.priority_queue_policy.1]
max_queue_size = 4
default_timeout_ms = 5
allow_timeout_override = true
"""))
    batching = config.dynamic_batching
    assert batching is not None and (batching.priority_levels, batching.default_priority_level) == (2, 2)
    assert batching.policy(1) == QueuePolicy(max_queue_size=4, default_timeout_ms=5.0, allow_timeout_override=True)
    assert batching.policy(2) == QueuePolicy(max_queue_size=16, default_timeout_ms=100.0, timeout_action="delay")
    assert [batching.level_of(p) for p in (0, 1, 2, 3)] == [2, 1, 2, 2]


def test_a_rate_limiter_reads_from_config_toml(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[instance_group]\ncount = 2\n[instance_group.rate_limiter]\npriority = 2\n"
                    "resources = [{ name = 'R1', count = 4 }, { name = 'G', count = 1, global = true }]\n")
    group = load_model_config(path).instance_group
    assert group.rate_limiter == RateLimit((RateResource("R1", 4), RateResource("G", 1, shared=True)), 2)
    assert load_model_config(tmp_path / "absent.toml").instance_group.rate_limiter is None


def test_the_rate_limit_mode_is_checked() -> None:
    assert ServerSettings().rate_limit == "off"
    with pytest.raises(ConfigError, match="--rate-limit must be one of off, execution_count, got 'fast'"):
        ServerSettings(rate_limit="fast")
