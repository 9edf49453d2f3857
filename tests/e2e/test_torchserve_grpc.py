"""TorchServe's gRPC inference API against a real `inferd torchserve`: StreamPredictions2 (stateful
sequences on one bidirectional stream) and the status each failed prediction gets, as TorchServe's
InferenceImpl and GRPCJob give them (pytorch/serve 62c4d6a1, GRPCUtils.getGRPCStatusCode)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests

from inferd.protocols._proto import torchserve_pb2 as ts
from tests import ts_archives
from tests.conftest import serve
from tests.e2e.test_torchserve_cli import INFERENCE, _grpc_call, torchserve

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
WORKER_ERROR = "org.pytorch.serve.http.InternalServerException"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`inferd torchserve` serving the running-sum and the failing handler, one worker each;
    ``sequences``: the running sum as a stateful model (sequenceBatching, two workers); ``idle``:
    the failing handler registered with no workers."""
    root = tmp_path_factory.mktemp("tsgrpc")
    store = ts_archives.build_grpc_store(root)
    with torchserve(root, {"model_store": str(store), "load_models": "stateful.mar,failing.mar,sequences.mar",
                           "default_workers_per_model": "1", "disable_token_authorization": "true",
                           "enable_model_api": "true"}) as urls:
        registered = requests.post(f"{urls['management']}/models?url=failing.mar&model_name=idle&initial_workers=0",
                                   timeout=60)  # gRPC's initial_workers=0 is proto3's unset: the default count
        assert registered.status_code == 200, registered.text
        batching = requests.post(f"{urls['management']}/models?url=stateful.mar&model_name=batching&batch_size=4"
                                 "&max_batch_delay=200&initial_workers=1&synchronous=true", timeout=60)
        assert batching.status_code == 200, batching.text
        yield urls


def _stream2(address: str, requests_: list[ts.PredictionsRequest]) -> list[ts.PredictionResponse]:
    """One StreamPredictions2 call: every request sent, then the client's half-close; its answers."""
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_stream(INFERENCE + "StreamPredictions2",
                                     request_serializer=lambda m: m.SerializeToString(),
                                     response_deserializer=ts.PredictionResponse.FromString)
        return list(call(iter(requests_), timeout=120))


def _add(sequence_id: str | None, value: int, **flags: bytes) -> ts.PredictionsRequest:
    request = ts.PredictionsRequest(model_name="stateful", input={"data": str(value).encode(), **flags})
    if sequence_id is not None:
        request.sequence_id = sequence_id
    return request


def _status(response: ts.PredictionResponse) -> tuple[grpc.StatusCode, str, str]:
    """The error a StreamPredictions2 answer carries: (code, message, its ErrorInfo's reason)."""
    assert response.HasField("status") and not response.prediction, response
    [detail] = response.status.details
    assert detail.type_url == ERROR_INFO
    info = ts.ErrorInfo.FromString(detail.value)
    code = next(c for c in grpc.StatusCode if c.value[0] == response.status.code)
    return code, response.status.message, info.reason


