"""A Triton model with several process instances is ready only once every instance is initialized,
as Triton's load (at start-up and through the repository load API) returns then; one instance that
cannot initialize fails the whole load. Served by the real server, asked with tritonclient."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import serve
from tests.models import write

# Each instance writes its name into `marks` once initialized; every instance but the first takes
# a while, so a load that returned after the first would be seen with one mark. An instance whose
# name is in `refused` raises instead.
SLOW_START = """
import time
from pathlib import Path

import json
import time

import numpy as np

import triton_python_backend_utils as pb_utils

MARKS = Path({marks!r})
REFUSED = {refused!r}


class TritonPythonModel:
    def initialize(self, args):
        name = args["model_instance_name"]
        if not name.endswith("_0"):
            time.sleep(1.5)
        if name in REFUSED:
            raise RuntimeError(f"instance {{name}} refuses to start")
        (MARKS / name).write_text("initialized")

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.get_input_tensor_by_name(r, "x")]) for r in requests]
"""

PBTXT = """
backend: "python"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
instance_group [ { count: 3 kind: KIND_CPU } ]
"""


def slow_model(root: Path, name: str, marks: Path, refused: tuple[str, ...] = ()) -> None:
    marks.mkdir(parents=True, exist_ok=True)
    write(root / name / "1" / "model.py", SLOW_START.format(marks=str(marks), refused=list(refused)))
    write(root / name / "config.pbtxt", PBTXT)


def test_a_model_with_three_instances_is_ready_only_once_all_three_are_initialized(tmp_path: Path) -> None:
    at_start, loaded = tmp_path / "marks_start", tmp_path / "marks_load"
    slow_model(tmp_path / "repo", "at_start", at_start)
    slow_model(tmp_path / "repo", "loaded", loaded)
    with serve(tmp_path / "repo", "--model-control", "explicit", "--load-model", "at_start", grpc=True) as server:
        http = httpclient.InferenceServerClient(server.base.removeprefix("http://"))
        assert http.is_model_ready("at_start")
        assert sorted(p.name for p in at_start.iterdir()) == ["at_start_0_0", "at_start_0_1", "at_start_0_2"]
        client = grpcclient.InferenceServerClient(server.grpc_url)
        client.load_model("loaded")  # returns once the version is ready: every instance initialized
        assert sorted(p.name for p in loaded.iterdir()) == ["loaded_0_0", "loaded_0_1", "loaded_0_2"]
        assert client.is_model_ready("loaded")
        config = client.get_model_config("loaded").config
        assert config.instance_group[0].count == 3


def test_a_load_whose_second_instance_fails_fails_and_leaves_the_model_unavailable(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    slow_model(tmp_path / "repo", "half", marks, refused=("half_0_1",))
    with serve(tmp_path / "repo", "--model-control", "explicit", grpc=True) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        with pytest.raises(InferenceServerException, match="instance half_0_1 refuses to start"):
            client.load_model("half")
        assert not client.is_model_ready("half")
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index["half"].state == "UNAVAILABLE"
        assert "half_0_1 refuses to start" in index["half"].reason


COUNTED = """
import os
from pathlib import Path

import json
import time

import numpy as np

import triton_python_backend_utils as pb_utils

MARKS = Path({marks!r})


class TritonPythonModel:
    def initialize(self, args):
        (MARKS / f"initialize-{{os.getpid()}}").write_text(args["model_instance_name"])

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.get_input_tensor_by_name(r, "x")]) for r in requests]

    def finalize(self):
        (MARKS / f"finalize-{{os.getpid()}}").write_text("")
