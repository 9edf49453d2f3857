"""config.properties and torchserve's flags -> inferd's settings (no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferd.compat import torchserve
from inferd.errors import ConfigError


def settings(tmp_path: Path, text: str, *flags: str, environ: dict[str, str] | None = None) -> torchserve.Started:
    (tmp_path / "config.properties").write_text(text)
    args = torchserve.parser().parse_args(["--start", "--ts-config", str(tmp_path / "config.properties"), *flags])
    return torchserve.settings_from_flags(args, environ or {}, tmp_path)


def test_properties_as_java_reads_them() -> None:
    text = "# comment\n! also\nmodel_store = /models\nload_models:all\nmodels={\\\n  \"a\": {\"1.0\": {}}\\\n}\n"
    assert torchserve.read_properties(text) == {"model_store": "/models", "load_models": "all",
                                               "models": '{"a": {"1.0": {}}}'}


def test_defaults_are_torchserves(tmp_path: Path) -> None:
    started = settings(tmp_path, "")
    s = started.settings
    assert [(x.host, x.port, x.apis) for x in s.listeners] == [
        ("127.0.0.1", 8080, ("inference",)), ("127.0.0.1", 8081, ("management",)), ("127.0.0.1", 8082, ("metrics",))]
    assert s.http_port == 0 and s.model_control == "explicit"
    assert (s.grpc_port, s.grpc_extra_ports) == (7070, (7071,))  # TorchServe's gRPC inference and management
    assert s.torchserve.allowed_urls == torchserve.TORCHSERVE_ALLOWED_URLS
    assert s.torchserve.default_workers == 0 and not s.torchserve.model_api
    # token authorization is on unless disabled: TorchServe's keys (auth.TorchServeKeys), not one token
    assert s.torchserve.key_file == tmp_path / "key_file.json" and s.torchserve.token_expiration_min == 60
    assert s.auth_token is None and not s.auth_inference
    assert s.max_body_bytes == 6553500


def test_decode_input_request_and_service_envelope_reach_the_handlers(tmp_path: Path) -> None:
    """TorchServe's front end hands its workers TS_DECODE_INPUT_REQUEST (true unless set) and the
    envelope; the server's handler models read the same variables."""
    assert settings(tmp_path, "").handler_environ == {"TS_DECODE_INPUT_REQUEST": "true",
                                                       "INFERD_TS_SERVICE_ENVELOPE": "",
                                                       "INFERD_TS_METRICS_CONFIG": "",
                                                       "INFERD_TS_INSTALL_PY_DEP_PER_MODEL": ""}
    started = settings(tmp_path, "decode_input_request=false\nservice_envelope=kservev2\n"
                                 "install_py_dep_per_model=true\n")
    assert started.handler_environ == {"TS_DECODE_INPUT_REQUEST": "false", "INFERD_TS_SERVICE_ENVELOPE": "kservev2",
                                       "INFERD_TS_METRICS_CONFIG": "", "INFERD_TS_INSTALL_PY_DEP_PER_MODEL": "true"}
    started = settings(tmp_path, "enable_envvars_config=true\n", environ={"TS_SERVICE_ENVELOPE": "json"})
    assert started.handler_environ["INFERD_TS_SERVICE_ENVELOPE"] == "json"
    with pytest.raises(ConfigError, match="service_envelope=seldon: expected one of body, json, kserve, kservev2"):
        settings(tmp_path, "service_envelope=seldon\n")


