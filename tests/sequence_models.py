"""Stateful models for the sequence-batching tests (and Triton's sequence client examples), written
as Triton has them: simple_sequence an ONNX graph with START and READY control inputs,
simple_dyna_sequence and simple_string_dyna_sequence Python-backend models that read START, END and
CORRID, and a plain Python model that keeps an accumulator per sequence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests import models

SIMPLE_SEQUENCE_CONFIG = """
name: "simple_sequence"
platform: "onnxruntime_onnx"
max_batch_size: 8
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] }
  ]
}
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU } ]
"""

# Triton's dyna_sequence backend, as its client examples read it: the output is the input, plus one
# on a sequence's first request, plus the correlation ID on its last
DYNA = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy().astype(np.int64)
            start = pb_utils.get_input_tensor_by_name(request, "START").as_numpy()
            end = pb_utils.get_input_tensor_by_name(request, "END").as_numpy()
            corrid = pb_utils.get_input_tensor_by_name(request, "CORRID").as_numpy().astype(np.int64)
            ready = pb_utils.get_input_tensor_by_name(request, "READY").as_numpy()
            out = (value + start + end * corrid) * ready
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", out.astype(np.int32))]))
        return responses
'''

DYNA_CONFIG = """
name: "%s"
backend: "python"
max_batch_size: 8
sequence_batching {
  max_sequence_idle_microseconds: 10000000
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: %s } ] }
  ]
}
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
"""

# an accumulator per sequence, kept in the instance: reset at START (request.flags()), the
# correlation ID (a string that names a number) added at END
STRING_DYNA = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            value = int(pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()[0, 0])
            corrid = pb_utils.get_input_tensor_by_name(request, "CORRID").as_numpy()[0, 0].decode()
            assert corrid == str(request.correlation_id())
            flags = request.flags()
            if flags & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START:
                self.sums[corrid] = 0
            self.sums[corrid] += value
            out = self.sums[corrid]
            if flags & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END:
                out += int(corrid)
                del self.sums[corrid]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", np.array([[out]], np.int32))]))
        return responses
'''

# inferd's own Model class keeping state per sequence: it sees the control inputs its config asks for
ACCUMULATE = '''
import numpy as np


class Model:
    def __init__(self):
        self.sums = {}

    def infer(self, inputs):
        key = int(inputs["CORRID"][0])
        if inputs["START"][0]:
            self.sums[key] = 0.0
        self.sums[key] += float(inputs["X"][0])
        total = self.sums[key]
        if inputs["END"][0]:
            del self.sums[key]
        return {"SUM": np.array([total], dtype=np.float32), "LIVE": np.array([len(self.sums)], dtype=np.int32)}
'''

# answers every value its sequence has seen, in the order it saw them (an input of any length)
ORDERED = '''
import time

import numpy as np


class Model:
    def __init__(self):
        self.seen = {}

    def infer(self, inputs):
        time.sleep(0.02)  # long enough for the requests behind it to queue
        key = int(inputs["CORRID"][0])
        if inputs["START"][0]:
            self.seen[key] = []
        self.seen.setdefault(key, []).append(int(inputs["X"][0]))
        return {"ORDER": np.array(self.seen[key], dtype=np.int64)}
'''

ORDERED_CONFIG = """
backend = "python"
[sequence_batching]
max_sequence_idle_microseconds = 10000000
[[sequence_batching.control_input]]
name = "START"
kind = "START"
datatype = "BOOL"
[[sequence_batching.control_input]]
name = "CORRID"
kind = "CORRID"
datatype = "UINT64"
[[input]]
name = "X"
datatype = "FP32"
shape = [-1]
[[output]]
name = "ORDER"
datatype = "INT64"
shape = [-1]
"""

ACCUMULATE_CONFIG = """
backend = "python"
[sequence_batching]
max_sequence_idle_microseconds = %d
[[sequence_batching.control_input]]
name = "START"
kind = "START"
datatype = "BOOL"
[[sequence_batching.control_input]]
name = "END"
kind = "END"
datatype = "BOOL"
[[sequence_batching.control_input]]
name = "CORRID"
kind = "CORRID"
datatype = "UINT64"
[[input]]
name = "X"
datatype = "FP32"
shape = [1]
[[output]]
name = "SUM"
datatype = "FP32"
shape = [1]
[[output]]
name = "LIVE"
datatype = "INT32"
shape = [1]
[instance_group]
count = %d
kind = "%s"
"""


def simple_sequence_onnx() -> bytes:
    """OUTPUT = (INPUT + START) * READY, every tensor [batch, 1] INT32: Triton's simple_sequence."""
    def tensor(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", 1])

    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT", "START"], ["started"]),
         helper.make_node("Mul", ["started", "READY"], ["OUTPUT"])],
        "simple_sequence", [tensor("INPUT"), tensor("START"), tensor("READY")], [tensor("OUTPUT")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


# Triton's libtorch QA sequence models name a tensor by its forward argument's place
SIMPLE_SEQUENCE_TORCH_CONFIG = """
name: "%(name)s"
platform: "pytorch_libtorch"
max_batch_size: %(max_batch_size)d
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  control_input [
    { name: "START__1" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "END__2" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] },
    { name: "READY__3" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] }
  ]
}
input [ { name: "INPUT__0" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU } ]
"""


def simple_sequence_torchscript(path: Path) -> None:
    """OUTPUT__0 = (INPUT + START + 100 * END) * READY as TorchScript, the controls forward's last
    arguments (Triton's libtorch QA sequence models)."""
    import torch

    class SimpleSequence(torch.nn.Module):
        def forward(self, input0: torch.Tensor, start0: torch.Tensor, end0: torch.Tensor,
                    ready0: torch.Tensor) -> torch.Tensor:
            return (input0 + start0 + 100 * end0) * ready0

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(SimpleSequence()).save(str(path))


def build_torch(root: Path) -> Path:
    """simple_sequence_torch (max_batch_size 8) and simple_sequence_torch_nobatch, one TorchScript model."""
    for name, max_batch_size in (("simple_sequence_torch", 8), ("simple_sequence_torch_nobatch", 0)):
        simple_sequence_torchscript(root / name / "1/model.pt")
        models.write(root / name / "config.pbtxt",
                     SIMPLE_SEQUENCE_TORCH_CONFIG % {"name": name, "max_batch_size": max_batch_size})
    return root


def build(root: Path, idle_us: int = 5_000_000, accumulate_count: int = 2, accumulate_kind: str = "cpu") -> Path:
    (root / "simple_sequence/1").mkdir(parents=True, exist_ok=True)
    (root / "simple_sequence/1/model.onnx").write_bytes(simple_sequence_onnx())
    models.write(root / "simple_sequence/config.pbtxt", SIMPLE_SEQUENCE_CONFIG)
    models.write(root / "simple_dyna_sequence/1/model.py", DYNA)
    models.write(root / "simple_dyna_sequence/config.pbtxt", DYNA_CONFIG % ("simple_dyna_sequence", "TYPE_UINT64"))
    models.write(root / "simple_string_dyna_sequence/1/model.py", STRING_DYNA)
    models.write(root / "simple_string_dyna_sequence/config.pbtxt",
                 DYNA_CONFIG % ("simple_string_dyna_sequence", "TYPE_STRING"))
    models.write(root / "accumulate/1/model.py", ACCUMULATE)
    models.write(root / "accumulate/config.toml", ACCUMULATE_CONFIG % (idle_us, accumulate_count, accumulate_kind))
    models.write(root / "ordered/1/model.py", ORDERED)
    models.write(root / "ordered/config.toml", ORDERED_CONFIG)
    # the same with an INT32 correlation ID: ids beyond its range are refused
    models.write(root / "accumulate32/1/model.py", ACCUMULATE)
    models.write(root / "accumulate32/config.toml",
                 (ACCUMULATE_CONFIG % (idle_us, 1, "cpu")).replace('"UINT64"', '"INT32"'))
    return root


# -- implicit state (Triton's sequence_batching.state): accumulators that keep no state of their own --
STATE_PBTXT = """
name: "%(name)s"
platform: "%(platform)s"
max_batch_size: %(max_batch_size)d
sequence_batching {
  max_sequence_idle_microseconds: %(idle_us)d
  %(strategy)s
  state [ {
    input_name: "INPUT_STATE"
    output_name: "OUTPUT_STATE"
    data_type: TYPE_FP32
    dims: [ %(state_dims)s ]
    %(initial)s
  } ]
}
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ %(dims)s ] } ]
output [ { name: "OUTPUT" data_type: TYPE_FP32 dims: [ %(dims)s ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
"""

INITIAL_STATE = [0.5, -1.0, 2.0, 10.0]  # state_oldest's initial_state/start.bin


def accumulator_onnx(batching: bool) -> bytes:
    """OUTPUT_STATE = INPUT_STATE + INPUT, OUTPUT = OUTPUT_STATE: FP32 [batch, 4] (or [4])."""
    shape: list[str | int] = ["batch", 4] if batching else [4]

    def tensor(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT_STATE", "INPUT"], ["OUTPUT_STATE"]),
         helper.make_node("Identity", ["OUTPUT_STATE"], ["OUTPUT"])],
        "accumulator", [tensor("INPUT"), tensor("INPUT_STATE")], [tensor("OUTPUT"), tensor("OUTPUT_STATE")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def accumulator_torchscript(path: Path) -> None:
    """forward(x, state) -> (y, new_state), new_state = state + x (broadcast: a state of any length
    grows to the input's), y = new_state."""
    import torch

    class Accumulate(torch.nn.Module):
        def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            new_state = state + x
            return new_state.clone(), new_state

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(Accumulate()).save(str(path))


def build_state(root: Path, idle_us: int = 5_000_000) -> Path:
    """state_direct: ONNX, batching, zero initial state, direct; state_oldest: ONNX without a batch
    dim, its initial state from a file, oldest; state_torch: TorchScript, a variable-length state
    without initial_state (zeros of [1, 1] at START), oldest; state_string: ONNX, a BYTES state
    (empty strings at START), direct; state_string_torch: the same as TorchScript without a batch dim."""
    common = {"idle_us": idle_us, "platform": "onnxruntime_onnx"}
    zero = 'initial_state: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true name: "zeros" }'
    from_file = 'initial_state: { data_type: TYPE_FP32 dims: [ 4 ] data_file: "start.bin" name: "start" }'
    models.write(root / "state_direct/config.pbtxt", STATE_PBTXT % {
        **common, "name": "state_direct", "max_batch_size": 4, "strategy": "direct { }", "state_dims": "4",
        "initial": zero, "dims": "4"})
    (root / "state_direct/1").mkdir(parents=True)
    (root / "state_direct/1/model.onnx").write_bytes(accumulator_onnx(batching=True))
    models.write(root / "state_oldest/config.pbtxt", STATE_PBTXT % {
        **common, "name": "state_oldest", "max_batch_size": 0, "strategy": "oldest { max_candidate_sequences: 4 }",
        "state_dims": "4", "initial": from_file, "dims": "4"})
    (root / "state_oldest/1").mkdir(parents=True)
    (root / "state_oldest/1/model.onnx").write_bytes(accumulator_onnx(batching=False))
    (root / "state_oldest/initial_state").mkdir()
    (root / "state_oldest/initial_state/start.bin").write_bytes(np.array(INITIAL_STATE, "<f4").tobytes())
    models.write(root / "state_torch/config.pbtxt", STATE_PBTXT % {
        **common, "platform": "pytorch_libtorch", "name": "state_torch", "max_batch_size": 2,
        "strategy": "oldest { }", "state_dims": "-1", "initial": "", "dims": "-1"})
    accumulator_torchscript(root / "state_torch/1/model.pt")
    models.write(root / "state_string/config.pbtxt", (STATE_PBTXT % {
        **common, "name": "state_string", "max_batch_size": 4, "strategy": "direct { }", "state_dims": "1",
        "initial": "", "dims": "1"}).replace("TYPE_FP32", "TYPE_STRING"))
    (root / "state_string/1").mkdir(parents=True)
    (root / "state_string/1/model.onnx").write_bytes(previous_string_onnx())
    models.write(root / "state_string_torch/config.pbtxt", (STATE_PBTXT % {
        **common, "platform": "pytorch_libtorch", "name": "state_string_torch", "max_batch_size": 0,
        "strategy": "", "state_dims": "1", "initial": "", "dims": "1"}).replace("TYPE_FP32", "TYPE_STRING"))
    previous_string_torchscript(root / "state_string_torch/1/model.pt")
    return root


def previous_string_torchscript(path: Path) -> None:
    """previous_string_onnx as TorchScript, strings as List[str] (Triton's libtorch string tensors)."""
    import torch

    class PreviousString(torch.nn.Module):
        def forward(self, x: list[str], state: list[str]) -> tuple[list[str], list[str]]:
            return state, x

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(PreviousString()).save(str(path))


def previous_string_onnx() -> bytes:
    """OUTPUT = INPUT_STATE, OUTPUT_STATE = INPUT: STRING [batch, 1]; each request of a sequence is
    answered the one before's input (Triton's QA string state models also pass strings through)."""
    def tensor(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.STRING, ["batch", 1])

    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT_STATE"], ["OUTPUT"]),
         helper.make_node("Identity", ["INPUT"], ["OUTPUT_STATE"])],
        "previous_string", [tensor("INPUT"), tensor("INPUT_STATE")], [tensor("OUTPUT"), tensor("OUTPUT_STATE")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


# -- several sequences in one execution (Triton's oldest and direct strategies) ----------------------
# what each row saw, answered back: its CORRID, START, END, READY, the batch's size and the row's index;
# TOTAL = STATE_OUT = STATE_IN + X on a ready row (slow enough for the requests behind it to queue)
ROWS = '''
import time

import numpy as np

DELAY_S = 0.03


class Model:
    def infer(self, inputs):
        time.sleep(DELAY_S)
        rows = inputs["X"].shape[0]
        total = inputs["STATE_IN"] + inputs["X"] * inputs["READY"].astype(np.float32)
        seen = np.concatenate([inputs[name].astype(np.int64) for name in ("CORRID", "START", "END", "READY")]
                              + [np.full((rows, 1), rows), np.arange(rows).reshape(rows, 1)], axis=1)
        return {"TOTAL": total, "STATE_OUT": total, "SEEN": seen}
'''

ROWS_CONFIG = """
backend = "python"
max_batch_size = 8
[sequence_batching]
max_sequence_idle_microseconds = 5000000
[sequence_batching.%s]
%s
[[sequence_batching.control_input]]
name = "START"
kind = "START"
[[sequence_batching.control_input]]
name = "END"
kind = "END"
[[sequence_batching.control_input]]
name = "READY"
kind = "READY"
[[sequence_batching.control_input]]
name = "CORRID"
kind = "CORRID"
[[sequence_batching.state]]
input_name = "STATE_IN"
output_name = "STATE_OUT"
datatype = "FP32"
shape = [2]
[[input]]
name = "X"
datatype = "FP32"
shape = [2]
[[output]]
name = "TOTAL"
datatype = "FP32"
shape = [2]
[[output]]
name = "SEEN"
datatype = "INT64"
shape = [6]
[instance_group]
count = 1
"""


# a Triton Python model answering DYNA's OUTPUT and what each request showed it: its correlation_id(),
# flags() and the number of requests execute() got with it
DYNA_COUNTING = '''
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.03)
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy().astype(np.int64)
            start = pb_utils.get_input_tensor_by_name(request, "START").as_numpy()
            end = pb_utils.get_input_tensor_by_name(request, "END").as_numpy()
            corrid = pb_utils.get_input_tensor_by_name(request, "CORRID").as_numpy().astype(np.int64)
            ready = pb_utils.get_input_tensor_by_name(request, "READY").as_numpy()
            out = (value + start + end * corrid) * ready
            seen = np.array([[request.correlation_id(), request.flags(), len(requests)]], np.int64)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", out.astype(np.int32)),
                                                         pb_utils.Tensor("SEEN", seen)]))
        return responses
'''


# answers its INPUT after sleeping that many milliseconds
SLEEPY = '''
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            time.sleep(float(value.reshape(-1)[0]) / 1000)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", value)]))
        return responses
'''

SLEEPY_CONFIG = """
name: "%s"
backend: "python"
max_batch_size: 4
sequence_batching { oldest { max_candidate_sequences: 4 preserve_ordering: %s } }
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
"""


def build_batching(root: Path) -> Path:
    """rows_oldest and rows_direct: ROWS, one process instance each; acc_oldest (one instance) and
    acc_direct (two): the batching ONNX accumulator with its state, max_batch_size 8; dyna_counting:
    DYNA_COUNTING, one instance, direct; sleepy_in_order and sleepy: SLEEPY, two instances, oldest, with
    and without preserve_ordering."""
    config = DYNA_CONFIG % ("dyna_counting", "TYPE_UINT64")
    config = config.replace("count: 2", "count: 1").replace(
        'output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]',
        'output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }, '
        '{ name: "SEEN" data_type: TYPE_INT64 dims: [ 3 ] } ]')
    models.write(root / "dyna_counting/1/model.py", DYNA_COUNTING)
    models.write(root / "dyna_counting/config.pbtxt", config)
    models.write(root / "rows_oldest/1/model.py", ROWS)
    models.write(root / "rows_oldest/config.toml", ROWS_CONFIG % ("oldest", "max_candidate_sequences = 8"))
    models.write(root / "rows_direct/1/model.py", ROWS)
    models.write(root / "rows_direct/config.toml", ROWS_CONFIG % ("direct", ""))
    for name, strategy, count in (("acc_oldest", "oldest { max_candidate_sequences: 16 }", 1),
                                  ("acc_direct", "direct { }", 2)):
        text = STATE_PBTXT % {"name": name, "platform": "onnxruntime_onnx", "max_batch_size": 8, "idle_us": 5_000_000,
                              "strategy": strategy, "state_dims": "4", "initial": "", "dims": "4"}
        models.write(root / name / "config.pbtxt", text.replace("count: 2", f"count: {count}"))
        (root / name / "1").mkdir(parents=True)
        (root / name / "1/model.onnx").write_bytes(accumulator_onnx(batching=True))
    for name, preserve in (("sleepy_in_order", "true"), ("sleepy", "false")):
        models.write(root / name / "1/model.py", SLEEPY)
        models.write(root / name / "config.pbtxt", SLEEPY_CONFIG % (name, preserve))
    return root


WAIT_DELAY_S = 1.5  # the waiting models' max_queue_delay


def build_waiting(root: Path) -> Path:
    """ROWS models with a max_queue_delay of WAIT_DELAY_S, for Triton's wait (``--batch-wait delay``):
    wait_oldest (oldest, preferred size 3), wait_direct (direct, minimum_slot_utilization 0.25 of 8
    slots: 2 ready sequences), wait_own (wait_oldest with its own ``batch_wait = "delay"``), and
    wait_pbtxt: DYNA_COUNTING, oldest, preferred size 2, asking by its inferd.batch_wait parameter."""
    delay_us = int(WAIT_DELAY_S * 1e6)
    oldest = f"max_candidate_sequences = 8\npreferred_batch_size = [3]\nmax_queue_delay_microseconds = {delay_us}"
    direct = f"minimum_slot_utilization = 0.25\nmax_queue_delay_microseconds = {delay_us}"
    idle = "max_sequence_idle_microseconds = 5000000"
    for name, config in (("wait_oldest", ROWS_CONFIG % ("oldest", oldest)),
                         ("wait_direct", ROWS_CONFIG % ("direct", direct)),
                         ("wait_own", (ROWS_CONFIG % ("oldest", oldest)).replace(
                             idle, f'{idle}\nbatch_wait = "delay"'))):
        models.write(root / name / "1/model.py", ROWS)
        models.write(root / name / "config.toml", config)
    config = (DYNA_CONFIG % ("wait_pbtxt", "TYPE_UINT64")).replace("count: 2", "count: 1").replace(
        'output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]',
        'output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }, '
        '{ name: "SEEN" data_type: TYPE_INT64 dims: [ 3 ] } ]').replace(
        "sequence_batching {", "sequence_batching {\n  oldest { max_candidate_sequences: 4 preferred_batch_size: [ 2 ] "
        f"max_queue_delay_microseconds: {delay_us} }}")
    models.write(root / "wait_pbtxt/1/model.py", DYNA_COUNTING)
    models.write(root / "wait_pbtxt/config.pbtxt",
                 config + 'parameters { key: "inferd.batch_wait" value: { string_value: "delay" } }\n')
    return root