def test_stream_predictions2_runs_each_sequence_in_order_on_its_state(server: dict[str, str]) -> None:
    """Each request is answered on the stream in the order sent; a sequence's requests find the state
    the one before left; a request without a sequence id starts one (``ts-seq-<uuid>``) when its
    input says ``ts_request_sequence_start``, else it is refused on the stream, which goes on; the
    client's half-close ends the stream with OK."""
    answers = _stream2(server["grpc_inference"], [
        _add("a", 1), _add("a", 2), _add("b", 10), _add("a", 3),
        _add("a", 4, ts_request_sequence_end=b"true"),
        _add(None, 5, ts_request_sequence_start=b"true"),
        _add(None, 6),
        ts.PredictionsRequest(model_name="nope", sequence_id="a", input={"data": b"1"}),
        _add("a", 100)])
    assert len(answers) == 9
    seen = [json.loads(answer.prediction) for answer in answers[:6]]
    assert [(s["sequence_id"], s["sum"]) for s in seen[:5]] == [("a", 1), ("a", 3), ("b", 10), ("a", 6), ("a", 10)]
    assert [s["end"] for s in seen[:5]] == [None, None, None, None, "true"]
    assert seen[5]["sequence_id"].startswith("ts-seq-") and seen[5]["sum"] == 5 and seen[5]["start"] == "true"
    assert not any(answer.HasField("sequence_id") for answer in answers)  # TorchServe never sets it
    assert _status(answers[6]) == (grpc.StatusCode.INTERNAL, "Parameter sequenceId is required.",
                                   "BadRequestException.()")
    assert _status(answers[7]) == (grpc.StatusCode.INTERNAL, "Model not found: nope",
                                   "org.pytorch.serve.archive.model.ModelNotFoundException")
    assert json.loads(answers[8].prediction)["sum"] == 100  # "a" ended: a new sequence of that id


def test_a_streams_requests_run_one_at_a_time(server: dict[str, str]) -> None:
    """Sent at once to a model that batches up to 4 within 200 ms, each still runs alone, after the
    one before it was answered (TorchServe's sequence batching: one request of a sequence at a time)."""
    sent = [_add("s", value) for value in (1, 2, 3)] + [_add("t", 10)]
    for request in sent:
        request.model_name = "batching"
    answers = [json.loads(answer.prediction) for answer in _stream2(server["grpc_inference"], sent)]
    assert [(a["sum"], a["batch"]) for a in answers] == [(1, 1), (3, 1), (6, 1), (10, 1)]


def test_a_stateful_models_sequences_each_keep_one_worker(server: dict[str, str]) -> None:
    """sequenceBatching (TorchServe's stateful example's model-config.yaml, two workers):
    each sequence's requests run in order on the worker that holds its state; two sequences
    interleaved on one stream each find their own sums."""
    sent = [_add("x", 1), _add("x", 2), _add("y", 10), _add("x", 3), _add("y", 20), _add("y", 30),
            _add("x", 4, ts_request_sequence_end=b"true"), _add("y", 40, ts_request_sequence_end=b"true")]
    for request in sent:
        request.model_name = "sequences"
    answers = [json.loads(answer.prediction) for answer in _stream2(server["grpc_inference"], sent)]
    by_sequence = {key: [a for a in answers if a["sequence_id"] == key] for key in ("x", "y")}
    assert [a["sum"] for a in by_sequence["x"]] == [1, 3, 6, 10]
    assert [a["sum"] for a in by_sequence["y"]] == [10, 30, 60, 100]
    assert all(len({a["worker"] for a in rows}) == 1 for rows in by_sequence.values()), answers


def test_a_stateful_models_sequence_over_http(server: dict[str, str]) -> None:
    """Over HTTP the ``ts_request_sequence_id`` header names the sequence; a request without it
    starts one the server names ``ts-seq-<uuid>`` (TorchServe's InferenceRequestHandler), and so
    does a unary gRPC Predictions."""
    url = f"{server['inference']}/predictions/sequences"
    sums = [requests.post(url, data=str(value), headers={"ts_request_sequence_id": "h", **end}, timeout=30).json()
            for value, end in ((1, {}), (2, {}), (3, {"ts_request_sequence_end": "true"}))]
    assert [s["sum"] for s in sums] == [1, 3, 6] and len({s["worker"] for s in sums}) == 1
    alone = requests.post(url, data="5", timeout=30).json()
    assert alone["sequence_id"].startswith("ts-seq-") and (alone["start"], alone["sum"]) == ("true", 5)
    unary = json.loads(_grpc_call(server["grpc_inference"], INFERENCE + "Predictions", ts.PredictionsRequest(
        model_name="sequences", input={"data": b"7"}), ts.PredictionResponse).prediction)
    assert unary["sequence_id"].startswith("ts-seq-") and unary["sum"] == 7