"""


def marked(marks: Path, kind: str) -> int:
    return sum(1 for p in marks.iterdir() if p.name.startswith(kind))


def test_a_load_that_changes_only_the_instance_count_adds_or_removes_instances_in_place(tmp_path: Path) -> None:
    marks, repo = tmp_path / "marks", tmp_path / "repo"
    marks.mkdir()
    write(repo / "m" / "1" / "model.py", COUNTED.format(marks=str(marks)))
    write(repo / "m" / "config.pbtxt", PBTXT.replace("count: 3", "count: 2"))
    with serve(repo, "--model-control", "explicit", "--load-model", "m", grpc=True) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        assert marked(marks, "initialize") == 2
        write(repo / "m" / "config.pbtxt", PBTXT)  # count 3: one more instance, the two others kept
        client.load_model("m")
        assert (marked(marks, "initialize"), marked(marks, "finalize")) == (3, 0)
        assert client.get_model_config("m").config.instance_group[0].count == 3
        client.load_model("m")  # nothing changed: the model stays as loaded
        assert (marked(marks, "initialize"), marked(marks, "finalize")) == (3, 0)
        write(repo / "m" / "config.pbtxt", PBTXT.replace("count: 3", "count: 1"))  # two retire
        client.load_model("m")  # returns once the two have finalized, as Triton's
        assert (marked(marks, "initialize"), marked(marks, "finalize")) == (3, 2)
        x = np.array([[4.0]], dtype=np.float32)
        request = grpcclient.InferInput("x", [1, 1], "FP32")
        request.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("m", [request]).as_numpy("x"), x)
        write(repo / "m" / "config.pbtxt", PBTXT.replace("count: 3", "count: 2").replace("max_batch_size: 4",
                                                                                       "max_batch_size: 8"))
        client.load_model("m")  # another key changed too: a full reload, every instance new
        assert marked(marks, "initialize") == 5
        assert client.get_model_config("m").config.max_batch_size == 8


def test_a_load_override_may_give_a_repeated_key_one_object_as_triton_takes_it(tmp_path: Path) -> None:
    """Triton's lifecycle test loads ``{"instance_group": {"kind": ..., "count": 5}}``: protobuf's
    C++ JSON parser takes one object for a repeated field; a top-level value that is no object is
    refused with what came. The override names no backend: the Python model's KIND_CPU instances
    are still processes of their own (two marks, two pids), as Triton's Python backend runs them."""
    marks, repo = tmp_path / "marks", tmp_path / "repo"
    marks.mkdir()
    write(repo / "m" / "1" / "model.py", COUNTED.format(marks=str(marks)))
    write(repo / "m" / "config.pbtxt", PBTXT.replace("count: 3", "count: 1"))
    with serve(repo, "--model-control", "explicit", grpc=True) as server:
        http = httpclient.InferenceServerClient(server.base.removeprefix("http://"))
        http.load_model("m", config='{"instance_group": {"kind": "KIND_CPU", "count": 2}}')
        assert marked(marks, "initialize") == 2
        assert http.get_model_config("m")["instance_group"][0]["count"] == 2
        with pytest.raises(InferenceServerException, match="expected a JSON object, got list"):
            http.load_model("m", config="[1]")


def test_a_python_models_configuration_as_answered_loads_back_with_one_more_instance(tmp_path: Path) -> None:
    """Triton's instance update test reads the configuration, adds an instance and loads it back:
    Triton answers a Python model's platform empty (its metadata says "python")."""
    marks, repo = tmp_path / "marks", tmp_path / "repo"
    marks.mkdir()
    write(repo / "m" / "1" / "model.py", COUNTED.format(marks=str(marks)))
    write(repo / "m" / "config.pbtxt", PBTXT.replace("count: 3", "count: 1"))
    with serve(repo, "--model-control", "explicit", "--load-model", "m", grpc=True) as server:
        http = httpclient.InferenceServerClient(server.base.removeprefix("http://"))
        config = http.get_model_config("m")
        assert (config["platform"], config["backend"]) == ("", "python")
        assert http.get_model_metadata("m")["platform"] == "python"
        config["instance_group"][0]["count"] = 2
        http.load_model("m", config=json.dumps(config))
        assert (marked(marks, "initialize"), marked(marks, "finalize")) == (2, 0)


# every instance but the first refuses to start while the flag file exists
REFUSING_NEW = """
from pathlib import Path

import triton_python_backend_utils as pb_utils

FLAG = Path({flag!r})


class TritonPythonModel:
    def initialize(self, args):
        if FLAG.exists() and not args["model_instance_name"].endswith("_0_0"):
            raise RuntimeError(f"instance {{args['model_instance_name']}} refuses to start")

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.get_input_tensor_by_name(r, "x")]) for r in requests]
"""


