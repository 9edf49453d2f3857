"""Triton's Business Logic Scripting and custom metrics: Python models that call other models the
server serves (``pb_utils.InferenceRequest(...).exec()``, ``async_exec``, decoupled targets,
``is_model_ready``) and count their own metrics for /metrics, served by the real server (instance
processes, and one model in the server process) and called with tritonclient."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests import models, triton_models
from tests.conftest import RunningServer, serve

CONFIG = triton_models.IN_OUT_CONFIG

HEAD = """
import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils


def given(request):
    return pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()


def answer(values):
    return pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.asarray(values, np.float32))])


def call(model, values):
    return pb_utils.InferenceRequest(model_name=model, requested_output_names=["OUT"],
                                     inputs=[pb_utils.Tensor("IN", np.asarray(values, np.float32))])


class TritonPythonModel:
"""

MODELS = {
    "tripled": """
    def execute(self, requests):
        return [answer(given(request) * 3) for request in requests]
""",
    # decoupled: IN[0] responses [0, 0], [1, 1], ..., then the final flag on its own
    "counts": """
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            for i in range(int(given(request)[0])):
                sender.send(answer([i, i]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
""",
    # decoupled: as counts, but the last response carries the final flag itself (none comes on its own)
    "counts_final": """
    def execute(self, requests):
        for request in requests:
            sender, n = request.get_response_sender(), int(given(request)[0])
            for i in range(n):
                sender.send(answer([i, i]), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if i == n - 1 else 0)
            if n == 0:
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
""",
    # the model named by a BYTES value, as Triton's own BLS example reads it
    "bls_tripled": """
    def execute(self, requests):
        answers = []
        for request in requests:
            response = call(np.array([b"tripled"], dtype=object)[0], given(request)).exec()
            if response.has_error():
                raise pb_utils.TritonModelException(response.error().message())
            answers.append(pb_utils.InferenceResponse(response.output_tensors()))
        return answers
""",
    # calls from children the model forks (multiprocessing's fork start method), as Triton's bls QA
    # model's test_multiprocess makes them: each child has the calls socket the model had
    "bls_forked": """
    def execute(self, requests):
        import multiprocessing
        x = given(requests[0])
        pool = multiprocessing.get_context("fork").Pool(3)
        try:
            outs = pool.map(tripled_in_a_child, [x + k for k in range(3)])
        finally:  # the children end, also when a call failed (forked from the server, they would outlive it)
            pool.close()
            pool.join()
        return [answer(sum(outs))]


def tripled_in_a_child(values):
    response = call("tripled", values).exec()
    if response.has_error():
        raise pb_utils.TritonModelException(response.error().message())
    return pb_utils.get_output_tensor_by_name(response, "OUT").as_numpy()
""",
    # the model's own processes end when it terminates them: a Pool left by its with block (terminate)
    # and a helper it started; answers [the pool's answer, the helper's return code]
    "terminates_children": """
    def execute(self, requests):
        import multiprocessing
        import subprocess
        with multiprocessing.get_context("fork").Pool(2) as pool:
            pooled = sum(pool.map(abs, [-1, -2]))
        helper = subprocess.Popen(["sleep", "60"])
        helper.terminate()
        return [answer([pooled, helper.wait(timeout=10)])]
""",
    # three calls in flight at once, awaited together
    "bls_async": """
    async def execute(self, requests):
        x = given(requests[0])
        responses = await asyncio.gather(*(call("tripled", x + k).async_exec() for k in range(3)))
        outs = [pb_utils.get_output_tensor_by_name(r, "OUT").as_numpy() for r in responses]
        return [answer(sum(outs))]
""",
    # errors come back in the response, with Triton's codes; readiness is a question, not an error
    "bls_errors": """
    def execute(self, requests):
        missing = call("missing", [0, 0]).exec()
        misshapen = call("tripled", [1, 2, 3]).exec()
        assert missing.has_error() and misshapen.has_error()
        assert "missing" in missing.error().message(), missing.error().message()
        ready = (pb_utils.is_model_ready("tripled"), pb_utils.is_model_ready("missing"))
        return [answer([missing.error().code() * 10 + misshapen.error().code(), ready[0] * 10 + ready[1]])]
""",
    # no output names asked for: every output comes, as Triton's core answers such a request
    "bls_all_outputs": """
    def execute(self, requests):
        response = pb_utils.InferenceRequest(model_name="tripled", requested_output_names=[],
                                             inputs=[pb_utils.Tensor("IN", given(requests[0]))]).exec()
        if response.has_error():
            raise pb_utils.TritonModelException(response.error().message())
        return [answer(pb_utils.get_output_tensor_by_name(response, "OUT").as_numpy() + len(response.output_tensors()))]
""",
    # a call that outlives its timeout (microseconds) fails as Triton's: UNAVAILABLE, "Request timeout expired"
    "bls_timeout": """
    def execute(self, requests):
        response = pb_utils.InferenceRequest(model_name="slow", requested_output_names=["OUT"], timeout=100_000,
                                             inputs=[pb_utils.Tensor("IN", given(requests[0]))]).exec()
        assert response.has_error()
        return [answer([response.error().code(), 0])]
""",
    "slow": """
    def execute(self, requests):
        import time
        time.sleep(1)
        return [answer(given(request)) for request in requests]
""",
    # a decoupled target's responses, as an iterator whose last response is the final flag's, empty
    "bls_stream": """
    def execute(self, requests):
        total, seen, empty = 0.0, 0, 0
        for response in call("counts", given(requests[0])).exec(decoupled=True):
            if response.has_error():
                raise pb_utils.TritonModelException(response.error().message())
            seen += 1
            if response.output_tensors():
                total += float(pb_utils.get_output_tensor_by_name(response, "OUT").as_numpy()[0])
            else:
                empty += 1
        return [answer([total, seen * 10 + empty])]
""",
    # TARGET called COUNT times at once, the answers added up (TARGET itself may call others)
    "fan_out": """
    async def execute(self, requests):
        x = given(requests[0])
        responses = await asyncio.gather(*(call("TARGET", x).async_exec() for _ in range(COUNT)))
        failed = [r.error().message() for r in responses if r.has_error()]
        if failed:
            raise pb_utils.TritonModelException(failed[0])
        return [answer(sum(pb_utils.get_output_tensor_by_name(r, "OUT").as_numpy() for r in responses))]
""",
    # decoupled, in the server process: a response every 0.1 s until its caller cancels (30 s at most)
    "ticks": """
    def execute(self, requests):
        import time
        sender, until = requests[0].get_response_sender(), time.monotonic() + 30
        while not sender.is_cancelled() and time.monotonic() < until:
            sender.send(answer([1, 1]))
            time.sleep(0.1)
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
""",
    # as many streams open as the server runs calls at once from one instance, one call more
    # waiting behind them, then the streams cancelled: the waiting call runs once they end
    "cancel_then_call": """
    async def execute(self, requests):
        streams = [call("ticks", [0, 0]).exec(decoupled=True) for _ in range(64)]
        for stream in streams:
            next(stream)  # each stream runs at the server
        later = asyncio.ensure_future(call("tripled", given(requests[0])).async_exec())
        await asyncio.sleep(0.5)  # the call is asked for before the streams are cancelled
        for stream in streams:
            stream.cancel()
        response = await later
        if response.has_error():
            raise pb_utils.TritonModelException(response.error().message())
        return [answer(pb_utils.get_output_tensor_by_name(response, "OUT").as_numpy())]
""",
    # reads one of a generator model's answers, waits, and says how many the model made meanwhile
    "slow_reader": """
    def execute(self, requests):
        import time
        stream = call("numbers", [0, 0]).exec(decoupled=True)
        next(stream)
        time.sleep(1)
        with open(PROGRESS) as made:
            ahead = float(made.read())
        stream.cancel()
        return [answer([ahead, 0])]
""",
    # decoupled, in the server process: one response, then nothing until cancelled (10 s at most);
    # how long it waited for the cancel in PROGRESS + ".silent"
    "silent": """
    def execute(self, requests):
        import os, time
        sender, start = requests[0].get_response_sender(), time.monotonic()
        sender.send(answer([1, 1]))
        while not sender.is_cancelled() and time.monotonic() < start + 10:
            time.sleep(0.05)
        with open(PROGRESS + ".new", "w") as waited:
            waited.write(str(time.monotonic() - start))
        os.replace(PROGRESS + ".new", PROGRESS + ".silent")
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
""",
    # reads one response of a silent target, cancels, and says how long the target waited for it
    "silent_reader": """
    def execute(self, requests):
        import os, time
        if os.path.exists(PROGRESS + ".silent"):
            os.remove(PROGRESS + ".silent")
        stream = call("silent", [0, 0]).exec(decoupled=True)
        next(stream)
        stream.cancel()
        until = time.monotonic() + 15
        while not os.path.exists(PROGRESS + ".silent") and time.monotonic() < until:
            time.sleep(0.05)
        with open(PROGRESS + ".silent") as waited:
            return [answer([float(waited.read()), 0])]
""",
    # a target that is not decoupled answers once, that response the last (Triton's final flag on it)
    "bls_stream_once": """
    def execute(self, requests):
        responses = list(call("tripled", given(requests[0])).exec(decoupled=True))
        last = pb_utils.get_output_tensor_by_name(responses[-1], "OUT").as_numpy()
        return [answer(last + 10 * len(responses))]
""",
    # decoupled: writes when it ran to PROGRESS + ".stamp", then one response and the final flag alone
    "stamp": """
    def execute(self, requests):
        import os, time
        with open(PROGRESS + ".stamp.new", "w") as stamp:
            stamp.write(repr(time.monotonic()))
        os.replace(PROGRESS + ".stamp.new", PROGRESS + ".stamp")
        sender = requests[0].get_response_sender()
        sender.send(answer([7, 7]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
""",
    # a decoupled call not read for 0.5 s: how long before exec returned its target ran (Triton's
    # exec sends at once and returns with the first response), and how many responses came
    "eager": """
    def execute(self, requests):
        import os, time
        if os.path.exists(PROGRESS + ".stamp"):
            os.remove(PROGRESS + ".stamp")
        stream = call("stamp", [0, 0]).exec(decoupled=True)
        returned = time.monotonic()
        time.sleep(0.5)
        ran = time.monotonic()  # not run yet: counts as now
        if os.path.exists(PROGRESS + ".stamp"):
            with open(PROGRESS + ".stamp") as stamp:
                ran = float(stamp.read())
        return [answer([returned - ran, len(list(stream))])]
""",
    "eager_async": """
    async def execute(self, requests):
        import os, time
        if os.path.exists(PROGRESS + ".stamp"):
            os.remove(PROGRESS + ".stamp")
        stream = await call("stamp", [0, 0]).async_exec(decoupled=True)
        returned = time.monotonic()
        await asyncio.sleep(0.5)
        ran = time.monotonic()  # not run yet: counts as now
        if os.path.exists(PROGRESS + ".stamp"):
            with open(PROGRESS + ".stamp") as stamp:
                ran = float(stamp.read())
        return [answer([returned - ran, len(list(stream))])]
""",
    # Triton's InferenceRequest takes no priority: a model passing one fails as it would there
    "bls_priority": """
    def execute(self, requests):
        pb_utils.InferenceRequest(model_name="tripled", requested_output_names=["OUT"], priority=1,
                                  inputs=[pb_utils.Tensor("IN", given(requests[0]))]).exec()
        return [answer([0, 0])]
""",
    # the model loading API: load a model, call it, unload it (needs --model-control explicit)
    "loader": """
    def execute(self, requests):
        before = pb_utils.is_model_ready("tripled")
        pb_utils.load_model("tripled", config='{"max_batch_size": 0}')
        response = call("tripled", given(requests[0])).exec()
        if response.has_error():
            raise pb_utils.TritonModelException(response.error().message())
        out = pb_utils.get_output_tensor_by_name(response, "OUT").as_numpy()
        pb_utils.unload_model("tripled")
        return [answer(out + 1000 * before + 100 * pb_utils.is_model_ready("tripled"))]
""",
    # the model loading API with override files: a model the repository lacks, made from its
    # model.py and config (a path leaving the folder refused first), called, unloaded
    "file_loader": """
    def execute(self, requests):
        import json

        body = (b"import triton_python_backend_utils as pb_utils\\n"
                b"class TritonPythonModel:\\n"
                b"    def execute(self, requests):\\n"
                b"        return [pb_utils.InferenceResponse([pb_utils.Tensor('OUT', "
                b"pb_utils.get_input_tensor_by_name(r, 'IN').as_numpy() * 4)]) for r in requests]\\n")
        config = json.dumps({"name": "made_here", "backend": "python", "max_batch_size": 0,
                             "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [2]}],
                             "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [2]}]})
        try:
            pb_utils.load_model("made_here", config=config, files={"file:../1/model.py": body})
            refused = False
        except pb_utils.TritonModelException as exc:
            refused = "inside the model folder" in str(exc)
        pb_utils.load_model("made_here", config=config, files={"file:1/model.py": body})
        response = call("made_here", given(requests[0])).exec()
        if response.has_error():
            raise pb_utils.TritonModelException(response.error().message())
        out = pb_utils.get_output_tensor_by_name(response, "OUT").as_numpy()
        pb_utils.unload_model("made_here")
        return [answer(out + 1000 * refused + 100 * pb_utils.is_model_ready("made_here"))]
""",
    # Triton's custom metrics, two instances adding up to one series per labels
    "metered": """
    def initialize(self, args):
        labels = {"model": args["model_name"], "version": args["model_version"]}
        self.calls = pb_utils.MetricFamily("bls_test_calls", "calls so far",
                                           pb_utils.MetricFamily.COUNTER).Metric(labels=labels)
        self.level = pb_utils.MetricFamily("bls_test_level", "values added up",
                                           pb_utils.MetricFamily.GAUGE).Metric(labels=labels)
        self.sizes = pb_utils.MetricFamily("bls_test_sizes", "values seen",
                                           pb_utils.MetricFamily.HISTOGRAM).Metric(labels=labels, buckets=[1, 10])

    def execute(self, requests):
        for request in requests:
            value = float(given(request)[0])
            self.calls.increment(1)
            self.level.increment(value)  # (set's last value would depend on which instance wrote last)
            self.sizes.observe(value)
        return [answer(given(request)) for request in requests]
""",
}

# the same BLS model, run in the server process (config.toml, kind "cpu"): its calls go through the
# server's own event loop, from the instance's thread
IN_PROCESS = """
backend = "python"

[instance_group]
kind = "cpu"
count = {count}
{extra}
[[input]]
name = "IN"
datatype = "FP32"
shape = [2]

[[output]]
name = "OUT"
datatype = "FP32"
shape = [2]
"""


DECOUPLED = "[model_transaction_policy]\ndecoupled = true\n"

# a generator model (inferd's own Python model): 5000 answers as fast as they are read, how many
# made so far in PROGRESS
NUMBERS = """
import os

import numpy as np

PROGRESS = {progress!r}


class Model:
    def infer(self, inputs):
        for i in range(5000):
            with open(PROGRESS + ".new", "w") as made:
                made.write(str(i + 1))
            os.replace(PROGRESS + ".new", PROGRESS)  # whole, for a reader at any time
            yield {{"OUT": np.array([i, i], np.float32)}}
"""

# the server-process models: name, body, instances, extra configuration
_IN_PROCESS = (("bls_in_process", MODELS["bls_tripled"], 1, ""), ("metered_in_process", MODELS["metered"], 1, ""),
               ("bls_async_in_process", MODELS["bls_async"], 1, ""),
               ("fan_out_in_process", MODELS["fan_out"].replace("TARGET", "bls_async_in_process")
                .replace("COUNT", "40"), 1, ""),
               ("ticks", MODELS["ticks"], 64, DECOUPLED), ("slow_reader_in_process", MODELS["slow_reader"], 1, ""),
               ("silent", MODELS["silent"], 2, DECOUPLED),
               ("silent_reader_in_process", MODELS["silent_reader"], 1, ""),
               ("eager_in_process", MODELS["eager"], 1, ""), ("forked_in_process", MODELS["bls_forked"], 1, ""))


def _repository(root: Path) -> Path:
    bodies = {**MODELS, "fan_out": MODELS["fan_out"].replace("TARGET", "tripled").replace("COUNT", "100"),
              "bls_stream_final": MODELS["bls_stream"].replace('"counts"', '"counts_final"')}
    del bodies["ticks"], bodies["silent"]
    progress = root / "numbers-progress"
    head = HEAD.replace("class TritonPythonModel", f"PROGRESS = {str(progress)!r}\n\n\nclass TritonPythonModel")
    for name, body in bodies.items():
        extra = {"counts": "model_transaction_policy { decoupled: true }",
                 "stamp": "model_transaction_policy { decoupled: true }",
                 "counts_final": "model_transaction_policy { decoupled: true }",
                 "metered": "instance_group [ { count: 2 kind: KIND_CPU } ]"}.get(name, "")
        models.write(root / name / "1/model.py", head + body)
        models.write(root / name / "config.pbtxt", CONFIG.format(name=name, extra=extra))
    for name, body, count, extra in _IN_PROCESS:
        models.write(root / name / "1/model.py", head + body)
        models.write(root / name / "config.toml", IN_PROCESS.format(count=count, extra=extra))
    models.write(root / "numbers/1/model.py", NUMBERS.format(progress=str(progress)))
    models.write(root / "numbers/config.toml", IN_PROCESS.format(count=1, extra=DECOUPLED))
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _repository(tmp_path_factory.mktemp("bls_repo"))


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    with serve(repo) as running:
        yield running


_call = triton_models.call_in_out


def _call_within(server: RunningServer, model: str, values: list[float], seconds: float = 20) -> np.ndarray:
    """``_call``, failing after ``seconds`` instead of waiting for a server that hangs."""
    client = httpclient.InferenceServerClient(server.url, connection_timeout=seconds, network_timeout=seconds)
    tensor = httpclient.InferInput("IN", [2], "FP32")
    tensor.set_data_from_numpy(np.array(values, np.float32))
    return client.infer(model, [tensor]).as_numpy("OUT")


def _successes(server: RunningServer, model: str) -> int:
    stats = httpclient.InferenceServerClient(server.url).get_inference_statistics(model)
    return int(stats["model_stats"][0]["inference_stats"]["success"]["count"])


@pytest.mark.parametrize("model", ["bls_tripled", "bls_in_process"])
def test_a_bls_call_answers_as_the_target_does_and_counts_as_its_request(server: RunningServer, model: str) -> None:
    before = _successes(server, "tripled")
    for values in ([1.0, 2.0], [-4.0, 0.5]):
        np.testing.assert_array_equal(_call(server, model, values), np.array(values, np.float32) * 3)
    assert _successes(server, "tripled") == before + 2


def test_async_exec_calls_run_together(server: RunningServer) -> None:
    # tripled(x) + tripled(x + 1) + tripled(x + 2) = 9x + 9
    np.testing.assert_array_equal(_call(server, "bls_async", [1.0, -2.0]), [18.0, -9.0])


def test_calls_from_forked_children_answer_as_from_the_model(server: RunningServer) -> None:
    # tripled(x) + tripled(x + 1) + tripled(x + 2) = 9x + 9, each from a child of the instance process
    for values in ([1.0, -2.0], [0.0, 4.0]):  # twice: the model forks again, its first children gone
        np.testing.assert_array_equal(_call_within(server, "bls_forked", values), 9 * np.array(values) + 9)


def test_calls_from_children_forked_from_the_server_process_fail_at_once_saying_why(server: RunningServer) -> None:
    with pytest.raises(InferenceServerException) as caught:
        _call_within(server, "forked_in_process", [1.0, -2.0])
    assert "a process forked from the server process cannot call other models" in caught.value.message()
    assert 'instance_group kind "process"' in caught.value.message()


def test_the_models_own_processes_end_when_it_terminates_them(server: RunningServer) -> None:
    np.testing.assert_array_equal(_call_within(server, "terminates_children", [0.0, 0.0]), [3.0, -15.0])


def test_a_bls_calls_errors_come_back_in_its_response(server: RunningServer) -> None:
    # NOT_FOUND (2) for the unknown model, INVALID_ARG (3) for the wrong shape; tripled ready, missing not
    np.testing.assert_array_equal(_call(server, "bls_errors", [0, 0]), [23.0, 10.0])
    np.testing.assert_array_equal(_call(server, "tripled", [1, 1]), [3.0, 3.0])  # the server goes on


def test_a_bls_call_naming_no_outputs_gets_them_all(server: RunningServer) -> None:
    np.testing.assert_array_equal(_call(server, "bls_all_outputs", [1.0, 2.0]), [4.0, 7.0])  # x * 3 + 1 output


def test_a_bls_call_past_its_timeout_is_unavailable_as_in_triton(server: RunningServer) -> None:
    np.testing.assert_array_equal(_call(server, "bls_timeout", [1, 1]), [4.0, 0.0])  # TritonError.UNAVAILABLE


@pytest.mark.parametrize(("count", "expected"), [(3, [3.0, 41.0]), (0, [0.0, 11.0])])
def test_a_decoupled_targets_responses_stream_to_the_caller(server: RunningServer, count: int,
                                                            expected: list[float]) -> None:
    # 0 + 1 + 2 from three responses, then the final flag's empty one: 4 seen, 1 empty
    np.testing.assert_array_equal(_call(server, "bls_stream", [count, 0]), expected)


@pytest.mark.parametrize("model", ["eager", "eager_async", "eager_in_process"])
def test_a_decoupled_call_is_sent_at_once_as_in_triton(server: RunningServer, model: str) -> None:
    """exec(decoupled=True) sends the request and returns once its first response came (python_backend's
    InferPayload), not when the iterator is first read (here 0.5 s later); no response is lost."""
    ran_before_return, responses = _call_within(server, model, [0.0, 0.0])
    assert ran_before_return > 0, f"the target ran {-ran_before_return:.2f} s after exec returned (or not yet)"
    assert responses == 2  # its one response, then the final flag's empty one


def test_a_bls_request_with_a_priority_fails_as_in_triton(server: RunningServer) -> None:
    with pytest.raises(InferenceServerException, match="priority"):
        _call(server, "bls_priority", [1.0, 2.0])


@pytest.mark.parametrize(("count", "expected"), [(3, [3.0, 30.0]), (0, [0.0, 11.0])])
def test_a_last_response_sent_with_the_final_flag_ends_the_stream_as_in_triton(
        server: RunningServer, count: int, expected: list[float]) -> None:
    # three responses, the last one final: no empty one after it (Triton's response iterator stops
    # at the response flagged final); the final flag sent alone is one empty response
    np.testing.assert_array_equal(_call_within(server, "bls_stream_final", [count, 0]), expected)


@pytest.mark.parametrize("model", ["fan_out_in_process", "fan_out"])
def test_many_async_exec_calls_to_models_that_call_others_all_answer(server: RunningServer, model: str) -> None:
    """In the server process, 40 calls at once to a model that itself awaits calls (a shared pool
    of waiting threads once deadlocked here); from an instance process, 100 at once to tripled,
    more than the server runs at once for one instance."""
    x = np.array([1.0, 2.0], np.float32)
    expected = 40 * (9 * x + 9) if model == "fan_out_in_process" else 100 * 3 * x
    np.testing.assert_array_equal(_call_within(server, model, x.tolist()), expected)
    assert "calls at once; refused" not in server.log()  # the instance held those past its share


def test_a_call_waiting_behind_a_full_table_runs_once_cancelled_streams_end(server: RunningServer) -> None:
    # the cancels reach the server while the call waits, so the streams end long before 30 s
    np.testing.assert_array_equal(_call_within(server, "cancel_then_call", [1.0, 2.0]), [3.0, 6.0])
    assert "calls at once; refused" not in server.log()


@pytest.mark.parametrize("model", ["slow_reader", "slow_reader_in_process"])
def test_a_decoupled_target_waits_for_a_slow_calling_model(server: RunningServer, model: str) -> None:
    """The target runs a few dozen answers ahead of the model reading them at most (16 at each
    hand-over: the target's queue, the server's, an instance process's socket), wherever that
    model runs; a target that never waited made all 5000."""
    ahead = _call_within(server, model, [0.0, 0.0])[0]
    assert 1 <= ahead <= 60, f"the target made {ahead} answers while its caller read one"


@pytest.mark.parametrize("model", ["silent_reader", "silent_reader_in_process"])
def test_a_cancelled_stream_stops_its_target_while_it_is_silent(server: RunningServer, model: str) -> None:
    """The cancel reaches the target at once, not with its next answer (it would send none for 10 s)."""
    waited = _call_within(server, model, [0.0, 0.0])[0]
    assert waited < 3, f"the target waited {waited:.1f} s for its caller's cancel"


def _metrics_once(server: RunningServer, line: str) -> str:
    """/metrics once it shows ``line``: a model's changes reach the server beside its answers, not
    with them, so a scrape right after an answer may not show that call's changes yet."""
    deadline = time.monotonic() + 10
    while line not in (text := requests.get(f"http://{server.url}/metrics", timeout=10).text).splitlines():
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return text


def test_custom_metrics_are_on_metrics_as_triton_shows_them(server: RunningServer) -> None:
    for value in (0.5, 5.0, 50.0, 5.0):
        _call(server, "metered", [value, 0])
    labels = 'model="metered",version="1"'
    text = _metrics_once(server, f"bls_test_sizes_count{{{labels}}} 4")
    for line in ("# HELP bls_test_calls calls so far", "# TYPE bls_test_calls counter",
                 f"bls_test_calls{{{labels}}} 4",  # both instances' calls, one series
                 "# TYPE bls_test_level gauge", f"bls_test_level{{{labels}}} 60.5",
                 "# TYPE bls_test_sizes histogram", f'bls_test_sizes_bucket{{{labels},le="1"}} 1',
                 f'bls_test_sizes_bucket{{{labels},le="10"}} 3', f'bls_test_sizes_bucket{{{labels},le="+Inf"}} 4',
                 f"bls_test_sizes_sum{{{labels}}} 60.5", f"bls_test_sizes_count{{{labels}}} 4"):
        assert line in text.splitlines(), f"{line!r} not in /metrics"


def test_a_targets_single_response_is_its_last_over_a_decoupled_call(server: RunningServer) -> None:
    np.testing.assert_array_equal(_call(server, "bls_stream_once", [1.0, 2.0]), [13.0, 16.0])  # one response


def test_a_model_loads_and_unloads_others_under_explicit_model_control(repo: Path) -> None:
    with serve(repo, "--model-control", "explicit", "--load-model", "loader") as server:
        # tripled was not loaded (1000 * False), is loaded and called (x * 3), then unloaded (100 * False)
        np.testing.assert_array_equal(_call(server, "loader", [1.0, 2.0]), [3.0, 6.0])
        index = {m["name"]: m for m in httpclient.InferenceServerClient(server.url).get_model_repository_index()}
        assert index["tripled"]["state"] == "UNAVAILABLE"


def test_a_model_loads_another_from_override_files_under_explicit_model_control(repo: Path) -> None:
    """Triton's load_model(name, config, files={"file:1/model.py": ...}): the files are the folder
    it loads from; a path that leaves the folder is refused (1000), the model unloads after (not 100)."""
    with serve(repo, "--model-control", "explicit", "--load-model", "file_loader") as server:
        np.testing.assert_array_equal(_call(server, "file_loader", [1.0, 2.0]), [1004.0, 1008.0])


def _metric_lines(server: RunningServer, model: str) -> list[str]:
    text = requests.get(f"http://{server.url}/metrics", timeout=10).text
    return [line for line in text.splitlines() if line.startswith("bls_test_calls{") and f'model="{model}"' in line]


@pytest.mark.parametrize("model", ["metered", "metered_in_process"])
def test_a_models_custom_metrics_go_when_it_unloads_as_in_triton(repo: Path, model: str) -> None:
    with serve(repo, "--model-control", "explicit", "--load-model", model) as server:
        client = httpclient.InferenceServerClient(server.url)
        for _ in range(2):
            _call(server, model, [1.0, 0.0])
        _metrics_once(server, f'bls_test_calls{{model="{model}",version="1"}} 2')
        assert _metric_lines(server, model) == [f'bls_test_calls{{model="{model}",version="1"}} 2']
        client.unload_model(model)
        deadline = time.monotonic() + 20  # an instance process's series go when it has exited
        while _metric_lines(server, model) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _metric_lines(server, model) == []
        client.load_model(model)  # loaded again, it counts from 0 (it went on from 2)
        _call(server, model, [1.0, 0.0])
        _metrics_once(server, f'bls_test_calls{{model="{model}",version="1"}} 1')
        assert _metric_lines(server, model) == [f'bls_test_calls{{model="{model}",version="1"}} 1']


def test_without_explicit_model_control_a_models_load_fails_its_request(server: RunningServer) -> None:
    with pytest.raises(InferenceServerException, match="needs model control, which is off") as raised:
        _call(server, "loader", [1.0, 2.0])
    assert raised.value.status() == "500"
