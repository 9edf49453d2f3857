"""Triton's model_warmup in config.pbtxt: each sample runs through every instance at load, before the
model is ready (zeros, random values, and a file's raw bytes, BYTES included); a sample that cannot
run makes the model UNAVAILABLE with the reason, and the server serves its other models."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

from tests import models
from tests.conftest import serve

MODEL = """
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import json
        self.path = json.loads(args["model_config"])["parameters"]["log"]["string_value"]

    def execute(self, requests):
        answers = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            with open(self.path, "a") as log:
                log.write(f"{os.getpid()} {x.shape[0]} {x.ravel().tolist()} {text.ravel().tolist()}\\n")
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x * 2)]))
        return answers
"""

CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 4
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 2 ] }}, {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 2 ] }} ]
instance_group [ {{ count: 2 kind: KIND_CPU }} ]
parameters {{ key: "log" value: {{ string_value: "{log}" }} }}
model_warmup [
  {{ name: "zeros" batch_size: 3 count: 2
     inputs {{ key: "IN" value: {{ data_type: TYPE_FP32 dims: [ 2 ] zero_data: true }} }}
     inputs {{ key: "TEXT" value: {{ data_type: TYPE_STRING dims: [ 1 ] zero_data: true }} }} }},
  {{ name: "from_file"
     inputs {{ key: "IN" value: {{ data_type: TYPE_FP32 dims: [ 2 ] input_data_file: "{file}" }} }}
     inputs {{ key: "TEXT" value: {{ data_type: TYPE_STRING dims: [ 1 ] input_data_file: "text.raw" }} }} }}
]
"""


def _model(root: Path, name: str, log: Path, file: str = "in.raw", batch_size_fix: str = "") -> None:
    models.write(root / name / "1/model.py", MODEL)
    models.write(root / name / "config.pbtxt", CONFIG.format(name=name, log=log, file=file) + batch_size_fix)
    (root / name / "warmup").mkdir()
    (root / name / "warmup/in.raw").write_bytes(np.array([1.5, -2.0], np.float32).tobytes())
    (root / name / "warmup/text.raw").write_bytes(struct.pack("<I", 5) + b"hello")


def test_every_instance_runs_every_sample_before_the_model_is_ready(tmp_path: Path) -> None:
    root, log = tmp_path / "repo", tmp_path / "warmed.log"
    _model(root, "warmed", log)
    _model(root, "missing_file", tmp_path / "missing.log", file="nowhere.raw")
    models.write(root / "too_big/config.pbtxt", CONFIG.format(name="too_big", log=tmp_path / "x.log", file="in.raw")
                 .replace("batch_size: 3", "batch_size: 9"))
    models.write(root / "too_big/1/model.py", MODEL)
    with serve(root) as server:
        lines = log.read_text().splitlines()  # the first instance's, written before the model was ready
        first = lines[0].split()[0] if lines else ""  # (the second's may be there too on a busy machine)
        assert sum(line.startswith(first + " ") for line in lines) == 3, lines
        deadline = time.monotonic() + 60  # the second instance starts in the background, warmed before it serves
        while len(lines) < 6 and time.monotonic() < deadline:
            time.sleep(0.1)
            lines = log.read_text().splitlines()
        client = httpclient.InferenceServerClient(server.url)
        pids = {line.split()[0] for line in lines}
        assert len(pids) == 2, lines  # both instances
        for pid in pids:
            mine = [line.split(" ", 1)[1] for line in lines if line.startswith(pid + " ")]
            assert mine == ["3 [0.0, 0.0, 0.0, 0.0, 0.0, 0.0] [b'', b'', b'']"] * 2 + ["1 [1.5, -2.0] [b'hello']"]
        config = client.get_model_config("warmed")
        assert [(w["name"], w["batch_size"], w["count"]) for w in config["model_warmup"]] == [
            ("zeros", 3, 2), ("from_file", 1, 1)]
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert index["missing_file"]["state"] == "UNAVAILABLE"
        assert "model_warmup 'from_file'" in index["missing_file"]["reason"]
        assert "nowhere.raw" in index["missing_file"]["reason"]
        assert index["too_big"]["state"] == "UNAVAILABLE"
        assert "batch_size 9 is over max_batch_size 4" in index["too_big"]["reason"]
        given = [httpclient.InferInput("IN", [1, 2], "FP32"), httpclient.InferInput("TEXT", [1, 1], "BYTES")]
        given[0].set_data_from_numpy(np.array([[1.0, 2.0]], np.float32))
        given[1].set_data_from_numpy(np.array([[b"x"]], dtype=object))
        np.testing.assert_array_equal(client.infer("warmed", given).as_numpy("OUT"), [[2.0, 4.0]])
