"""The response cache against the real server, with Triton's clients: identical requests are
answered without running the model, over HTTP and gRPC alike; hits and misses show in Triton's
statistics and in /metrics; models that did not ask for it, and servers without --cache-size,
always run the model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests import models, sequence_models
from tests.conftest import RunningServer, serve

# counts its calls, so an answer tells whether the model ran
COUNTING_MODEL = '''
import numpy as np

class Model:
    def load(self):
        self.calls = 0

    def infer(self, inputs):
        self.calls += 1
        return {"y": inputs["x"] * 2, "calls": np.array([self.calls], dtype=np.int64)}
'''

CONFIG = """
backend = "python"
{extra}
[[input]]
name = "x"
datatype = "FP32"
shape = [-1]

[[output]]
name = "y"
datatype = "FP32"
shape = [-1]

[[output]]
name = "calls"
datatype = "INT64"
shape = [1]
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    for name, extra in (("cached", "[response_cache]\nenable = true\n"), ("plain", "")):
        models.write(root / f"{name}/1/model.py", COUNTING_MODEL)
        models.write(root / f"{name}/config.toml", CONFIG.format(extra=extra))
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    with serve(repo, "--cache-size", "1MiB", grpc=True) as running:
        yield running


def http_infer(server: RunningServer, model: str, x: np.ndarray,
               outputs: tuple[str, ...] = ("y", "calls")) -> dict[str, np.ndarray]:
    client = httpclient.InferenceServerClient(server.url)
    given = httpclient.InferInput("x", list(x.shape), "FP32")
    given.set_data_from_numpy(x, binary_data=True)
    wanted = [httpclient.InferRequestedOutput(name, binary_data=True) for name in outputs]
    result = client.infer(model, [given], outputs=wanted)
    return {name: result.as_numpy(name) for name in outputs}


def grpc_infer(server: RunningServer, model: str, x: np.ndarray) -> dict[str, np.ndarray]:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    given = grpcclient.InferInput("x", list(x.shape), "FP32")
    given.set_data_from_numpy(x)
    result = client.infer(model, [given])
    return {name: result.as_numpy(name) for name in ("y", "calls")}


def test_identical_requests_are_answered_from_the_cache_over_every_protocol(server: RunningServer) -> None:
    x = np.array([1, 2, 3], dtype=np.float32)
    first = http_infer(server, "cached", x)
    again = http_infer(server, "cached", x)
    by_grpc = grpc_infer(server, "cached", x)  # the cache sits in the core: gRPC meets HTTP's answer
    for answer in (first, again, by_grpc):
        np.testing.assert_array_equal(answer["y"], x * 2)
        assert answer["calls"].tolist() == [1]  # the model ran once
    other = http_infer(server, "cached", np.array([1, 2, 4], dtype=np.float32))  # other bytes
    assert other["calls"].tolist() == [2]
    reshaped = http_infer(server, "cached", x.reshape(3, 1).reshape(-1)[:2])  # other shape
    assert reshaped["calls"].tolist() == [3]
    only_y = http_infer(server, "cached", x, outputs=("y",))  # other outputs asked for: another answer
    np.testing.assert_array_equal(only_y["y"], x * 2)
    assert http_infer(server, "cached", x)["calls"].tolist() == [1]  # the first answer is still kept

    stats = httpclient.InferenceServerClient(server.url).get_inference_statistics("cached")["model_stats"][0]
    inference = stats["inference_stats"]
    assert inference["cache_hit"]["count"] == 3  # again, by_grpc, the last one
    assert inference["cache_miss"]["count"] == 4
    assert inference["success"]["count"] == 7
    assert stats["execution_count"] == 4  # hits run nothing
    assert stats["inference_count"] == 7  # Triton counts hits as inferences
    grpc_stats = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics("cached")
    assert grpc_stats.model_stats[0].inference_stats.cache_hit.count == 3

    metrics = requests.get(f"{server.base}/metrics", timeout=10).text
    assert 'inferd_cache_hits_total{model="cached",version="1"} 3.0' in metrics
    assert 'inferd_cache_misses_total{model="cached",version="1"} 4.0' in metrics
    assert "inferd_cache_entries 4.0" in metrics
    assert "inferd_cache_max_bytes 1.048576e+06" in metrics
    # and under Triton's names, for the models the cache answers only (as Triton writes them)
    lines = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line.startswith("nv_cache_"))
    labels = '{model="cached",version="1"}'
    assert int(lines[f"nv_cache_num_hits_per_model{labels}"]) == 3
    assert int(lines[f"nv_cache_num_misses_per_model{labels}"]) == 4
    assert int(lines[f"nv_cache_hit_duration_per_model{labels}"]) == inference["cache_hit"]["ns"] // 1000
    assert int(lines[f"nv_cache_miss_duration_per_model{labels}"]) == inference["cache_miss"]["ns"] // 1000
    assert not any('model="plain"' in key for key in lines)


