"""Triton Python-backend models: ``model.py`` defines ``class TritonPythonModel`` with
``initialize(args)``, ``execute(requests)`` and ``finalize()``, written against
``triton_python_backend_utils`` (inferd's ``triton_pb_utils`` through the import shim).

As in Triton, ``execute`` gets one InferenceRequest per client request: alone, or the requests a
dynamic batcher gathered (``requests_apart``), each with its own inputs (its own dim 0),
parameters, id and requested outputs, and each answered by its own response: one whose error is
set fails that request only. A decoupled model's ``execute`` runs on a thread of its own and
answers through the request's response sender; its responses stream out as they are sent, until
the final flag.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import logging
import queue
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from inferd.config import ServedConfig
from inferd.errors import (
    AlreadyRegistered,
    Cancelled,
    ConfigError,
    InferdError,
    InvalidInput,
    ModelError,
    NotFound,
    Unavailable,
    Unimplemented,
    UnknownError,
    describe,
)
from inferd.modelconfig import model_config_json
from inferd.runtimes import triton_pb_utils as pb_utils
from inferd.runtimes.base import (
    REQUEST_INPUT,
    SEQUENCE_INPUT,
    Answer,
    AnswerSink,
    Arrays,
    LoadContext,
    Runtime,
    call_cancelled,
    conform_outputs,
    requests_cancelled,
    require_specs,
    unpack_request,
    unpack_sequence,
)
from inferd.types import ERROR_OUTPUT, FINAL_OUTPUT, PARAMETERS_OUTPUT, TensorSpec, error_answer

_log = logging.getLogger("inferd.python_backend")
# a decoupled model's ``async def execute`` runs in the background, several of one instance at once
# (python_backend's pb_stub.cc: RunCoroutine(in_background) for a decoupled model, awaited otherwise);
# Triton sets no bound, inferd this one per instance
ASYNC_STREAMS_AT_ONCE = 64
_SENT_AHEAD = 16  # a decoupled request's responses its reader has not taken yet; then send() waits

# a response's TritonError code as the client sees it: Triton's HTTP and gRPC tables (UNKNOWN,
# INVALID_ARG, ALREADY_EXISTS, CANCELLED: 400 with their own gRPC codes; INTERNAL: 500)
_ERRORS: dict[int, type[InferdError]] = {
    pb_utils.TritonError.UNKNOWN: UnknownError, pb_utils.TritonError.INVALID_ARG: InvalidInput,
    pb_utils.TritonError.ALREADY_EXISTS: AlreadyRegistered, pb_utils.TritonError.CANCELLED: Cancelled,
    pb_utils.TritonError.NOT_FOUND: NotFound, pb_utils.TritonError.UNAVAILABLE: Unavailable,
    pb_utils.TritonError.UNSUPPORTED: Unimplemented,  # Triton's 501 / UNIMPLEMENTED
}


class TritonPythonRuntime(Runtime):
    platform = "python"
    takes_sequence = True  # a sequence model's requests show their correlation_id() and flags()
    calls_models = True  # execute may call other models (BLS), waiting on the event loop for them
    takes_request = True  # a request's parameters(), requested_output_names() and request_id() are its own
    requests_apart = True  # a dynamic batch is execute(requests): one request per client's, answered each

    def __init__(self, model: Any, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                 max_batch_size: int, name: str) -> None:
        self._model = model
        self._name = name
        self.instance_name = f"{name}_0_0"  # Triton's, as initialize(args) was told it
        self.inputs = inputs
        self.outputs = outputs
        self.max_batch_size = max_batch_size
        self._loop: asyncio.AbstractEventLoop | None = None  # for an ``async def execute``, started at its first call
        self._loop_lock = threading.Lock()
        self.metrics: pb_utils.MadeMetrics = {}  # the custom metric series this instance holds (MetricFamily)

    def infer(self, inputs: Arrays) -> Arrays:
        [answer] = self._run([inputs])
        if isinstance(answer, Exception):
            raise answer
        return answer

    def infer_requests(self, requests: list[Arrays]) -> list[Answer]:
        return self._run(requests)

    def _run(self, calls: list[Arrays]) -> list[Answer]:
        """``execute`` on one InferenceRequest per call, each with its own facts, sequence (a
        sequence batch holds several sequences' requests) and response sender: per request, its
        outputs or the error its response carries. An answer that breaks the contract as a whole
        (not one response per request) fails them all, as in Triton."""
        requests, wanted, sent = [], [], []
        arrived: list[threading.Event] = []
        failure: ModelError | None = None  # execute raised: its requests that sent no response fail with it
        cancels = _cancels_of(len(calls))
        for inputs, cancelled in zip(calls, cancels, strict=True):
            correlation_id: int | str = 0
            flags = 0
            if SEQUENCE_INPUT in inputs:
                inputs = dict(inputs)
                correlation_id, flags = unpack_sequence(inputs.pop(SEQUENCE_INPUT))
            inputs, facts = self._facts(inputs)
            mine: list[pb_utils.InferenceResponse] = []  # what execute sent through the response sender, if it did
            came = threading.Event()
            requests.append(received_request(inputs, facts, sender=_collecting(mine, came), cancelled=cancelled,
                                             correlation_id=correlation_id, flags=flags))
            wanted.append(facts.wanted)
            sent.append(mine)
            arrived.append(came)
        try:
            responses = self._execute(requests)
        except InferdError:
            raise
        except Exception as exc:  # in the words of Triton's stub (pb_stub.cc), the exception after them
            failure = ModelError(f"Failed to process the request(s) for model '{self._name}', "
                                 f"message: {describe(exc)}")
            if not any(sent):
                raise failure from exc
            # a response sent before the failure is its request's answer (Triton's frontend keeps the first)
            _log.error("model '%s': execute failed after sending a response: %s", self._name, describe(exc))
            responses = [None] * len(requests)
        if responses is None and any(request.sender_taken for request in requests):
            responses = [None] * len(requests)  # each answers through its sender, now or later
        if not isinstance(responses, list | tuple) or len(responses) != len(requests):
            count = len(responses) if isinstance(responses, list | tuple) else type(responses).__name__
            raise RuntimeError(f"TritonPythonModel.execute must return one InferenceResponse per request "
                               f"({len(requests)}), got {count}")
        answers: list[Answer] = []
        for request, response, mine, came, outputs in zip(requests, responses, sent, arrived, wanted, strict=True):
            try:
                if response is None and not mine and request.sender_taken and failure is None:
                    _await_sent(came, request)  # a response the model sends after execute returned, as Triton's
                if mine:  # the sent response is the answer; one returned as well comes too late (Triton ignores it)
                    response = mine[0]
                elif failure is not None:
                    raise failure
                answers.append(self._outputs(response, outputs))
            except Exception as exc:  # this response's error (or its fault) is its request's alone
                answers.append(exc)
        return answers

    def _facts(self, inputs: Arrays) -> tuple[Arrays, RequestFacts]:
        """The request's own parameters, requested outputs, id and timeout (a call without them,
        such as a warm-up sample: every output, no parameters, no timeout)."""
        if REQUEST_INPUT not in inputs:
            return inputs, RequestFacts({}, [spec.name for spec in self.outputs], "", 0)
        inputs = dict(inputs)
        return inputs, RequestFacts(*unpack_request(inputs.pop(REQUEST_INPUT)))

    def _execute(self, requests: list[pb_utils.InferenceRequest]) -> Any:
        """``execute``, awaited on the model's own event loop when it is ``async def`` (as Triton runs it)."""
        with pb_utils.collecting_metrics(self.metrics):
            return self._run_execute(requests)

    def _run_execute(self, requests: list[pb_utils.InferenceRequest]) -> Any:
        return self._awaited(self._model.execute(requests))

    def _awaited(self, result: Any) -> Any:
        """``result``, or what it returns when it is a coroutine, run on the model's own event loop
        (started at its first, shared by every ``async def`` of the model, as Triton's stub runs them)."""
        if inspect.iscoroutine(result):
            with self._loop_lock:
                if self._loop is None:
                    self._loop = asyncio.new_event_loop()
                    threading.Thread(target=self._loop.run_forever, name=f"inferd-{self._name}-asyncio",
                                     daemon=True).start()
            result = asyncio.run_coroutine_threadsafe(result, self._loop).result()
        return result

    @property
    def checks_ready(self) -> bool:
        return callable(getattr(self._model, "is_ready", None))

    def model_ready(self) -> bool:
        """Triton's ``is_ready()`` (python_backend's README, "is_ready"): sync or ``async def``,
        and it must answer a bool."""
        answer = self._awaited(self._model.is_ready())
        if not isinstance(answer, bool):
            raise TypeError(f"is_ready() must return a boolean value, got {type(answer).__name__}")
        return answer

    def _outputs(self, response: Any, wanted: list[str]) -> Arrays:
        """The response's outputs, each asked for one in its declared dtype (one not asked for may
        be left out, as Triton lets a model that reads requested_output_names())."""
        if not isinstance(response, pb_utils.InferenceResponse):
            raise RuntimeError(f"TritonPythonModel.execute must answer with pb_utils.InferenceResponse objects, "
                               f"got {type(response).__name__}")
        error = response.error()
        if error is not None:
            raise _ERRORS.get(error.code(), ModelError)(error.message())  # the model's words, as Triton's
        asked = set(wanted)
        outputs = conform_outputs({t.name(): t.as_numpy() for t in response.output_tensors()},
                                  tuple(spec for spec in self.outputs if spec.name in asked), self._name,
                                  check_shapes=False)  # Triton's core passes a backend's output shapes on
        parameters = response.parameters()
        if parameters != "{}":  # the response's own parameters go to the client with it, as Triton's
            outputs[PARAMETERS_OUTPUT] = np.array([parameters.encode()], dtype=object)
        return outputs

    def infer_stream(self, inputs: Arrays, stop: threading.Event) -> Generator[Arrays, None, None]:
        if not self.decoupled:
            yield self.infer(inputs)
            return
        sent: queue.Queue[tuple[pb_utils.InferenceResponse | None, int] | BaseException] = queue.Queue(_SENT_AHEAD)
        gone = threading.Event()  # the reader closed this stream: nobody takes its responses any more
        cancelled = call_cancelled() or (lambda: False)  # in an instance process: the client's cancel, told at once

        def left() -> bool:
            return stop.is_set() or gone.is_set() or cancelled()

        def deliver(item: tuple[pb_utils.InferenceResponse | None, int] | BaseException) -> None:
            """To the reader, waiting while it is behind; dropped once it left (a model that never
            asks is_cancelled() may go on sending)."""
            while not left():
                try:
                    sent.put(item, timeout=0.05)
                    return
                except queue.Full:
                    continue

        sender = pb_utils.InferenceResponseSender(lambda response, flags: deliver((response, flags)), left)
        inputs, facts = self._facts(inputs)
        wanted = facts.wanted
        request = received_request(inputs, facts, sender=sender, cancelled=left)

        def execute() -> None:
            try:
                returned = self._execute([request])
                if returned is not None:  # an answer nobody would read: the client would wait forever
                    raise TypeError(f"Python model '{self.instance_name}' is using the decoupled mode and the "
                                    f"execute function must return None. (model '{self._name}' is decoupled: answer "
                                    f"through request.get_response_sender(), but it returned "
                                    f"{type(returned).__name__})")
            except BaseException as exc:
                if sender.closed:  # the stream ended at the final flag: only the log can tell the model's author
                    _log.error("model '%s': execute failed after its final response: %s", self._name, describe(exc),
                               exc_info=exc)
                else:
                    deliver(exc)  # handed to the reader, which raises it

        threading.Thread(target=execute, name=f"inferd-{self._name}-execute", daemon=True).start()
        try:
            while not stop.is_set() and not cancelled():
                try:
                    item = sent.get(timeout=0.05)
                except queue.Empty:
                    continue
                if isinstance(item, BaseException):
                    raise RuntimeError(f"TritonPythonModel.execute failed: {type(item).__name__}: {item}")
                response, flags = item
                final = bool(flags & pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                if response is not None:  # sent with the final flag: the last, as Triton flags it
                    yield self._answer(response, wanted, final)
                if final:
                    return
        finally:
            gone.set()

    def _answer(self, response: pb_utils.InferenceResponse, wanted: list[str], final: bool) -> Arrays:
        """One response of a decoupled model as an answer of its stream: its outputs, or its error
        (``ERROR_OUTPUT``: the stream goes on to the final flag, as Triton delivers an error response);
        flagged final when it was sent with the flag."""
        error = response.error()
        if error is None:
            answer = self._outputs(response, wanted)
        else:
            kind = _ERRORS.get(error.code(), ModelError)
            answer = {ERROR_OUTPUT: error_answer(kind.code.value, error.message())}
        return {**answer, FINAL_OUTPUT: np.ones(1, np.bool_)} if final else answer

    def infer_streams(self, requests: list[Arrays], sinks: list[AnswerSink]) -> None:
        """Triton's decoupled ``execute(requests)`` under dynamic batching: one execution of the
        gathered requests, each answering through its own response sender into its own sink, from
        any thread, until its final flag. An error response is one answer of its request's stream,
        which goes on (Triton's); a response that breaks the contract ends its own request only;
        ``execute`` failing (or returning responses) ends every request not ended yet. Returns once
        each request has ended or its reader left."""
        streams = [_StreamedRequest(self, inputs, sink) for inputs, sink in zip(requests, sinks, strict=True)]

        def execute() -> None:
            try:
                returned = self._execute([stream.request for stream in streams])
                if returned is not None:
                    raise TypeError(f"Python model '{self.instance_name}' is using the decoupled mode and the "
                                    f"execute function must return None. (model '{self._name}' is decoupled: answer "
                                    f"through request.get_response_sender(), but it returned "
                                    f"{type(returned).__name__})")
            except BaseException as exc:
                failure = RuntimeError(f"TritonPythonModel.execute failed: {type(exc).__name__}: {exc}")
                told = [stream.end(failure) for stream in streams]
                if not any(told):  # every request had ended: only the log can tell the model's author
                    _log.error("model '%s': execute failed after its final responses: %s", self._name,
                               describe(exc), exc_info=exc)

        threading.Thread(target=execute, name=f"inferd-{self._name}-execute", daemon=True).start()
        for stream in streams:
            while not stream.ended.wait(0.05) and not stream.sink.stopped():
                pass

    def unload(self) -> None:
        if callable(getattr(self._model, "finalize", None)):
            self._model.finalize()
        pb_utils.drop_metrics(self.metrics)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)


