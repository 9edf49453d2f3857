"""Triton Python-backend models using the less travelled parts of pb_utils, and models written wrong,
served by the real server and called with tritonclient: each wrong one is a clear error for its
caller, and the server goes on serving."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests import models, triton_models
from tests.conftest import RunningServer, serve

CONFIG = triton_models.IN_OUT_CONFIG

HEAD = """
import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils


def tripled(request):
    return pb_utils.InferenceResponse([pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(request, "IN")
                                                       .as_numpy() * 3)])


class TritonPythonModel:
"""

MODELS = {
    "tripled": """
    def execute(self, requests):
        return [tripled(request) for request in requests]
""",
    # async execute, its lock made once: every call must run on the same event loop
    "async_tripled": """
    def initialize(self, args):
        self.lock = asyncio.Lock()

    async def execute(self, requests):
        async with self.lock:
            await asyncio.sleep(0)
            return [tripled(request) for request in requests]
""",
    # not decoupled, yet answering through the response sender and returning None (Triton allows it)
    "sender_answers": """
    def execute(self, requests):
        for request in requests:
            request.get_response_sender().send(tripled(request),
                                               flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
""",
    "coded_errors": """
    def execute(self, requests):
        codes = {1: pb_utils.TritonError.INVALID_ARG, 2: pb_utils.TritonError.NOT_FOUND,
                 3: pb_utils.TritonError.UNAVAILABLE, 4: pb_utils.TritonError.UNSUPPORTED,
                 5: pb_utils.TritonError.UNKNOWN, 6: pb_utils.TritonError.ALREADY_EXISTS,
                 8: pb_utils.TritonError.CANCELLED}
        answers = []
        for request in requests:
            which = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0])
            error = (pb_utils.TritonError(f"coded {which}", codes[which]) if which in codes
                     else pb_utils.TritonError(f"uncoded {which}"))
            answers.append(pb_utils.InferenceResponse(error=error))
        return answers
""",
    # Triton's initialize() arguments: the instance is named <model>_<group>_<index>
    "named_instance": """
    def initialize(self, args):
        self.args = args

    def execute(self, requests):
        pb_utils.Logger.log_info(f"{self.args['model_instance_name']} answers")
        return [pb_utils.InferenceResponse(tripled(request).output_tensors(),
                                           parameters={key: self.args[key] for key in
                                                       ("model_instance_name", "model_instance_kind")})
                for request in requests]
""",
    # imports a file beside it (Triton's stub puts the version's folder on sys.path) and another
    # relatively (Triton imports model.py as <version>.model), also when its auto_complete_config runs
    "imports_beside": """
    from . import beside_relative

    @staticmethod
    def auto_complete_config(config):
        import beside_helper
        return config

    def execute(self, requests):
        from beside_helper import times

        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", times(
            pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()) + self.beside_relative.OFFSET)])
                for request in requests]
""",
    # runs unittest.main, which parses sys.argv (Triton's QA models run their checks so): the
    # instance's argv holds nothing of the server's
    "runs_unittest": """
    def execute(self, requests):
        import sys
        import unittest

        class Passes(unittest.TestCase):
            def test_passes(self):
                pass

        sys.modules["passes_module"] = type(sys)("passes_module")
        sys.modules["passes_module"].Passes = Passes
        result = unittest.main("passes_module", exit=False).result
        ok = float(result.wasSuccessful() and result.testsRun == 1)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([ok, len(sys.argv)], np.float32))])
                for request in requests]
""",
    # answers OUT of a shape other than its dims, as Triton's QA custom_metrics model does
    "other_shape": """
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.ones((1, 3), np.float32))])
                for request in requests]
""",
    "raises": """
    def execute(self, requests):
        return undefined_name
""",
    # not decoupled: the final flag alone first, or a second response (Triton's response_sender.cc refuses both)
    "sender_misused": """
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            if pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0] == 1:
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            sender.send(tripled(request))
            sender.send(tripled(request))
        return None
