"""Decoupled models for the streaming tests (and the peer examples): a Python generator model, an
endless one that records how far it got, Triton's repeat model as a Python-backend model, and a
careless one that sends error responses as fast as it can."""

from __future__ import annotations

from pathlib import Path

from tests import models

COUNT_UP = '''
import time

import numpy as np


class Model:
    def infer(self, inputs):
        for i in range(int(inputs["N"][0])):
            time.sleep(0.01)
            yield {"VALUE": np.array([i], dtype=np.int32), "TEXT": np.array([f"token {i}".encode()], dtype=object)}
'''

COUNT_UP_CONFIG = """
backend = "python"
[model_transaction_policy]
decoupled = true
[[input]]
name = "N"
datatype = "INT32"
shape = [1]
[[output]]
name = "VALUE"
datatype = "INT32"
shape = [1]
[[output]]
name = "TEXT"
datatype = "BYTES"
shape = [1]
"""

ENDLESS = '''
import time

import numpy as np

PROGRESS = {progress!r}


class Model:
    def infer(self, inputs):
        i = 0
        try:
            while True:
                i += 1
                with open(PROGRESS, "w") as out:
                    out.write(str(i))
                yield {{"VALUE": np.array([i], dtype=np.int32), "TEXT": np.array([b"more"], dtype=object)}}
                time.sleep(0.01)
        finally:
            with open(PROGRESS + ".closed", "w") as out:
                out.write(str(i))
'''

# Triton's repeat_int32 (src/backends/backend/examples/repeat.cc) as a Python-backend model: for
# one request, one response per element of IN, DELAY[i] ms apart, then the final flag alone.
REPEAT = '''
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import json
        config = json.loads(args["model_config"])
        assert pb_utils.using_decoupled_model_transaction_policy(config)

    def execute(self, requests):
        for request in requests:
            threading.Thread(target=self.repeat, args=(request,), daemon=True).start()
        return None

    def repeat(self, request):
        sender = request.get_response_sender()
        values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
        delays = pb_utils.get_input_tensor_by_name(request, "DELAY").as_numpy()
        wait = pb_utils.get_input_tensor_by_name(request, "WAIT").as_numpy()
        for index, (value, delay) in enumerate(zip(values, delays)):
            if request.is_cancelled():
                break
            time.sleep(float(delay) / 1000)
            sender.send(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", np.array([value], dtype=np.int32)),
                pb_utils.Tensor("IDX", np.array([index], dtype=np.uint32))]))
        time.sleep(float(wait[0]) / 1000)
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
'''

REPEAT_CONFIG = """
name: "repeat_int32"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [
  { name: "IN" data_type: TYPE_INT32 dims: [ -1 ] },
  { name: "DELAY" data_type: TYPE_UINT32 dims: [ -1 ] },
  { name: "WAIT" data_type: TYPE_UINT32 dims: [ 1 ] }
]
output [
  { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "IDX" data_type: TYPE_UINT32 dims: [ 1 ] }
]
instance_group [ { count: 4 kind: KIND_CPU } ]
"""

# repeat_int32 whose last response carries the final flag itself, none sent alone after it
REPEAT_LAST_FINAL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            for index, value in enumerate(values):
                flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if index == len(values) - 1 else 0
                sender.send(pb_utils.InferenceResponse([
                    pb_utils.Tensor("OUT", np.array([value], dtype=np.int32)),
                    pb_utils.Tensor("IDX", np.array([index], dtype=np.uint32))]), flags=flags)
'''

# repeat_last_final whose response for a negative value is an error response (sent without the final
# flag unless it is the last): Triton delivers it as one answer, and the request's stream goes on
REPEAT_WITH_ERROR = REPEAT_LAST_FINAL.replace(
    "                sender.send(pb_utils.InferenceResponse([",
    """                if value < 0:
                    sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                        f"value {value} at {index} refused", pb_utils.TritonError.INVALID_ARG)), flags=flags)
                    continue
                sender.send(pb_utils.InferenceResponse([""")

# a careless decoupled model: error responses as fast as it can, never asking is_cancelled(), then
# the final flag after SENDS of them; PROGRESS.done once it is through
CARELESS = '''
import triton_python_backend_utils as pb_utils

PROGRESS = {progress!r}
SENDS = 200_000


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            for index in range(SENDS):
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("refused " * 128 + str(index))))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            open(PROGRESS + ".done", "w").close()
'''

CARELESS_CONFIG = """
backend = "python"
[model_transaction_policy]
decoupled = true
[[input]]
name = "IN"
datatype = "INT32"
shape = [1]
[[output]]
name = "OUT"
datatype = "INT32"
shape = [1]
[instance_group]
kind = "%s"
"""

THREADS = '\n[instance_group]\nkind = "cpu"\n'  # on threads of the server's process (not its default)


def build(root: Path, progress: Path) -> Path:
    models.write(root / "count_up/1/model.py", COUNT_UP)
    models.write(root / "count_up/config.toml", COUNT_UP_CONFIG + THREADS)
    models.write(root / "endless/1/model.py", ENDLESS.format(progress=str(progress)))
    models.write(root / "endless/config.toml", COUNT_UP_CONFIG + THREADS)
    process = '\n[instance_group]\nkind = "process"\ncount = 2\n'  # the same models in instance processes
    models.write(root / "count_up_process/1/model.py", COUNT_UP)
    models.write(root / "count_up_process/config.toml", COUNT_UP_CONFIG + process)
    models.write(root / "endless_process/1/model.py", ENDLESS.format(progress=f"{progress}-process"))
    models.write(root / "endless_process/config.toml", COUNT_UP_CONFIG + process)
    models.write(root / "repeat_int32/1/model.py", REPEAT)
    models.write(root / "repeat_int32/config.pbtxt", REPEAT_CONFIG)
    models.write(root / "repeat_last_final/1/model.py", REPEAT_LAST_FINAL)
    models.write(root / "repeat_last_final/config.pbtxt", REPEAT_CONFIG.replace("repeat_int32", "repeat_last_final"))
    models.write(root / "repeat_with_error/1/model.py", REPEAT_WITH_ERROR)
    models.write(root / "repeat_with_error/config.pbtxt", REPEAT_CONFIG.replace("repeat_int32", "repeat_with_error"))
    models.write(root / "double/1/model.py", models.PYTHON_MODEL)
    models.write(root / "double/config.toml", models.PYTHON_CONFIG)
    return root


def build_careless(root: Path, progress: Path) -> Path:
    """CARELESS on threads of the server's process (careless) and in an instance process
    (careless_process); each touches ``progress``-<name>.done when through."""
    for name, kind in (("careless", "cpu"), ("careless_process", "process")):
        models.write(root / name / "1/model.py", CARELESS.format(progress=f"{progress}-{name}"))
        models.write(root / name / "config.toml", CARELESS_CONFIG % kind)
    return root
