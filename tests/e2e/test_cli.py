"""The command line explains itself: version, help for every flag, one-line errors, warnings."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import inferd
from inferd.cli import _parser
from inferd.config import ResourceCount
from tests.conftest import ROOT, free_port, serve

FAILING_MODEL = '''
class Model:
    def infer(self, inputs):
        raise ValueError("this model always fails")
'''
FAILING_CONFIG = '[[input]]\nname = "x"\ndatatype = "FP32"\nshape = [2]\n[[output]]\nname = "y"\ndatatype = "FP32"\n' \
                 'shape = [2]\n[instance_group]\nkind = "cpu"\n'


def inferd_command(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferd", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, **env})


@pytest.fixture(scope="module")
def small_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-repo")
    shutil.copytree(ROOT / "examples/models/mlp_onnx", root / "mlp_onnx")
    (root / "fails/1").mkdir(parents=True)
    (root / "fails/1/model.py").write_text(FAILING_MODEL)
    (root / "fails/config.toml").write_text(FAILING_CONFIG)
    return root


def test_version() -> None:
    done = inferd_command("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"inferd {inferd.__version__}"


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", ["serve", "bench"])
def test_every_flag_has_a_help_line(command: str) -> None:
    parser = _subparsers()[command]
    missing = [a.option_strings or a.dest for a in parser._actions if not a.help]
    assert missing == []


def test_keep_freed_memory_takes_0_or_at_least_a_mib(capsys: pytest.CaptureFixture[str]) -> None:
    parse = _parser().parse_args
    assert parse(["serve", "x"]).keep_freed_memory == 64 * 2**20
    assert parse(["serve", "x", "--keep-freed-memory", "0"]).keep_freed_memory == 0
    assert parse(["serve", "x", "--keep-freed-memory", "1MiB"]).keep_freed_memory == 2**20
    for size in ("512k", "-5", "1"):
        with pytest.raises(SystemExit):
            parse(["serve", "x", "--keep-freed-memory", size])
        assert "0, or at least 1MiB" in capsys.readouterr().err


def test_rate_limit_flags_read_as_tritons(capsys: pytest.CaptureFixture[str]) -> None:
    parse = _parser().parse_args
    args = parse(["serve", "x", "--rate-limit", "EXECUTION_COUNT", "--rate-limit-resource", "R1:10",
                  "--rate-limit-resource", "R2:5:1"])
    assert args.rate_limit == "execution_count"
    assert args.rate_limit_resource == [ResourceCount("R1", 10), ResourceCount("R2", 5, 1)]
    assert parse(["serve", "x"]).rate_limit == "off"
    for given, said in (("R1", "expected <resource_name>:<count>"), ("R1:x", "count and device are integers"),
                        ("R1:-1", "0 or more"), ("R1:1:2:3", "got 'R1:1:2:3'"), (":4", "got ':4'")):
        with pytest.raises(SystemExit):
            parse(["serve", "x", "--rate-limit-resource", given])
        assert said in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["serve", "x", "--rate-limit", "priority"])
    assert "invalid choice: 'priority'" in capsys.readouterr().err


def test_tritons_true_false_flags_read_as_tritons(capsys: pytest.CaptureFixture[str]) -> None:
    """Triton writes its switches with a value (--strict-readiness=false); they were refused."""
    parse = _parser().parse_args
    args = parse(["serve", "x", "--strict-readiness=false", "--exit-on-error=false", "--strict-model-config=false"])
    assert (args.strict_readiness, args.exit_on_error, args.strict_model_config) == (False, False, False)
    args = parse(["serve", "x", "--strict-readiness", "--exit-on-error=true", "--disable-auto-complete-config"])
    assert (args.strict_readiness, args.exit_on_error, args.strict_model_config) == (True, True, True)
    assert parse(["serve", "x"]).strict_readiness is False
    with pytest.raises(SystemExit):
        parse(["serve", "x", "--strict-readiness=maybe"])
    assert "expected true or false, got 'maybe'" in capsys.readouterr().err


def test_help_shows_defaults_but_never_the_token() -> None:
    done = inferd_command("serve", "--help", INFERD_AUTH_TOKEN="s3cret-token")
    text = " ".join(done.stdout.split())
    for shown in ("--drain-timeout DRAIN_TIMEOUT, --exit-timeout-secs DRAIN_TIMEOUT seconds SIGTERM waits",
                  "(default: 30.0)", "(default: 64MiB)",
                  "(default: 8000)", "(default: none)", "--log-level", "(default: info)"):
        assert shown in text
    assert "s3cret-token" not in done.stdout
    bench = " ".join(inferd_command("bench", "--help").stdout.split())
    for shown in ("-m MODEL, --model MODEL the model to load", "host:port is taken as http://host:port",
                  "(default: http://127.0.0.1:8000)", "--json FILE also write the results as JSON"):
        assert shown in bench


@pytest.mark.parametrize(("flag", "what"), [("--http-port", "HTTP"), ("--grpc-port", "gRPC")])
def test_port_in_use_is_one_line_naming_port_and_flag(tmp_path: Path, flag: str, what: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = "--grpc-port" if flag == "--http-port" else "--http-port"
        done = inferd_command("serve", str(tmp_path), flag, str(port), other, "0")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"inferd: cannot listen for {what} on 127.0.0.1:{port}: the port is in use; choose another port with {flag}")
    assert "Traceback" not in done.stderr and "add_port.cc" not in done.stderr


def test_empty_repository_warns(tmp_path: Path) -> None:
    with serve(tmp_path) as server:
        pass
    assert f"model repository {tmp_path} holds no models" in server.log()


def _bench(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return inferd_command("bench", "--url", url, "--concurrency", "1", "--duration", "0.5", "--warmup", "0", *args)


def test_bench_errors_are_one_line(small_repo: Path, tmp_path: Path) -> None:
    stopped = f"127.0.0.1:{free_port()}"
    done = _bench(stopped, "-m", "mlp_onnx")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"inferd bench: no server answers at http://{stopped}: [Errno 111] Connection refused"]
    with serve(small_repo) as server:
        done = _bench(server.base, "-m", "nope")
        assert done.returncode == 2
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(f"inferd bench: model 'nope' is not served at {server.base} (GET ") and "404" in line
        # host:port without a scheme, as perf_analyzer takes it
        out = tmp_path / "ok.json"
        done = _bench(server.url, "-m", "mlp_onnx", "--json", str(out))
        assert done.returncode == 0, done.stderr
        assert json.loads(out.read_text())["rows"][0]["requests"] > 0
        # errors: shown by kind with a sample message, and not counted as throughput
        out = tmp_path / "fails.json"
        done = _bench(server.url, "-m", "fails", "--json", str(out))
        assert done.returncode == 1
        row = json.loads(out.read_text())["rows"][0]
        assert row["requests"] == 0 and row["rps"] == 0 and row["errors"] > 0
        assert "errors at concurrency 1: HTTP 500 x" in done.stdout and "this model always fails" in done.stdout


QUIET_CHECK = """
import os, sys
from inferd.observability.logging import configure
configure(sys.argv[1])
import numpy as np, torch
array = np.zeros(2, np.float32)
array.flags.writeable = False
torch.from_numpy(array)  # torch warns that the buffer is read-only (inferd never writes to it)
print(os.environ.get("TF_CPP_MIN_LOG_LEVEL"), os.environ.get("GRPC_VERBOSITY"))
"""


@pytest.mark.parametrize(("level", "expected"), [("info", "3 NONE"), ("debug", "None None")])
def test_framework_logs_are_quiet_unless_debug(level: str, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY", "PYTHONWARNINGS")}
    done = subprocess.run([sys.executable, "-c", QUIET_CHECK, level], capture_output=True, text=True, timeout=60,
                          env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == expected.split()
    assert ("not writable" in done.stderr) == (level == "debug")


@pytest.mark.parametrize(("value", "expected"), [("256MiB", 256 << 20), ("1.5k", 1536), ("0", 0), ("100", 100)])
def test_sizes_read_as_bytes(value: str, expected: int) -> None:
    args = _parser().parse_args(["serve", "--large-body-rate", value])
    assert args.large_body_rate == expected


def test_a_size_under_one_byte_is_refused_not_read_as_no_limit() -> None:
    done = inferd_command("serve", "--large-body-rate", "0.0001k")
    assert done.returncode == 2 and "'0.0001k' is less than one byte" in done.stderr


@pytest.mark.parametrize("count", ["0", "-2"])
def test_a_model_load_thread_count_under_one_is_refused(count: str, tmp_path: Path) -> None:
    done = inferd_command("serve", str(tmp_path), "--model-load-thread-count", count)
    assert done.returncode == 2
    assert f"--model-load-thread-count must be >= 1 (versions built at once), got {count}" in done.stderr


def test_tritons_spellings_serve_as_inferds(small_repo: Path, tmp_path: Path) -> None:
    """A tritonserver command line changes only its binary: --model-repository, --model-control-mode (in
    any case: Triton lowercases it, and its qa/L0_iterative_sequence writes EXPLICIT),
    --repository-poll-secs, --exit-timeout-secs, --id, --log-verbose, --metrics-port."""
    import requests

    metrics_port = free_port()
    with serve(None, f"--model-repository={small_repo}", "--model-control-mode=EXPLICIT", "--load-model=mlp_onnx",
               "--repository-poll-secs=5", "--exit-timeout-secs=3", "--id=triton", "--log-verbose=1",
               f"--metrics-port={metrics_port}") as server:
        assert requests.get(f"{server.base}/v2", timeout=5).json()["name"] == "triton"
        index = {m["name"]: m["state"] for m in requests.post(f"{server.base}/v2/repository/index", timeout=5).json()}
        assert index == {"mlp_onnx": "READY", "fails": ""}  # explicit: only what --load-model named
        metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        assert metrics.status_code == 200 and "inferd_model_state" in metrics.text
        assert requests.get(f"http://127.0.0.1:{metrics_port}/v2", timeout=5).status_code == 404  # metrics only
        assert " DEBUG " in server.log()  # --log-verbose 1
        assert f"metrics http://127.0.0.1:{metrics_port}" in server.log()  # the ready line names it so
    done = inferd_command("serve", str(small_repo), f"--model-repository={tmp_path}")
    assert done.returncode == 2 and "the model repository is given twice" in done.stderr