def test_a_load_adding_an_instance_that_fails_to_start_fails_at_once_and_the_model_serves_on(tmp_path: Path) -> None:
    """As Triton's UpdateInstanceGroup: the new instance's failure fails the load (it waited up to
    600 s), the new instances go, and the model serves with the instances and configuration it had."""
    flag, repo = tmp_path / "refuse", tmp_path / "repo"
    write(repo / "m" / "1" / "model.py", REFUSING_NEW.format(flag=str(flag)))
    write(repo / "m" / "config.pbtxt", PBTXT.replace("count: 3", "count: 1"))
    with serve(repo, "--model-control", "explicit", "--load-model", "m", grpc=True) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        flag.write_text("")
        write(repo / "m" / "config.pbtxt", PBTXT.replace("count: 3", "count: 2"))
        started = time.monotonic()
        with pytest.raises(InferenceServerException, match=r"instance m_0_\d+ refuses to start") as failed:
            client.load_model("m", client_timeout=60)
        assert time.monotonic() - started < 30, failed.value
        assert "serves on with its 1 instance(s)" in str(failed.value)
        assert client.is_model_ready("m")
        assert client.get_model_config("m").config.instance_group[0].count == 1
        x = np.array([[2.0]], dtype=np.float32)
        request = grpcclient.InferInput("x", [1, 1], "FP32")
        request.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("m", [request]).as_numpy("x"), x)
        flag.unlink()
        client.load_model("m", client_timeout=60)  # the same change once instances start: in place
        assert client.get_model_config("m").config.instance_group[0].count == 2
        np.testing.assert_array_equal(client.infer("m", [request]).as_numpy("x"), x)


def test_kind_gpu_instances_of_a_python_model_are_processes_told_their_kind_and_device(tmp_path: Path) -> None:
    """Triton's Python backend runs every instance in a stub process, whatever its kind, and gives
    it ``model_instance_kind``/``model_instance_device_id``; KIND_GPU instances ran in the server's
    process (one ``initialize`` for all). Without a GPU the model loads all the same (Triton itself
    refuses KIND_GPU on a machine without one); ``count`` instances run on each listed GPU, and an
    instance update adds or retires them in place, as KIND_CPU's."""
    marks, repo = tmp_path / "marks", tmp_path / "repo"
    marks.mkdir()
    write(repo / "m" / "1" / "model.py", COUNTED.format(marks=str(marks)).replace(
        'write_text(args["model_instance_name"])', "write_text(json.dumps(args))"))
    write(repo / "m" / "config.pbtxt", PBTXT.replace("kind: KIND_CPU", "kind: KIND_GPU gpus: [ 0, 1 ]"))
    with serve(repo, "--model-control", "explicit", "--load-model", "m", grpc=True) as server:
        initialized = {int(p.name.split("-")[1]): json.loads(p.read_text()) for p in marks.iterdir()}
        assert len(initialized) == 6 and server.process.pid not in initialized  # 3 on each of two GPUs
        assert sorted((args["model_instance_kind"], args["model_instance_device_id"])
                      for args in initialized.values()) == [("GPU", "0")] * 3 + [("GPU", "1")] * 3
        client = grpcclient.InferenceServerClient(server.grpc_url)
        x = np.array([[3.0]], dtype=np.float32)
        request = grpcclient.InferInput("x", [1, 1], "FP32")
        request.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("m", [request]).as_numpy("x"), x)
        write(repo / "m" / "config.pbtxt", PBTXT.replace("count: 3 kind: KIND_CPU",
                                                         "count: 2 kind: KIND_GPU gpus: [ 0, 1 ]"))
        client.load_model("m")  # two retire, in place
        assert (marked(marks, "initialize"), marked(marks, "finalize")) == (6, 2)
        assert client.get_model_config("m").config.instance_group[0].count == 2
        np.testing.assert_array_equal(client.infer("m", [request]).as_numpy("x"), x)