""",
    # not decoupled, answering through the response sender from a thread after execute returned None
    "sender_answers_later": """
    def execute(self, requests):
        import threading
        import time

        def later(request):
            time.sleep(0.3)
            request.get_response_sender().send(tripled(request), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

        for request in requests:
            request.get_response_sender()
            threading.Thread(target=later, args=(request,)).start()
        return None
""",
    # not decoupled, sending a response and returning another: the sent one is the answer, as Triton's
    "sender_and_return": """
    def execute(self, requests):
        for request in requests:
            request.get_response_sender().send(tripled(request), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.zeros(2, np.float32))]) for _ in requests]
""",
    # a BLS call too large for the instance's channel to the server (256 MiB), then a small one
    "calls_too_large": """
    def execute(self, requests):
        def call(values):
            return pb_utils.InferenceRequest(model_name="tripled", requested_output_names=["OUT"],
                                             inputs=[pb_utils.Tensor("IN", values)]).exec()

        big = call(np.zeros(80_000_000, np.float32))  # 320 MB
        refused = float(big.has_error() and "too large to send to the server" in big.error().message())
        small = pb_utils.get_output_tensor_by_name(call(np.array([1, 2], np.float32)), "OUT").as_numpy()
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([refused, small.sum()], np.float32))])
                for request in requests]
""",
    "returns_dicts": """
    def execute(self, requests):
        return [{"OUT": np.zeros(2, np.float32)} for request in requests]
""",
    # Triton's custom metrics: the model reads its own value (test_triton_bls: /metrics)
    "counted": """
    def initialize(self, args):
        family = pb_utils.MetricFamily(name="calls", description="calls so far", kind=pb_utils.MetricFamily.COUNTER)
        self.calls = family.Metric(labels={"model": args["model_name"]})

    def execute(self, requests):
        self.calls.increment(len(requests))
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.full(2, self.calls.value(), np.float32))])
                for request in requests]
""",
    # the request's timeout() and trace(), the input's triton_dtype() and __dlpack__ (numpy reads it)
    "surface": """
    def execute(self, requests):
        answers = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, "IN")
            pb_utils.Logger.log(f"surface warns {request.timeout()}", pb_utils.Logger.WARNING)
            facts = [request.timeout(), tensor.triton_dtype() * 1000 + np.from_dlpack(tensor).sum()]
            if request.trace().get_context() is not None:
                facts = [-1, -1]
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array(facts, np.float32))],
                                                      parameters={"answered": True, "count": 2, "by": "surface"}))
        return answers
""",
    # request rescheduling needs iterative_sequence, which inferd does not serve: a clear error
    "reschedules": """
    def execute(self, requests):
        for request in requests:
            request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
        return [None for request in requests]
""",
    # a BLS call preferring GPU memory for its outputs (a CPU-only server puts them in CPU memory),
    # with a timeout its target sees; it answers with the target's outputs and response parameters
    "prefers_gpu": """
    def execute(self, requests):
        import json

        answers = []
        for request in requests:
            call = pb_utils.InferenceRequest(
                model_name="surface", inputs=[pb_utils.get_input_tensor_by_name(request, "IN")],
                requested_output_names=["OUT"], timeout=5_000_000,
                preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_GPU, 0))
            response = call.exec()
            if response.has_error():
                raise pb_utils.TritonModelException(response.error().message())
            out = pb_utils.get_output_tensor_by_name(response, "OUT")
            assert out.is_cpu()
            answers.append(pb_utils.InferenceResponse([out], parameters=json.loads(response.parameters())))
        return answers
""",
    # cached (response_cache), its response parameters counting its calls
    "cached_parameters": """
    def initialize(self, args):
        self.calls = 0

    def execute(self, requests):
        self.calls += 1
        return [pb_utils.InferenceResponse(tripled(request).output_tensors(), parameters={"calls": self.calls})
                for request in requests]
