"""Triton's logging extension with tritonclient: the server's log settings read and changed while it
runs (HTTP and gRPC), changes that take effect on what the server logs, and bad settings refused."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests import models
from tests.conftest import RunningServer, serve

DEFAULTS = {"log_file": "", "log_info": True, "log_warning": True, "log_error": True, "log_verbose_level": 0,
            "log_format": "default"}


def _loaded_lines(server: RunningServer) -> int:
    return server.log().count("model double version 1 ready")


def _reload(client: httpclient.InferenceServerClient, server: RunningServer) -> int:
    client.unload_model("double")
    client.load_model("double")
    time.sleep(0.3)  # the log line is printed by the server as the load ends
    return _loaded_lines(server)


def test_log_settings_change_what_the_server_logs(tmp_path: Path) -> None:
    models.write(tmp_path / "double/1/model.py", models.PYTHON_MODEL)
    models.write(tmp_path / "double/config.toml", models.PYTHON_CONFIG)
    with serve(tmp_path, "--model-control", "explicit", "--load-model", "double", grpc=True) as server:
        http = httpclient.InferenceServerClient(server.url)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        assert "logging" in http.get_server_metadata()["extensions"]
        assert http.get_log_settings() == DEFAULTS
        assert http.update_log_settings({"log_info": False}) == {**DEFAULTS, "log_info": False}
        before = _loaded_lines(server)
        assert _reload(http, server) == before  # INFO switched off: the load said nothing
        answered = grpc.update_log_settings({"log_info": True, "log_verbose_level": 2}, as_json=True)["settings"]
        assert answered["log_info"] == {"bool_param": True} and answered["log_verbose_level"] == {"uint32_param": 2}
        assert _reload(http, server) == before + 1
        assert grpc.get_log_settings(as_json=True)["settings"]["log_format"] == {"string_param": "default"}
        for bad, says in (({"log_verbose_level": -1}, "log_verbose_level must be an integer >= 0"),
                          ({"log_file": "/tmp/x"}, "log file location can not be updated through network protocol"),
                          ({"log_format": "xml"}, "log_format must be one of default, ISO8601"),
                          ({"colour": True}, "unknown log setting 'colour'")):
            with pytest.raises(InferenceServerException, match=says) as raised:
                http.update_log_settings(bad)
            assert raised.value.status() == "400"
        assert http.get_log_settings()["log_verbose_level"] == 2  # a refused change changed nothing