class _StreamedRequest:
    """One request of a decoupled batch: its InferenceRequest, whose sender hands each response
    (an error response too) to the request's sink (from whichever thread the model sends), until it
    ends once: at its final flag, or at a response that breaks the contract."""

    def __init__(self, runtime: TritonPythonRuntime, inputs: Arrays, sink: AnswerSink) -> None:
        inputs, facts = runtime._facts(inputs)
        self._wanted = facts.wanted
        self._runtime = runtime
        self.sink = sink
        self.ended = threading.Event()
        self._lock = threading.Lock()
        sender = pb_utils.InferenceResponseSender(self._send, sink.stopped)
        self.request = received_request(inputs, facts, sender=sender, cancelled=sink.stopped)

    def _send(self, response: pb_utils.InferenceResponse | None, flags: int) -> None:
        final = bool(flags & pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        with self._lock:
            if self.ended.is_set():
                return
            if response is not None:
                try:
                    answer = self._runtime._answer(response, self._wanted, final)
                except Exception as exc:  # a response that breaks the contract ends this request only
                    self._end(exc)
                    return
                self.sink.send(answer)
            if final:
                self._end(None)

    def end(self, error: BaseException) -> bool:
        """Fail the request unless it has ended; whether it had not."""
        with self._lock:
            if self.ended.is_set():
                return False
            self._end(error)
            return True

    def _end(self, error: BaseException | None) -> None:
        self.ended.set()
        self.sink.end(error)


def _cancels_of(count: int) -> Sequence[Callable[[], bool] | None]:
    """Each request's own client's cancel, as its request.is_cancelled(): a batch's, one per request
    (requests_cancelled); a call of one request, its call's."""
    cancels = requests_cancelled()
    if cancels is not None and len(cancels) == count:
        return cancels
    return [call_cancelled() if count == 1 else None] * count


def _collecting(sent: list[pb_utils.InferenceResponse], came: threading.Event) -> pb_utils.InferenceResponseSender:
    """A plain (not decoupled) request's response sender: what it sends lands in ``sent``, and
    ``came`` is set (from whichever thread sends, before or after execute returned)."""
    def sink(response: pb_utils.InferenceResponse | None, _: int) -> None:
        sent.extend([response] if response else [])
        came.set()

    return pb_utils.InferenceResponseSender(sink, lambda: False, decoupled=False)


def _await_sent(came: threading.Event, request: pb_utils.InferenceRequest) -> None:
    """Wait for the response a plain model sends after ``execute`` returned None (a thread or task
    of its own), until its client leaves. In an instance process ``response_timeout_s`` bounds the wait."""
    while not came.wait(0.05):
        if request.is_cancelled():
            raise Cancelled("the client went away before the model sent its response")


def _instance_kind(context: LoadContext) -> str:
    """``args["model_instance_kind"]``: MODEL as the configuration says it (the model places itself),
    else where the instance runs."""
    if context.config.instance_group.kind == "model":
        return "MODEL"
    return "GPU" if context.device.startswith("cuda") else "CPU"


def load(model_class: type, context: LoadContext) -> TritonPythonRuntime:
    """Build the model and call ``initialize`` with the arguments Triton passes (strings)."""
    inputs, outputs = require_specs(context, "Triton Python model (model.py)", inputless=True)  # as Triton's
    config = context.config
    served = ServedConfig(name=context.name, platform="", backend="python", config=config)
    args = {
        "model_config": json.dumps(model_config_json(served)),
        "model_instance_kind": _instance_kind(context),
        "model_instance_name": f"{context.name}_0_{context.instance}",  # Triton's <group>_<index>
        "model_instance_device_id": context.device.partition(":")[2] or "0",
        "model_repository": str(context.artifact.parent.parent),
        "model_version": context.version,
        "model_name": context.name,
    }
    model = model_class()
    made: pb_utils.MadeMetrics = {}
    if callable(getattr(model, "initialize", None)):
        try:
            with pb_utils.collecting_metrics(made):
                model.initialize(args)
        except BaseException:
            pb_utils.drop_metrics(made)  # the load failed: what it created goes with it
            raise
    runtime = TritonPythonRuntime(model, inputs, outputs, config.max_batch_size, context.name)
    runtime.instance_name = args["model_instance_name"]
    runtime.metrics = made
    runtime.decoupled = config.decoupled
    if (config.decoupled and inspect.iscoroutinefunction(getattr(model, "execute", None))
            and config.dynamic_batching is None and config.sequence_batching is None):
        runtime.calls_at_once = ASYNC_STREAMS_AT_ONCE  # each request a stream of its own (no batcher)
    return runtime


def auto_complete(model_py: Path, config_json: dict[str, Any], timeout: float = 120.0) -> dict[str, Any] | None:
    """``TritonPythonModel.auto_complete_config`` run on the model's configuration (Triton's JSON):
    the completed configuration, or None when model.py defines none. It runs in a Python process of
    its own, as in Triton: what it imports and builds is gone before the model loads."""
    if "auto_complete_config" not in model_py.read_text(encoding="utf-8", errors="replace"):
        return None  # the import is costly; no model.py that lacks the name defines it
    try:
        done = subprocess.run([sys.executable, "-m", __name__, str(model_py)], input=json.dumps(config_json),
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{model_py}: auto_complete_config did not return within {timeout:g} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise ConfigError(f"{model_py}: auto_complete_config failed: {last}")
    answer: dict[str, Any] | None = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def _complete_here(model_py: str) -> None:
    """The child's side of ``auto_complete``: the completed configuration (or null) as JSON, last line."""
    pb_utils.install_triton_shim()
    sys.path += [str(Path(model_py).parent), str(Path(model_py).parent.parent)]  # its files beside it, as at load
    package = types.ModuleType("inferd_auto_complete")  # the version's folder: relative imports, as at load
    package.__path__ = [str(Path(model_py).parent)]
    sys.modules["inferd_auto_complete"] = package
    spec = importlib.util.spec_from_file_location("inferd_auto_complete.model", model_py)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {model_py}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    complete = getattr(getattr(module, "TritonPythonModel", None), "auto_complete_config", None)
    if complete is None:
        print("null")
        return
    given = pb_utils.ModelConfig(sys.stdin.read())
    returned = complete(given)
    if not isinstance(returned, pb_utils.ModelConfig):
        raise SystemExit(f"auto_complete_config must return the pb_utils.ModelConfig it was given, "
                         f"got {type(returned).__name__}")
    sys.stdout.flush()
    print("\n" + json.dumps(returned.as_dict()))


if __name__ == "__main__":
    _complete_here(sys.argv[1])


class RequestFacts(NamedTuple):
    """What a client's request says beside its inputs, as ``execute`` sees it."""

    parameters: dict[str, Any]
    wanted: list[str]  # the requested outputs
    request_id: str
    timeout: int  # microseconds; 0: none


def received_request(inputs: Arrays, facts: RequestFacts, sender: pb_utils.InferenceResponseSender,
                     cancelled: Callable[[], bool] | None = None, correlation_id: int | str = 0,
                     flags: int = 0) -> pb_utils.InferenceRequest:
    """A request as ``execute`` is given it: no target model (it is not for ``exec``), its sender."""
    tensors = [pb_utils.Tensor(name, array) for name, array in inputs.items()]
    return pb_utils.InferenceRequest(facts.request_id, correlation_id, tensors, facts.wanted, "", flags=flags,
                                     timeout=facts.timeout, parameters=facts.parameters, sender=sender,
                                     cancelled=cancelled)