def test_the_sequence_header_over_http_reaches_get_sequence_id(server: dict[str, str]) -> None:
    """``curl -H "ts_request_sequence_id: seq_0"``, as TorchServe's stateful example calls it."""
    url = f"{server['inference']}/predictions/stateful"
    sums = [requests.post(url, data=str(value), headers={"ts_request_sequence_id": "http-seq"}, timeout=30).json()
            for value in (7, 8)]
    assert [(s["sequence_id"], s["sum"]) for s in sums] == [("http-seq", 7), ("http-seq", 15)]


def test_stream_predictions2_on_grpcios_server(tmp_path: Path) -> None:
    """`inferd serve --grpc-server grpcio` serves it too (the archive from a model repository)."""
    store = ts_archives.build_grpc_store(tmp_path)
    (tmp_path / "repo" / "stateful" / "1").mkdir(parents=True)
    shutil.copy(store / "stateful.mar", tmp_path / "repo" / "stateful" / "1" / "model.mar")
    with serve(tmp_path / "repo", "--grpc-server", "grpcio", grpc=True) as server:
        answers = _stream2(server.grpc_url, [_add("a", 1), _add("b", 5), _add("a", 2), _add("a", 3), _add(None, 1)])
    assert [json.loads(a.prediction)["sum"] for a in answers[:4]] == [1, 5, 3, 6]
    assert _status(answers[4])[1] == "Parameter sequenceId is required."


# (model, version, input) -> TorchServe's status and message for it
FAILURES: list[tuple[str, str, bytes, grpc.StatusCode, str]] = [
    ("", "", b"1", grpc.StatusCode.INTERNAL, "Parameter model_name is required."),
    ("nope", "", b"1", grpc.StatusCode.INTERNAL, "Model not found: nope"),
    ("failing", "9", b"1", grpc.StatusCode.INTERNAL, "Model version: 9 does not exist for model: failing"),
    ("failing", "", b"prediction:400", grpc.StatusCode.INVALID_ARGUMENT, "refused with 400"),
    ("failing", "", b"prediction:404", grpc.StatusCode.NOT_FOUND, "refused with 404"),
    ("failing", "", b"prediction:409", grpc.StatusCode.ABORTED, "refused with 409"),
    ("failing", "", b"prediction:418", grpc.StatusCode.FAILED_PRECONDITION, "refused with 418"),
    ("failing", "", b"prediction:429", grpc.StatusCode.RESOURCE_EXHAUSTED, "refused with 429"),
    ("failing", "", b"prediction:503", grpc.StatusCode.UNAVAILABLE, "refused with 503"),
    ("failing", "", b"prediction:504", grpc.StatusCode.DEADLINE_EXCEEDED, "refused with 504"),
    ("failing", "", b"prediction:507", grpc.StatusCode.INTERNAL, "refused with 507"),
    ("idle", "", b"1", grpc.StatusCode.INTERNAL,
     'Model "idle" has no worker to serve inference request. Please use scale workers API to add workers. '
     "If this is a sequence inference, please check if it is closed, or expired; or exceeds "
     "maxSequenceJobQueueSize"),
]


def _request(model: str, version: str, data: bytes) -> ts.PredictionsRequest:
    return ts.PredictionsRequest(model_name=model, model_version=version, input={"data": data}, sequence_id="s")


@pytest.mark.parametrize(("model", "version", "data", "code", "message"), FAILURES,
                         ids=[f"{m or 'no-name'}-{v}-{d.decode()}" for m, v, d, _, _ in FAILURES])