def test_keys_flags_and_environment(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    text = ("inference_address=http://0.0.0.0:9080\nmanagement_address=http://127.0.0.1:9081\n"
            f"metrics_address=http://127.0.0.1:9081\nload_models=a.mar,b=b.mar\nmodel_store={tmp_path}/store\n"
            "default_workers_per_model=3\nallowed_urls=https://models.example/.*\nenable_envvars_config=true\n"
            'models={"a": {"1.0": {"minWorkers": 2}}}\n')
    started = settings(tmp_path, text, "--enable-model-api", "--models", "c.mar",
                       environ={"TS_DEFAULT_RESPONSE_TIMEOUT": "33"})
    s = started.settings
    assert [(x.host, x.port, x.apis) for x in s.listeners] == [
        ("0.0.0.0", 9080, ("inference",)), ("127.0.0.1", 9081, ("management", "metrics"))]
    assert s.models == ("c.mar",) and s.model_store == tmp_path / "store"  # the flag wins over load_models
    assert s.torchserve.default_workers == 3 and s.torchserve.startup_workers == 3
    assert s.torchserve.allowed_urls == ("https://models.example/.*",)
    assert s.torchserve.response_timeout_s == 33 and s.torchserve.model_api
    assert s.torchserve.models == {"a": {"1.0": {"minWorkers": 2}}}


def test_workflow_store_from_properties_and_flag(tmp_path: Path) -> None:
    assert settings(tmp_path, "").settings.torchserve.workflow_store is None  # then the model store serves
    (tmp_path / "wf").mkdir()
    (tmp_path / "other").mkdir()
    from_file = settings(tmp_path, f"workflow_store={tmp_path}/wf\n").settings.torchserve
    assert from_file.workflow_store == tmp_path / "wf"
    from_flag = settings(tmp_path, f"workflow_store={tmp_path}/wf\n", "--workflow-store", f"{tmp_path}/other")
    assert from_flag.settings.torchserve.workflow_store == tmp_path / "other"  # the flag wins, as torchserve's


def test_a_store_that_is_not_a_folder_is_refused_as_torchserve_does(tmp_path: Path) -> None:
    """TorchServe's `torchserve --start` exits with these words (its tests check it does not start)."""
    with pytest.raises(ConfigError, match=f"--model-store directory not found: {tmp_path}/missing"):
        settings(tmp_path, "", "--model-store", f"{tmp_path}/missing")
    with pytest.raises(ConfigError, match=f"--workflow-store directory not found: {tmp_path}/gone"):
        settings(tmp_path, f"workflow_store={tmp_path}/gone\n")


@pytest.mark.parametrize(("text", "flags", "message"), [
    ("inference_address=https://127.0.0.1:8443\n", (), "TLS is not served"),
    ("keystore=/k.jks\n", (), "TLS is not served"),
    ("management_address=localhost\n", (), "expected http://HOST:PORT"),
    ("models={not json\n", (), "is not JSON"),
    ("", ("--plugins-path", "/p"), "Java plugins"),
    ("inference_address=http://0.0.0.0:8080\ndisable_token_authorization=true\n", (), "needs --auth-token"),
])
def test_refused(tmp_path: Path, text: str, flags: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(tmp_path, text, *flags)


def test_sequence_header_names(tmp_path: Path) -> None:
    """ts_header_key_sequence_id/_start/_end name the headers a stateful request's sequence travels
    in (TorchServe's defaults when not given); a name that cannot be an HTTP header is refused."""
    assert settings(tmp_path, "").settings.torchserve.sequence_headers == (
        "ts_request_sequence_id", "ts_request_sequence_start", "ts_request_sequence_end")
    given = settings(tmp_path, "ts_header_key_sequence_id=x-seq\nts_header_key_sequence_end=x-end\n")
    assert given.settings.torchserve.sequence_headers == ("x-seq", "ts_request_sequence_start", "x-end")
    with pytest.raises(ConfigError, match=r"ts_header_key_sequence_start=my start: expected an HTTP header name"):
        settings(tmp_path, "ts_header_key_sequence_start=my start\n")


def test_token_authorization_follows_torchserves_order(tmp_path: Path) -> None:
    """TS_DISABLE_TOKEN_AUTHORIZATION (with enable_envvars_config) over --disable-token-auth over the
    config's disable_token_authorization; token_expiration_min sets how long a key lasts."""
    def key_file(text: str, *flags: str, **environ: str) -> Path | None:
        return settings(tmp_path, text, *flags, environ=environ).settings.torchserve.key_file

    envvars = "enable_envvars_config=true\n"
    assert key_file(envvars, "--disable-token-auth", TS_DISABLE_TOKEN_AUTHORIZATION="false") is not None
    assert key_file(envvars + "disable_token_authorization=false\n", TS_DISABLE_TOKEN_AUTHORIZATION="true") is None
    assert key_file("", "--disable-token-auth", TS_DISABLE_TOKEN_AUTHORIZATION="false") is None  # no envvars config
    assert key_file("disable_token_authorization=false\n", "--disable-token-auth") is None
    assert key_file("disable_token_authorization=true\n") is None
    started = settings(tmp_path, "token_expiration_min=0.25\n")
    assert started.settings.torchserve.token_expiration_min == 0.25
    with pytest.raises(ConfigError, match="token_expiration_min=soon: expected a number"):
        settings(tmp_path, "token_expiration_min=soon\n")