""",
    # decoupled, each response with parameters of its own
    "decoupled_parameters": """
    def execute(self, requests):
        sender = requests[0].get_response_sender()
        answer = tripled(requests[0]).output_tensors()
        sender.send(pb_utils.InferenceResponse(answer, parameters={"part": 1}))
        sender.send(pb_utils.InferenceResponse(answer, parameters={"part": 2}),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
""",
    # decoupled, sending once more after its final flag: the client has its answer, the log the bug
    "decoupled_after_final": """
    def execute(self, requests):
        sender = requests[0].get_response_sender()
        sender.send(tripled(requests[0]), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        sender.send(tripled(requests[0]))
""",
    # decoupled, leaving its process after one answer: its stream fails, the server serves on
    "decoupled_exits": """
    def execute(self, requests):
        requests[0].get_response_sender().send(tripled(requests[0]))
        import os
        import time
        time.sleep(0.5)  # its answer has left the process
        os._exit(3)
""",
    # decoupled, but written as a plain model: returns its responses instead of sending them
    "decoupled_returns": """
    def execute(self, requests):
        return [tripled(request) for request in requests]
""",
}


# a request's own parameters, id and requested outputs; it answers only the outputs asked for
ASKS = HEAD + """
    def execute(self, requests):
        import json

        answers = []
        for request in requests:
            parameters = json.loads(request.parameters())
            facts = np.array([len(parameters), float(parameters.get("scale", 0)), float(request.request_id() or 0)],
                             np.float32)
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor(name, facts if name == "FACTS" else facts * 0)
                                                       for name in request.requested_output_names()]))
        return answers