def test_a_failed_prediction_has_torchserves_status(server: dict[str, str], model: str, version: str, data: bytes,
                                                     code: grpc.StatusCode, message: str) -> None:
    """Predictions and StreamPredictions fail with the status; StreamPredictions2 answers it on the stream."""
    request = _request(model, version, data)
    with pytest.raises(grpc.RpcError) as raised:
        _grpc_call(server["grpc_inference"], INFERENCE + "Predictions", request, ts.PredictionResponse)
    assert (raised.value.code(), raised.value.details()) == (code, message)
    with grpc.insecure_channel(server["grpc_inference"]) as channel, pytest.raises(grpc.RpcError) as raised:
        list(channel.unary_stream(INFERENCE + "StreamPredictions", request_serializer=lambda m: m.SerializeToString(),
                                  response_deserializer=ts.PredictionResponse.FromString)(request, timeout=60))
    assert (raised.value.code(), raised.value.details()) == (code, message)
    [answer] = _stream2(server["grpc_inference"], [request])
    assert _status(answer)[:2] == (code, message)


def test_a_handler_that_raises_is_unavailable_with_what_it_raised(server: dict[str, str]) -> None:
    """TorchServe's worker answers 503 ("Prediction failed"): UNAVAILABLE; inferd's message names
    the model and what it raised."""
    request = _request("failing", "", b"raise")
    with pytest.raises(grpc.RpcError) as raised:
        _grpc_call(server["grpc_inference"], INFERENCE + "Predictions", request, ts.PredictionResponse)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "failing" in (raised.value.details() or "") and "told to raise" in (raised.value.details() or "")
    answers = _stream2(server["grpc_inference"], [request, _request("failing", "", b"fine")])
    code, said, reason = _status(answers[0])
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, WORKER_ERROR) and "told to raise" in said
    assert answers[1].prediction == b"fine"  # the stream went on


def test_a_handler_past_its_response_timeout_is_internal(server: dict[str, str]) -> None:
    """TorchServe kills a worker past response_timeout and answers "Worker died." (500): INTERNAL,
    not DEADLINE_EXCEEDED (that is the client's own deadline)."""
    registered = requests.post(f"{server['management']}/models?url=failing.mar&model_name=slow&initial_workers=1"
                               "&response_timeout=1&synchronous=true", timeout=60)
    assert registered.status_code == 200, registered.text
    with pytest.raises(grpc.RpcError) as raised:
        _grpc_call(server["grpc_inference"], INFERENCE + "Predictions", _request("slow", "", b"sleep:5"),
                   ts.PredictionResponse)
    assert raised.value.code() == grpc.StatusCode.INTERNAL, raised.value
    assert "slow" in (raised.value.details() or ""), raised.value


def test_a_request_that_works_is_answered_as_before(server: dict[str, str]) -> None:
    answer = _grpc_call(server["grpc_inference"], INFERENCE + "Predictions", _request("failing", "", b"echo"),
                        ts.PredictionResponse)
    assert answer.prediction == b"echo" and not answer.HasField("status")


def test_a_status_the_handler_set_is_answered_ok_with_its_body(server: dict[str, str]) -> None:
    """``context.set_response_status(413)``: REST answers 413 with the handler's body; gRPC answers
    OK with the body on every call, as TorchServe's GRPCJob.response does (it never reads the code),
    where a PredictionException fails the call (above)."""
    answer = requests.post(f"{server['inference']}/predictions/failing", data="status:413", timeout=30)
    assert (answer.status_code, answer.text) == (413, "status:413")
    request = _request("failing", "", b"status:413")
    unary = _grpc_call(server["grpc_inference"], INFERENCE + "Predictions", request, ts.PredictionResponse)
    assert unary.prediction == b"status:413" and not unary.HasField("status")
    with grpc.insecure_channel(server["grpc_inference"]) as channel:
        streamed = list(channel.unary_stream(INFERENCE + "StreamPredictions",
                                             request_serializer=lambda m: m.SerializeToString(),
                                             response_deserializer=ts.PredictionResponse.FromString)(request,
                                                                                                     timeout=60))
    assert [a.prediction for a in streamed] == [b"status:413"]
    [on_stream] = _stream2(server["grpc_inference"], [request])
    assert on_stream.prediction == b"status:413" and not on_stream.HasField("status")