def test_a_model_that_did_not_ask_for_the_cache_always_runs(server: RunningServer) -> None:
    x = np.array([5, 6], dtype=np.float32)
    assert [http_infer(server, "plain", x)["calls"].tolist() for _ in range(3)] == [[1], [2], [3]]
    stats = httpclient.InferenceServerClient(server.url).get_inference_statistics("plain")["model_stats"][0]
    assert stats["inference_stats"]["cache_hit"]["count"] == 0
    assert stats["inference_stats"]["cache_miss"]["count"] == 0


def test_without_cache_size_there_is_no_cache(repo: Path) -> None:
    with serve(repo) as running:
        x = np.array([1], dtype=np.float32)
        assert [http_infer(running, "cached", x)["calls"].tolist() for _ in range(2)] == [[1], [2]]
        text = requests.get(f"{running.base}/metrics", timeout=10).text
        assert "inferd_cache_" not in text and "nv_cache_" not in text


ENSEMBLE = """
platform = "ensemble"
[response_cache]
enable = true
[[input]]
name = "x"
datatype = "FP32"
shape = [-1]
[[output]]
name = "y"
datatype = "FP32"
shape = [-1]
[[output]]
name = "calls"
datatype = "INT64"
shape = [1]
[[ensemble_scheduling.step]]
model_name = "step"
input_map = { x = "x" }
output_map = { y = "y", calls = "calls" }
"""


def test_an_ensembles_cached_answer_is_not_served_once_its_step_changed(tmp_path: Path) -> None:
    """The ensemble's answer comes from its step's model: reloading that model (new code, then a
    new version) makes the cached answer stale, though the ensemble itself was not reloaded."""
    models.write(tmp_path / "step/1/model.py", COUNTING_MODEL)
    models.write(tmp_path / "step/config.toml", CONFIG.format(extra=""))
    (tmp_path / "pipeline/1").mkdir(parents=True)
    models.write(tmp_path / "pipeline/config.toml", ENSEMBLE)
    x = np.array([1, 2], dtype=np.float32)
    with serve(tmp_path, "--cache-size", "1MiB", "--model-control", "explicit", "--load-model", "*") as running:
        control = httpclient.InferenceServerClient(running.url)
        for _ in range(2):
            answer = http_infer(running, "pipeline", x)
            np.testing.assert_array_equal(answer["y"], x * 2)
            assert answer["calls"].tolist() == [1]  # the second from the cache
        models.write(tmp_path / "step/1/model.py", COUNTING_MODEL.replace("* 2", "* 3"))
        control.load_model("step")
        for _ in range(2):
            answer = http_infer(running, "pipeline", x)
            np.testing.assert_array_equal(answer["y"], x * 3)
            assert answer["calls"].tolist() == [1]  # the reloaded step ran once, then the cache answered
        models.write(tmp_path / "step/2/model.py", COUNTING_MODEL.replace("* 2", "* 5"))
        control.load_model("step")  # version 2 replaces 1 (the default policy serves the latest)
        np.testing.assert_array_equal(http_infer(running, "pipeline", x)["y"], x * 5)
        stats = control.get_inference_statistics("pipeline")["model_stats"][0]["inference_stats"]
        assert (stats["cache_hit"]["count"], stats["cache_miss"]["count"]) == (2, 3)


def test_a_sequences_requests_are_never_answered_from_the_cache(tmp_path: Path) -> None:
    """An ensemble with the cache whose step is stateful: the same input within a sequence gives
    a new answer each time (the running sum), so requests naming a sequence skip the cache."""
    sequence_models.build(tmp_path)
    (tmp_path / "summing/1").mkdir(parents=True)
    models.write(tmp_path / "summing/config.toml", """
platform = "ensemble"
[response_cache]
enable = true
[[input]]
name = "X"
datatype = "FP32"
shape = [1]
[[output]]
name = "SUM"
datatype = "FP32"
shape = [1]
[[ensemble_scheduling.step]]
model_name = "accumulate"
input_map = { X = "X" }
output_map = { SUM = "SUM" }
""")
    given = httpclient.InferInput("X", [1], "FP32")
    given.set_data_from_numpy(np.array([2.0], dtype=np.float32))
    with serve(tmp_path, "--cache-size", "1MiB") as running:
        client = httpclient.InferenceServerClient(running.url)
        sums = [client.infer("summing", [given], sequence_id=9, sequence_start=index == 0,
                             sequence_end=index == 2).as_numpy("SUM").tolist() for index in range(3)]
        assert sums == [[2.0], [4.0], [6.0]]
        stats = client.get_inference_statistics("summing")["model_stats"][0]["inference_stats"]
        assert stats["cache_hit"]["count"] == 0