"""

ASKS_CONFIG = """
name: "asks"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "FACTS" data_type: TYPE_FP32 dims: [ 3 ] }, { name: "OTHER" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""


# a model without inputs (Triton's QA models for BLS and custom metrics are such)
TAKES_NOTHING = """
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([len(request.inputs())], np.float32))])
                for request in requests]
"""
TAKES_NOTHING_CONFIG = """
backend: "python"
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""


# Triton's optional inputs: a request may leave A or B out (the model sees None); C it must send
OPTIONAL_INPUTS = """
    def execute(self, requests):
        answers = []
        for request in requests:
            a, b, c = (pb_utils.get_input_tensor_by_name(request, name) for name in ("A", "B", "C"))
            value = (a.as_numpy() if a is not None else 100) + (b.as_numpy() if b is not None else 10) + c.as_numpy()
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", value.astype(np.float32))]))
        return answers
"""
OPTIONAL_INPUTS_CONFIG = """
backend: "python"
max_batch_size: 4
dynamic_batching { }
input [ { name: "A" data_type: TYPE_FP32 dims: [ 1 ] optional: true },
        { name: "B" data_type: TYPE_FP32 dims: [ 1 ] optional: true },
        { name: "C" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root: Path = tmp_path_factory.mktemp("pb_utils_repo")
    models.write(root / "asks/1/model.py", ASKS)
    models.write(root / "asks/config.pbtxt", ASKS_CONFIG)
    for name, body in MODELS.items():
        policy = "model_transaction_policy { decoupled: true }" if name.startswith("decoupled") else \
            "response_cache { enable: true }" if name.startswith("cached") else ""
        models.write(root / name / "1/model.py", HEAD + body)
        models.write(root / name / "config.pbtxt", CONFIG.format(name=name, extra=policy))
    models.write(root / "imports_beside/1/beside_helper.py", "def times(values):\n    return values * 5\n")
    models.write(root / "imports_beside/1/beside_relative.py", "OFFSET = 1\n")
    models.write(root / "optional_inputs/1/model.py", HEAD + OPTIONAL_INPUTS)
    models.write(root / "optional_inputs/config.pbtxt", OPTIONAL_INPUTS_CONFIG)
    models.write(root / "takes_nothing/1/model.py", HEAD + TAKES_NOTHING)
    models.write(root / "takes_nothing/config.pbtxt", TAKES_NOTHING_CONFIG)
    with serve(root, "--cache-size", "1MiB", grpc=True) as running:
        yield running


_call = triton_models.call_in_out


def _stream(server: RunningServer, model: str, values: list[float], count: int) -> list[object]:
    """The first ``count`` answers (or errors) of one request over a ModelStreamInfer stream."""
    answers: queue.Queue[object] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put(error or result))
    try:
        tensor = grpcclient.InferInput("IN", [2], "FP32")
        tensor.set_data_from_numpy(np.array(values, np.float32))
        client.async_stream_infer(model, [tensor])
        return [answers.get(timeout=20) for _ in range(count)]
    finally:
        client.stop_stream(cancel_requests=True)


@pytest.mark.parametrize("model", ["async_tripled", "sender_answers", "sender_answers_later", "sender_and_return"])
def test_async_execute_and_a_plain_models_response_sender(server: RunningServer, model: str) -> None:
    for values in ([1.0, 2.0], [4.0, -1.0]):  # twice: the async model's lock is reused
        np.testing.assert_array_equal(_call(server, model, values), np.array(values, np.float32) * 3)


@pytest.mark.parametrize("wire", ["http", "grpc"])
def test_a_request_shows_its_own_parameters_id_and_requested_outputs(server: RunningServer, wire: str) -> None:
    """Triton's request.parameters() (the client's, not the server's own such as timeout),
    request_id() and requested_output_names(): the model answers only FACTS, as asked."""
    lib = grpcclient if wire == "grpc" else httpclient
    client = lib.InferenceServerClient(server.grpc_url if wire == "grpc" else server.url)
    tensor = lib.InferInput("IN", [2], "FP32")
    tensor.set_data_from_numpy(np.ones(2, np.float32))
    result = client.infer("asks", [tensor], request_id="7", outputs=[lib.InferRequestedOutput("FACTS")],
                          parameters={"scale": 2.5, "mode": "fast"}, timeout=10_000_000)
    np.testing.assert_array_equal(result.as_numpy("FACTS"), [2, 2.5, 7])
    assert result.as_numpy("OTHER") is None


@pytest.mark.parametrize("wire", ["http", "grpc"])
def test_a_request_shows_its_timeout_and_its_tensors_type_and_dlpack(server: RunningServer, wire: str) -> None:
    """Triton's request.timeout() (the client's, microseconds; 0 when it set none), trace() (no
    context to pass on), Tensor.triton_dtype() (FP32: 11) and __dlpack__; Logger.log at a level."""
    lib = grpcclient if wire == "grpc" else httpclient
    client = lib.InferenceServerClient(server.grpc_url if wire == "grpc" else server.url)
    tensor = lib.InferInput("IN", [2], "FP32")
    tensor.set_data_from_numpy(np.array([1, 2], np.float32))
    timed = client.infer("surface", [tensor], timeout=7_000_000)
    np.testing.assert_array_equal(timed.as_numpy("OUT"), [7_000_000, 11_003])
    np.testing.assert_array_equal(client.infer("surface", [tensor]).as_numpy("OUT"), [0, 11_003])
    assert _response_parameters(timed, wire) == {"answered": True, "count": 2, "by": "surface"}
    deadline = time.monotonic() + 10
    while "surface warns 7000000" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "surface warns 7000000" in server.log()


def test_request_rescheduling_is_refused_saying_why(server: RunningServer) -> None:
    with pytest.raises(InferenceServerException, match="iterative_sequence: true") as raised:
        _call(server, "reschedules", [1, 2])
    assert raised.value.status() == "500"


def _response_parameters(result: Any, wire: str) -> dict[str, Any]:
    """The response's parameters as each tritonclient shows them."""
    if wire == "http":
        parameters: dict[str, Any] = result.get_response()["parameters"]
        return parameters
    kinds = result.get_response().parameters
    return {key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in kinds.items()}


@pytest.mark.parametrize("wire", ["http", "grpc"])
def test_a_bls_call_preferring_gpu_memory_gets_its_outputs_in_cpu_memory(server: RunningServer, wire: str) -> None:
    """As Triton built without GPU support: the preference falls back to CPU memory. The call's
    timeout reaches its target, whose response parameters come back with its response."""
    lib = grpcclient if wire == "grpc" else httpclient
    client = lib.InferenceServerClient(server.grpc_url if wire == "grpc" else server.url)
    tensor = lib.InferInput("IN", [2], "FP32")
    tensor.set_data_from_numpy(np.array([1, 2], np.float32))
    result = client.infer("prefers_gpu", [tensor])
    np.testing.assert_array_equal(result.as_numpy("OUT"), [5_000_000, 11_003])
    assert _response_parameters(result, wire) == {"answered": True, "count": 2, "by": "surface"}


def test_each_streamed_response_carries_its_own_parameters(server: RunningServer) -> None:
    first, second = _stream(server, "decoupled_parameters", [1, 2], 2)
    assert [_response_parameters(answer, "grpc")["part"] for answer in (first, second)] == [1, 2]
    np.testing.assert_array_equal(second.as_numpy("OUT"), [3, 6])  # type: ignore[attr-defined]


def test_a_cached_response_keeps_its_parameters(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url)
    tensor = httpclient.InferInput("IN", [2], "FP32")
    tensor.set_data_from_numpy(np.array([5, 6], np.float32))
    first, again = (client.infer("cached_parameters", [tensor]) for _ in range(2))
    np.testing.assert_array_equal(again.as_numpy("OUT"), [15, 18])
    assert _response_parameters(first, "http") == _response_parameters(again, "http") == {"calls": 1}


def test_custom_metrics_count_for_the_model(server: RunningServer) -> None:
    assert [_call(server, "counted", [0, 0])[0] for _ in range(3)] == [1, 2, 3]


@pytest.mark.parametrize(("value", "status"), [(1, "400"), (2, "404"), (3, "503"), (4, "501"), (5, "400"),
                                               (6, "400"), (8, "400"), (7, "500")])
def test_an_error_responses_code_is_its_http_status(server: RunningServer, value: int, status: str) -> None:
    """As Triton's HTTPCodeFromError (UNSUPPORTED: 501 Not Implemented; UNKNOWN, ALREADY_EXISTS
    and CANCELLED: 400)."""
    with pytest.raises(InferenceServerException) as raised:
        _call(server, "coded_errors", [value, 0])
    message = "uncoded 7" if value == 7 else f"coded {value}"  # no code: INTERNAL, as Triton's default
    assert raised.value.status() == status and message in str(raised.value)


@pytest.mark.parametrize(("value", "code"), [(1, "INVALID_ARGUMENT"), (2, "NOT_FOUND"), (3, "UNAVAILABLE"),
                                             (4, "UNIMPLEMENTED"), (5, "UNKNOWN"), (6, "ALREADY_EXISTS"),
                                             (8, "CANCELLED"), (7, "INTERNAL")])
def test_an_error_responses_code_is_its_grpc_status(server: RunningServer, value: int, code: str) -> None:
    """As Triton's gRPC server maps each code (L0_backend_python lifecycle's test_error_code): the
    message is the model's own."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("IN", [2], "FP32")
    tensor.set_data_from_numpy(np.array([value, 0], np.float32))
    with pytest.raises(InferenceServerException) as raised:
        client.infer("coded_errors", [tensor])
    message = "uncoded 7" if value == 7 else f"coded {value}"
    assert str(raised.value) == f"[StatusCode.{code}] {message}"


@pytest.mark.parametrize("lib", [httpclient, grpcclient])
def test_a_model_may_take_no_inputs(server: RunningServer, lib: Any) -> None:
    client = lib.InferenceServerClient(server.grpc_url if lib is grpcclient else server.url)
    np.testing.assert_array_equal(client.infer("takes_nothing", []).as_numpy("OUT"), [0])


@pytest.mark.parametrize("lib", [httpclient, grpcclient])
def test_an_output_of_another_shape_than_its_dims_reaches_the_client(server: RunningServer, lib: Any) -> None:
    """Triton's core passes a Python model's outputs on as they are (no check against dims)."""
    client = lib.InferenceServerClient(server.grpc_url if lib is grpcclient else server.url)
    tensor = lib.InferInput("IN", [2], "FP32")
    tensor.set_data_from_numpy(np.array([1, 2], np.float32))
    np.testing.assert_array_equal(client.infer("other_shape", [tensor]).as_numpy("OUT"), np.ones((1, 3)))


def test_a_model_may_run_unittest_main(server: RunningServer) -> None:
    np.testing.assert_array_equal(_call(server, "runs_unittest", [0, 0]), [1, 1])


@pytest.mark.parametrize(("sent", "expected"), [("ABC", 7), ("AC", 15), ("BC", 106), ("C", 114)])
def test_an_optional_input_may_be_left_out(server: RunningServer, sent: str, expected: float) -> None:
    client = httpclient.InferenceServerClient(server.url)
    values = {"A": 1, "B": 2, "C": 4}
    tensors = []
    for name in sent:
        tensors.append(httpclient.InferInput(name, [1, 1], "FP32"))
        tensors[-1].set_data_from_numpy(np.array([[values[name]]], np.float32))
    np.testing.assert_array_equal(client.infer("optional_inputs", tensors).as_numpy("OUT"), [[expected]])


def test_a_required_input_is_still_required_and_the_config_says_which_are_optional(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url)
    tensor = httpclient.InferInput("A", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 1), np.float32))
    with pytest.raises(InferenceServerException, match=r"missing required input\(s\) \['C'\]") as raised:
        client.infer("optional_inputs", [tensor])
    assert raised.value.status() == "400"
    inputs = client.get_model_config("optional_inputs")["input"]
    assert [(i["name"], i.get("optional", False)) for i in inputs] == [("A", True), ("B", True), ("C", False)]


def test_a_bls_call_too_large_for_the_channel_fails_alone(server: RunningServer) -> None:
    """Its instance's calls to the server go on (the channel used to close: 'the server is gone')."""
    np.testing.assert_array_equal(_call(server, "calls_too_large", [0, 0]), [1, 9])


def test_a_model_imports_the_files_beside_it(server: RunningServer) -> None:
    np.testing.assert_array_equal(_call(server, "imports_beside", [1, 2]), [6, 11])


def test_initialize_names_the_instance_as_triton_does(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url)
    tensor = httpclient.InferInput("IN", [2], "FP32")
    tensor.set_data_from_numpy(np.array([1, 2], np.float32))
    parameters = _response_parameters(client.infer("named_instance", [tensor]), "http")
    assert parameters == {"model_instance_name": "named_instance_0_0", "model_instance_kind": "CPU"}


def test_a_models_info_log_reaches_the_servers_log_in_its_format(server: RunningServer) -> None:
    """pb_utils.Logger.log_info from an instance process (as Triton shows it at its default level)."""
    _call(server, "named_instance", [1, 2])
    said = "INFO inferd.python_backend: named_instance_0_0 answers"
    deadline = time.monotonic() + 10
    while said not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert said in server.log()


def test_a_model_raising_is_a_500_in_tritons_words(server: RunningServer) -> None:
    with pytest.raises(InferenceServerException) as raised:
        _call(server, "raises", [1, 2])
    assert raised.value.status() == "500"
    assert raised.value.message() == ("Failed to process the request(s) for model 'raises', message: "
                                      "NameError: name 'undefined_name' is not defined")


def test_a_plain_models_response_sender_refuses_in_tritons_words(server: RunningServer) -> None:
    with pytest.raises(InferenceServerException) as raised:
        _call(server, "sender_misused", [1, 0])
    assert raised.value.status() == "500"
    assert ("Unable to send response. Non-decoupled model cannot send complete final before sending a response."
            in raised.value.message())


def test_a_plain_models_second_response_is_refused_and_its_first_answers(server: RunningServer) -> None:
    """As Triton's QA response_sender (two responses before return): the first reaches the client,
    the second send raises in the model, which only the log tells."""
    np.testing.assert_array_equal(_call(server, "sender_misused", [2, 0]), [6, 0])
    says = "execute failed after sending a response: TritonModelException: Unable to send response. " \
           "Non-decoupled model cannot send more than one response."
    deadline = time.monotonic() + 10
    while says not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert says in server.log()


def test_a_model_written_wrong_is_a_500_saying_how(server: RunningServer) -> None:
    says = "must answer with pb_utils.InferenceResponse objects, got dict"
    with pytest.raises(InferenceServerException, match=says) as raised:
        _call(server, "returns_dicts", [1, 2])
    assert raised.value.status() == "500"
    np.testing.assert_array_equal(_call(server, "tripled", [1, 2]), [3, 6])  # the server goes on


def test_a_decoupled_model_returning_responses_fails_its_stream(server: RunningServer) -> None:
    """It would otherwise leave the stream open forever: nothing is ever sent."""
    [answer] = _stream(server, "decoupled_returns", [1, 1], 1)
    assert isinstance(answer, InferenceServerException)
    assert ("Python model 'decoupled_returns_0_0' is using the decoupled mode and the execute function must "
            "return None. (model 'decoupled_returns' is decoupled: answer through request.get_response_sender()"
            in str(answer))


# no config file at all: the model describes itself, as Triton's auto_complete_config lets it
SELF_DESCRIBED = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "X", "data_type": "TYPE_INT32", "dims": [3]})
        config.add_output({"name": "Y", "data_type": "TYPE_INT32", "dims": [3]})
        config.set_max_batch_size(8)
        config.set_dynamic_batching()
        return config

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy() + 1)]) for r in requests]
"""

# its config.pbtxt says X is FP32: the completion may not contradict the file
CONTRADICTED = """
name: "contradicted"
backend: "python"
input [ { name: "X" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "Y" data_type: TYPE_INT32 dims: [ 3 ] } ]
"""


def test_auto_complete_config_describes_a_model_without_a_config(tmp_path: Path) -> None:
    models.write(tmp_path / "self_described/1/model.py", SELF_DESCRIBED)
    models.write(tmp_path / "contradicted/1/model.py", SELF_DESCRIBED)
    models.write(tmp_path / "contradicted/config.pbtxt", CONTRADICTED)
    with serve(tmp_path) as server:
        client = httpclient.InferenceServerClient(server.url)
        config = client.get_model_config("self_described")
        assert config["max_batch_size"] == 8 and "dynamic_batching" in config
        assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [("X", "TYPE_INT32", [3])]
        tensor = httpclient.InferInput("X", [2, 3], "INT32")
        rows = np.arange(6, dtype=np.int32).reshape(2, 3)
        tensor.set_data_from_numpy(rows)
        np.testing.assert_array_equal(client.infer("self_described", [tensor]).as_numpy("Y"), rows + 1)
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert index["contradicted"]["state"] == "UNAVAILABLE"
        assert "input 'X' is data_type TYPE_FP32 in its configuration, TYPE_INT32 in auto_complete_config" \
            in index["contradicted"]["reason"]


def test_a_decoupled_model_that_exits_fails_its_stream_and_the_server_serves_on(server: RunningServer) -> None:
    """Its instances are processes, as any Python model's: in a thread, os._exit ended the server."""
    first, second = _stream(server, "decoupled_exits", [1, 2], 2)
    np.testing.assert_array_equal(first.as_numpy("OUT"), [3, 6])  # type: ignore[attr-defined]
    assert isinstance(second, InferenceServerException) and "exited with code 3" in second.message(), second
    np.testing.assert_array_equal(_call(server, "tripled", [1, 2]), [3, 6])


def test_a_decoupled_models_failure_after_its_final_response_is_logged(server: RunningServer) -> None:
    [answer] = _stream(server, "decoupled_after_final", [1, 2], 1)
    assert not isinstance(answer, Exception)
    np.testing.assert_array_equal(answer.as_numpy("OUT"), [3, 6])  # type: ignore[attr-defined]
    said = "model 'decoupled_after_final': execute failed after its final response: TritonModelException: " \
           "Unable to send response. Response sender has been closed.\n"  # Triton's words exactly: models compare them
    deadline = time.monotonic() + 10
    while said not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert said in server.log()
