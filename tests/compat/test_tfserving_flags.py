"""tensorflow_model_server's flags and files as inferd's settings, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferd.compat import tfserving
from inferd.config import VersionPolicy
from inferd.errors import ConfigError


def settings(*flags: str):
    return tfserving.settings_from_flags(tfserving.parser().parse_args(list(flags)))


def test_defaults_are_tf_servings(tmp_path: Path) -> None:
    chosen = settings(f"--model_base_path={tmp_path}")
    assert (chosen.grpc_port, chosen.http_port, chosen.host) == (8500, 0, "0.0.0.0")
    assert [(s.name, s.base_path) for s in chosen.model_sources] == [("default", tmp_path)]
    assert (chosen.model_control, chosen.poll_interval, chosen.listen_after_load) == ("poll", 1.0, True)
    assert settings(f"--model_base_path={tmp_path}", "--file_system_poll_wait_seconds=0").model_control == "none"


def test_models_config_policies_labels_and_relative_paths(tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    config.write_text("""model_config_list {
      config { name: "a" base_path: "models/a" model_platform: "tensorflow"
               model_version_policy { specific { versions: 3 versions: 5 } }
               version_labels { key: "stable" value: 3 } }
      config { name: "b" base_path: "/abs/b" model_version_policy { latest { num_versions: 2 } } }
      config { name: "c" base_path: "/abs/c" model_version_policy { all {} } }
    }""")
    a, b, c = tfserving.read_model_config(config)
    assert a.base_path == tmp_path / "models/a" and a.version_labels == {"stable": 3}
    assert a.version_policy == VersionPolicy(latest=None, specific=(3, 5))
    assert b.version_policy == VersionPolicy(latest=2) and b.version_labels is None
    assert c.version_policy == VersionPolicy(latest=None, all=True)


@pytest.mark.parametrize(("text", "message"), [
    ("improperly formatted file", "Error parsing text-format tensorflow.serving.ModelServerConfig"),
    ('model_config_list { config { name: "a" } }', "needs name and base_path"),
    ('model_config_list { config { name: "a" base_path: "/x" model_platform: "onnx" } }', "'onnx' is not served"),
    ('model_config_list { config { name: "a" base_path: "/x" } config { name: "a" base_path: "/y" } }',
     "Illegal to list model a multiple times"),
    ('model_config_list { config { name: "a" base_path: "/x" '
     'logging_config { sampling_config { sampling_rate: 1 } } } }', "logging_config"),
])
def test_model_config_errors(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "models.config"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        tfserving.read_model_config(config)


def test_batching_parameters_map_to_dynamic_batching(tmp_path: Path) -> None:
    path = tmp_path / "batching.txt"
    path.write_text("max_batch_size { value: 128 }\nbatch_timeout_micros { value: 2500 }\n"
                    "max_enqueued_batches { value: 4 }\nnum_batch_threads { value: 8 }\n"
                    "allowed_batch_sizes: 32\nallowed_batch_sizes: 128\n")
    batching = tfserving.read_batching(path)
    assert (batching.max_batch_size, batching.instances) == (128, 8)
    assert batching.dynamic_batching.max_queue_delay_ms == 2.5
    assert batching.dynamic_batching.preferred_batch_sizes == (32, 128)
    assert batching.dynamic_batching.max_queue_size == 512
    path.write_text("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n")
    with pytest.raises(ConfigError, match="end with max_batch_size"):
        tfserving.read_batching(path)
    path.write_text("pad_variable_length_inputs: true\n")
    with pytest.raises(ConfigError, match="pad_variable_length_inputs"):
        tfserving.read_batching(path)


def test_monitoring_channel_arguments_and_refused_flags(tmp_path: Path) -> None:
    monitoring = tmp_path / "monitoring.txt"
    monitoring.write_text('prometheus_config: { enable: true, path: "/monitoring/prometheus/metrics" }')
    chosen = settings(f"--model_base_path={tmp_path}", f"--monitoring_config_file={monitoring}",
                      "--grpc_channel_arguments=grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb",
                      "--grpc_socket_path=/tmp/x.sock")
    assert chosen.metrics_paths == ("/metrics", "/monitoring/prometheus/metrics")
    assert chosen.grpc_options == (("grpc.max_connection_age_ms", 2000), ("grpc.lb_policy_name", "grpclb"))
    assert chosen.grpc_socket_path == "/tmp/x.sock"
    assert chosen.grpc_server == "inferd"
    assert settings(f"--model_base_path={tmp_path}", "--grpc-server=grpcio").grpc_server == "grpcio"
    with pytest.raises(ConfigError, match="--saved_model_tags=gpu is not supported"):
        settings(f"--model_base_path={tmp_path}", "--saved_model_tags=gpu")
    assert settings(f"--model_base_path={tmp_path}", "--saved_model_tags=").model_sources
    assert settings(f"--model_base_path={tmp_path}", "--prefer_tflite_model=true").prefer_tflite
    assert settings(f"--model_base_path={tmp_path}", "--prefer_tflite_model").prefer_tflite
    assert not settings(f"--model_base_path={tmp_path}", "--prefer_tflite_model=false").prefer_tflite
    assert not settings(f"--model_base_path={tmp_path}").prefer_tflite
    with pytest.raises(ConfigError, match="needs --enable_batching"):
        settings(f"--model_base_path={tmp_path}", f"--batching_parameters_file={monitoring}")
    with pytest.raises(ConfigError, match="not both"):
        settings(f"--model_base_path={tmp_path}", f"--model_config_file={monitoring}")


def test_model_control_api_flags(tmp_path: Path) -> None:
    """inferd's own --model-control-api opens model control (HandleReloadConfigRequest) as `inferd
    serve --model-control explicit` does: beyond loopback only with a token."""
    with pytest.raises(ConfigError, match=r"--model-control-api on 0\.0\.0\.0 .* needs --auth-token"):
        settings(f"--model_base_path={tmp_path}", "--model-control-api")
    chosen = settings(f"--model_base_path={tmp_path}", "--model-control-api", "--auth-token=t")
    assert (chosen.control_api, chosen.auth_token, chosen.model_control) == (True, "t", "poll")
    assert settings(f"--model_base_path={tmp_path}", "--model-control-api", "--host=127.0.0.1").control_api
    assert not settings(f"--model_base_path={tmp_path}").control_api
    assert settings(f"--model_base_path={tmp_path}",
                    "--allow_version_labels_for_unavailable_models").labels_for_unavailable_versions


@pytest.mark.parametrize("flag", ["rest_api_enable_cors_support", "use_alts_credentials",
                                  "enable_serialization_as_tensor_content", "enable_per_model_batching_parameters"])
def test_tf_flags_that_change_answers_are_refused(tmp_path: Path, flag: str) -> None:
    """tensorflow_model_server's flags (model_servers/main.cc at 9d981c5c) inferd does not honour."""
    with pytest.raises(ConfigError, match=f"--{flag}=true is not supported"):
        settings(f"--model_base_path={tmp_path}", f"--{flag}=true")
    assert settings(f"--model_base_path={tmp_path}", f"--{flag}=false").model_sources


def test_tf_tuning_flags_are_accepted(tmp_path: Path) -> None:
    chosen = settings(f"--model_base_path={tmp_path}", "--num_request_iterations_for_warmup=3",
                      "--num_tflite_pools=2", "--num_tflite_interpreters_per_pool=2",
                      "--xla_gpu_compilation_enabled=true", "--enable_grpc_healthcheck_service=true")
    assert chosen.model_sources


def reload_config(text: str) -> bytes:
    from google.protobuf import text_format

    from inferd.compat._proto import tfserving_config_pb2

    return text_format.Parse(text, tfserving_config_pb2.ModelServerConfig()).SerializeToString()


@pytest.mark.parametrize(("text", "message"), [
    ("", "ServerModelConfig type not supported by HandleReloadConfigRequest"),
    ('model_config_list { config { name: "a" base_path: "/x" model_platform: "onnx" } }',
     "Model a requests unsupported platform onnx"),
    ('model_config_list { config { name: "a" base_path: "/x" model_platform: "tensorflow" model_type: TENSORFLOW } }',
     "Illegal setting both ModelServerConfig::model_type"),
    ('model_config_list { config { name: "a" base_path: "/x" model_type: OTHER } }',
     "ModelServerConfig::model_type choice 2 not supported"),
    ('model_config_list { config { name: "a" base_path: "x" model_platform: "tensorflow" } }',
     "Expected model a to have an absolute path"),
    ('model_config_list { config { name: "a" base_path: "s3://b/a" model_platform: "tensorflow" } }',
     "base_path s3://b/a is a URI; a model config's models are read from local folders"),
])
def test_reloaded_config_refusals(text: str, message: str) -> None:
    """What TF Serving's HandleReloadConfigRequest refuses (model_service_impl.cc:66-69, server_core.cc:78-150
    and 655-666 at 9d981c5c), in its words."""
    with pytest.raises(ConfigError, match=message):
        tfserving.reloaded_model_config(reload_config(text))


def test_reloaded_config_takes_the_deprecated_model_type() -> None:
    (source,) = tfserving.reloaded_model_config(reload_config(
        'model_config_list { config { name: "a" base_path: "/x" model_type: TENSORFLOW } }'))
    assert (source.name, source.base_path) == ("a", Path("/x"))
    with pytest.raises(ConfigError, match="does not parse"):
        tfserving.reloaded_model_config(b"\x0a\x05broken")
