"""inferd's triton_python_backend_utils: what Triton Python models call, without a server."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from inferd.errors import InvalidInput
from inferd.runtimes import triton_pb_utils as pb_utils
from inferd.types import InferResponse
from inferd.types import Tensor as InferTensor


def test_the_shim_answers_the_import() -> None:
    pb_utils.install_triton_shim()
    import triton_python_backend_utils  # type: ignore[import-not-found]

    assert triton_python_backend_utils is sys.modules["inferd.runtimes.triton_pb_utils"]


def test_tensors_requests_and_responses() -> None:
    tensor = pb_utils.Tensor("OUT", np.array(["a", "bc"]))  # str arrays become BYTES, as Triton's do
    assert tensor.as_numpy().tolist() == [b"a", b"bc"] and tensor.as_numpy().dtype == object
    request = pb_utils.InferenceRequest("r1", 0, [pb_utils.Tensor("X", np.ones(2))], ["OUT"], "")
    assert pb_utils.get_input_tensor_by_name(request, "X").name() == "X"
    assert pb_utils.get_input_tensor_by_name(request, "Y") is None
    response = pb_utils.InferenceResponse([tensor])
    assert pb_utils.get_output_tensor_by_name(response, "OUT") is tensor and not response.has_error()
    failed = pb_utils.InferenceResponse(error=pb_utils.TritonError("no"))
    assert failed.has_error() and failed.error().message() == "no"


def test_a_request_takes_tritons_positional_order() -> None:
    """python_backend's InferenceRequest (pb_stub.cc at f9088ff6): request_id, correlation_id, inputs,
    requested_output_names, model_name, model_version, flags, timeout, preferred_memory, trace,
    parameters; keywords in any order still work."""
    tensor = pb_utils.Tensor("IN", np.ones(2, np.float32))
    start = pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START
    positional = pb_utils.InferenceRequest("r1", 7, [tensor], ["OUT"], "target", 2, start, 5000, None, None,
                                           {"k": "v"})
    keywords = pb_utils.InferenceRequest(parameters={"k": "v"}, timeout=5000, flags=start, model_version=2,
                                         model_name="target", requested_output_names=["OUT"], inputs=[tensor],
                                         correlation_id=7, request_id="r1")
    for request in (positional, keywords):
        assert (request.request_id(), request.correlation_id(), request.requested_output_names(), request.flags(),
                json.loads(request.parameters())) == ("r1", 7, ["OUT"], start, {"k": "v"})
        assert request.inputs() == [tensor]
        call = request._call()
        assert (call.model_name, call.model_version, call.timeout_us, call.parameters["sequence_id"]) == (
            "target", "2", 5000, 7)


@pytest.mark.parametrize(("args", "kwargs", "missing"), [
    ((), {"inputs": [], "requested_output_names": []}, "model_name"),
    (("r1", 0, []), {"model_name": "m"}, "requested_output_names"),
    ((), {"model_name": "m", "requested_output_names": ["OUT"], "inputs": None}, "inputs"),
])
def test_a_request_without_what_triton_requires_is_a_type_error(args: tuple[object, ...], kwargs: dict[str, object],
                                                                  missing: str) -> None:
    """inputs, requested_output_names and model_name have no default in Triton's constructor, and
    none of them may be None."""
    with pytest.raises(TypeError, match=missing):
        pb_utils.InferenceRequest(*args, **kwargs)


def test_a_decoupled_bls_calls_error_response_is_one_of_its_responses() -> None:
    """As Triton's BLS iterator: an error response among a decoupled target's responses is yielded
    (``has_error()``, its code) and the iteration goes on to the one flagged final."""
    def answers() -> Iterator[InferResponse]:
        for value, error, final in ((1.0, None, False), (None, InvalidInput("no"), False), (3.0, None, True)):
            outputs = [] if value is None else [InferTensor("OUT", "FP32", np.array([value], np.float32))]
            yield InferResponse("target", "1", outputs, final=final, error=error)

    got = list(pb_utils.ResponseIterator(answers()))
    assert [r.has_error() for r in got] == [False, True, False]
    assert (got[1].error().message(), got[1].error().code()) == ("no", pb_utils.TritonError.INVALID_ARG)
    assert [pb_utils.get_output_tensor_by_name(got[i], "OUT").as_numpy().tolist() for i in (0, 2)] == [[1.0], [3.0]]


def test_dlpack_both_ways_with_torch() -> None:
    source = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    tensor = pb_utils.Tensor.from_dlpack("T", torch.utils.dlpack.to_dlpack(source))
    np.testing.assert_array_equal(tensor.as_numpy(), source.numpy())
    back = torch.utils.dlpack.from_dlpack(tensor.to_dlpack())
    assert torch.equal(back, source)


@pytest.mark.parametrize(("name", "expected"), [("TYPE_FP32", np.float32), ("TYPE_STRING", np.object_),
                                                ("TYPE_UINT8", np.uint8), ("TYPE_BOOL", np.bool_)])
def test_type_names(name: str, expected: type) -> None:
    assert pb_utils.triton_string_to_numpy(name) is expected


def test_configuration_helpers() -> None:
    config = {"input": [{"name": "a", "data_type": "TYPE_INT8"}], "output": [{"name": "b", "data_type": "TYPE_FP16"}]}
    assert pb_utils.get_output_config_by_name(config, "b")["data_type"] == "TYPE_FP16"
    assert pb_utils.get_input_config_by_name(config, "zz") is None
    assert pb_utils.numpy_to_triton_type(np.float16) == 10 and pb_utils.triton_to_numpy_type(8) is np.int32


def test_a_plain_models_response_sender_takes_one_response() -> None:
    sent: list[object] = []
    sender = pb_utils.InferenceResponseSender(lambda response, flags: sent.append((response, flags)), lambda: False,
                                              decoupled=False)
    with pytest.raises(pb_utils.TritonModelException, match="cannot send complete final before sending a response"):
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)  # a final flag before any response
    response = pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.ones(1))])
    sender.send(response)
    with pytest.raises(pb_utils.TritonModelException, match="cannot send more than one response"):
        sender.send(response)
    with pytest.raises(pb_utils.TritonModelException, match="takes an InferenceResponse, not dict"):
        pb_utils.InferenceResponseSender(lambda *_: None, lambda: False).send({"OUT": 1})  # type: ignore[arg-type]
    assert sent == [(response, 0)]
    assert pb_utils.TritonError("x").code() == pb_utils.TritonError.INTERNAL  # Triton's default code


def test_the_model_config_that_auto_complete_config_completes() -> None:
    config = pb_utils.ModelConfig('{"name": "m", "max_batch_size": 4, "input": [{"name": "A", "data_type": '
                                  '"TYPE_FP32", "dims": []}], "sequence_batching": {}}')
    config.add_input({"name": "A", "data_type": "TYPE_FP32", "dims": [2]})  # fills in what the file left out
    config.add_output({"name": "B", "data_type": "TYPE_FP32", "dims": [2]})
    assert config.as_dict()["input"] == [{"name": "A", "data_type": "TYPE_FP32", "dims": [2]}]
    assert [t["name"] for t in config.as_dict()["output"]] == ["B"]
    with pytest.raises(ValueError, match="max_batch_size 4, auto_complete_config says 2"):
        config.set_max_batch_size(2)
    with pytest.raises(ValueError, match="schedules with sequence_batching"):
        config.set_dynamic_batching()
    with pytest.raises(ValueError, match="output 'C' needs 'dims'"):
        config.add_output({"name": "C", "data_type": "TYPE_FP32"})
    config.set_model_transaction_policy({"decoupled": True})
    assert config.as_dict()["model_transaction_policy"] == {"decoupled": True}


def test_custom_metrics_keep_their_values() -> None:
    counter = pb_utils.MetricFamily("n", "how many", pb_utils.MetricFamily.COUNTER).Metric(labels={"a": "b"})
    counter.increment(2)
    counter.increment(3)
    assert counter.value() == 5
    with pytest.raises(pb_utils.TritonModelException, match="only goes up"):
        counter.increment(-1)
    gauge = pb_utils.MetricFamily("g", "level", pb_utils.MetricFamily.GAUGE).Metric()
    gauge.set(7.5)
    assert gauge.value() == 7.5
    with pytest.raises(pb_utils.TritonModelException, match="needs buckets"):
        pb_utils.MetricFamily("h", "spread", pb_utils.MetricFamily.HISTOGRAM).Metric()
    with pytest.raises(pb_utils.TritonModelException, match="Unexpected buckets found"):  # Triton's refusals
        pb_utils.MetricFamily("g", "level", pb_utils.MetricFamily.GAUGE).Metric(buckets=[1.0])
    with pytest.raises(pb_utils.TritonModelException, match="Labels must be a dictionary"):
        pb_utils.MetricFamily("g", "level", pb_utils.MetricFamily.GAUGE).Metric(labels=[("a", "b")])  # type: ignore[arg-type]
    with pytest.raises(pb_utils.TritonModelException, match="Buckets must be a list"):
        pb_utils.MetricFamily("h", "spread", pb_utils.MetricFamily.HISTOGRAM).Metric(buckets=(1.0,))  # type: ignore[arg-type]


def test_an_instance_holds_each_series_once_however_many_metric_objects_name_it() -> None:
    made: pb_utils.MadeMetrics = {}
    family = pb_utils.MetricFamily("per_request", "made per request", pb_utils.MetricFamily.COUNTER)
    with pb_utils.collecting_metrics(made):
        for _ in range(100):  # a Metric made per request must not pile up until the model unloads
            family.Metric(labels={"kind": "a"}).increment(1)
        family.Metric(labels={"kind": "b"})
    family.Metric(labels={"kind": "c"})  # made outside any instance's calls: not held
    assert sorted(made) == [("per_request", (("kind", "a"),)), ("per_request", (("kind", "b"),))]


def test_metrics_of_the_same_labels_are_one_series_and_a_familys_kind_is_its_own() -> None:
    """As Triton's (L0_backend_python custom_metrics): a second Metric of the same labels reads
    what the first counted, and a family name taken by another kind is refused."""
    made: pb_utils.MadeMetrics = {}
    family = pb_utils.MetricFamily("dup_series", "first words", pb_utils.MetricFamily.COUNTER)
    with pb_utils.collecting_metrics(made):
        first, second = family.Metric(labels={"k": "v"}), family.Metric(labels={"k": "v"})
        first.increment(7.5)
        assert second.value() == 7.5
        assert family.Metric(labels={"k": "other"}).value() == 0
    with pytest.raises(pb_utils.TritonModelException, match="exists already as a counter, not a gauge"):
        pb_utils.MetricFamily("dup_series", "first words", pb_utils.MetricFamily.GAUGE)
    again = pb_utils.MetricFamily("dup_series", "other words", pb_utils.MetricFamily.COUNTER)
    assert again._description == "first words"
    del family, again, first, second  # the family goes with its last reference (its metrics' too)
    made.clear()
    pb_utils.MetricFamily("dup_series", "gone, so free again", pb_utils.MetricFamily.GAUGE)


def test_bytes_tensors_serialize_as_tritons_layout() -> None:
    """Each element's length (4 bytes, little-endian), then its bytes; str elements as UTF-8."""
    values = np.array([b"ab", "\u00e9", b""], dtype=object)
    encoded = pb_utils.serialize_byte_tensor(values)
    assert encoded == b"\x02\x00\x00\x00ab\x02\x00\x00\x00\xc3\xa9\x00\x00\x00\x00"
    assert pb_utils.deserialize_bytes_tensor(encoded).tolist() == [b"ab", "\u00e9".encode(), b""]
    assert pb_utils.serialize_byte_tensor(np.array([], dtype=object)) == ()  # Triton's answers for these two
    assert pb_utils.serialize_byte_tensor(np.ones(2, np.float32)) is None
    with pytest.raises(pb_utils.TritonModelException, match="string extends beyond buffer"):
        pb_utils.deserialize_bytes_tensor(b"\x09\x00\x00\x00ab")
    assert pb_utils.TRITON_STRING_TO_NUMPY["TYPE_INT16"] is np.int16
    assert pb_utils.TRITONSERVER_REQUEST_RELEASE_ALL == 1


def test_a_tensor_says_its_type_and_refuses_what_tritons_refuses() -> None:
    assert pb_utils.Tensor("A", np.ones(2, np.float32)).triton_dtype() == 11
    assert pb_utils.Tensor("S", np.array(["x"])).triton_dtype() == 13
    with pytest.raises(pb_utils.TritonModelException, match="Tensor name cannot be an empty string"):
        pb_utils.Tensor("", np.ones(1))
    with pytest.raises(pb_utils.TritonModelException, match="DLPack does not have support for string tensors"):
        pb_utils.Tensor("S", np.array(["x"])).to_dlpack()
    strided = pb_utils.Tensor("T", np.arange(6).reshape(2, 3).T)
    assert strided.as_numpy().flags.c_contiguous and strided.as_numpy().tolist() == [[0, 3], [1, 4], [2, 5]]
    assert pb_utils.Tensor("Z", np.float32(2)).shape() == []  # a 0-d array stays 0-d


def test_dlpack_protocol_and_memory_this_server_cannot_hold() -> None:
    tensor = pb_utils.Tensor("T", np.arange(4, dtype=np.int32))
    assert tensor.__dlpack_device__() == (1, 0)
    assert torch.equal(torch.from_dlpack(tensor), torch.arange(4, dtype=torch.int32))
    np.testing.assert_array_equal(pb_utils.Tensor.from_dlpack("N", np.arange(3)).as_numpy(), [0, 1, 2])

    class OnGpu:  # what a CUDA tensor says of itself; this machine has no GPU to make one
        def __dlpack__(self, stream: object = None) -> object:
            raise AssertionError("never read")

        def __dlpack_device__(self) -> tuple[int, int]:
            return (2, 0)  # kDLCUDA

    with pytest.raises(pb_utils.TritonModelException, match="allocated on GPU device, when GPU is not available"):
        pb_utils.Tensor.from_dlpack("G", OnGpu())
    with pytest.raises(pb_utils.TritonModelException, match="must be a DLPack capsule"):
        pb_utils.Tensor.from_dlpack("L", [1, 2])


def test_request_arguments_triton_checks() -> None:
    tensor = pb_utils.Tensor("IN", np.ones(2, np.float32))
    with pytest.raises(pb_utils.TritonModelException, match="Correlation ID must be integer or string"):
        pb_utils.InferenceRequest(correlation_id=1.5, inputs=[tensor], requested_output_names=[], model_name="m")
    with pytest.raises(pb_utils.TritonModelException, match="values to have type bool/int/str, found type"):
        pb_utils.InferenceRequest(inputs=[tensor], requested_output_names=[], model_name="m",
                                  parameters={"scale": 2.5})
    with pytest.raises(pb_utils.TritonModelException, match=r"Requested output name .* should not be empty"):
        pb_utils.InferenceRequest(inputs=[tensor], requested_output_names=[""], model_name="m")
    with pytest.raises(TypeError, match="preferred_memory takes a pb_utils"):
        pb_utils.InferenceRequest(inputs=[], requested_output_names=[], model_name="m", preferred_memory="GPU")
    request = pb_utils.InferenceRequest(inputs=[tensor], requested_output_names=["OUT"], model_name="m", timeout=9,
                                        preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_GPU))
    request.set_flags(pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END)
    assert (request.flags(), request.timeout(), request.trace().get_context()) == (2, 9, None)
    request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_ALL)
    with pytest.raises(pb_utils.TritonModelException, match="has no reference to the decoupled state"):
        request.get_response_sender().send(pb_utils.InferenceResponse())  # a request built here has no client
    with pytest.raises(pb_utils.TritonModelException, match="iterative_sequence"):
        request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)


def test_response_parameters_and_the_senders_flags() -> None:
    response = pb_utils.InferenceResponse(parameters={"a": 1, "b": "x", "c": True})
    assert json.loads(response.parameters()) == {"a": 1, "b": "x", "c": True}
    assert pb_utils.InferenceResponse().parameters() == "{}"
    with pytest.raises(pb_utils.TritonModelException, match="keys to have type str"):
        pb_utils.InferenceResponse(parameters={1: "x"})  # type: ignore[dict-item]
    sender = pb_utils.InferenceResponseSender(lambda *_: None, lambda: False)
    with pytest.raises(pb_utils.TritonModelException, match="Unsupported flag provided"):
        sender.send(response, flags=4)


def test_arguments_of_the_wrong_type_are_refused_as_tritons() -> None:
    """Triton's QA argument_validation: its bindings' TypeError for a wrong argument's type, its
    stub's TritonModelException for a list holding what is not a tensor."""
    tensor = pb_utils.Tensor("IN", np.ones(2, np.float32))
    with pytest.raises(pb_utils.TritonModelException, match=r"inputs\[0\] is NoneType, not a pb_utils.Tensor"):
        pb_utils.InferenceRequest(inputs=[None], requested_output_names=[], model_name="m")
    with pytest.raises(TypeError, match="requested_output_names takes a list of str, got \\[None\\]"):
        pb_utils.InferenceRequest(inputs=[tensor], requested_output_names=[None], model_name="m")
    with pytest.raises(pb_utils.TritonModelException, match=r"output_tensors\[0\] is NoneType"):
        pb_utils.InferenceResponse(output_tensors=[None])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="output_tensors takes a list of pb_utils\\.Tensor, got NoneType"):
        pb_utils.InferenceResponse(output_tensors=None)  # type: ignore[arg-type]
    assert pb_utils.InferenceResponse(error=pb_utils.TritonError("e")).output_tensors() == []  # left out: none
    with pytest.raises(TypeError, match="name takes a str, got NoneType"):
        pb_utils.Tensor(None, np.ones(1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="data takes a numpy array"):
        pb_utils.Tensor("", None)  # the type first, as Triton's bindings check it
    for level in (None, 1):
        with pytest.raises(TypeError, match=r"level is Logger\.INFO, WARNING, ERROR or VERBOSE"):
            pb_utils.Logger.log("message", level)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="the message takes a str, got NoneType"):
        pb_utils.Logger.log_info(None)  # type: ignore[arg-type]


def test_logger_logs_at_the_level_asked(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="inferd.python_backend"):
        pb_utils.Logger.log("plain")
        pb_utils.Logger.log("warned", pb_utils.Logger.WARNING)
        pb_utils.Logger.log("verbose", pb_utils.Logger.LogLevel.VERBOSE)
    assert [(r.levelno, r.message) for r in caplog.records] == [
        (logging.INFO, "plain"), (logging.WARNING, "warned"), (logging.DEBUG, "verbose")]


def test_the_model_loading_api_refuses_what_triton_refuses_before_asking_the_server() -> None:
    with pytest.raises(pb_utils.TritonModelException, match="version should be an integral value > 0"):
        pb_utils.is_model_ready("m", "one")
    with pytest.raises(pb_utils.TritonModelException, match="'-1', version should be an integral value > 0"):
        pb_utils.is_model_ready("m", "-1")
    with pytest.raises(pb_utils.TritonModelException, match="files should be a dictionary"):
        pb_utils.load_model("m", config="{}", files=[b"x"])  # type: ignore[arg-type]
    with pytest.raises(pb_utils.TritonModelException, match="override files need config"):
        pb_utils.load_model("m", files={"file:1/model.py": b"x"})
    for key in ("1/model.py", "file:/../model.py", "file:1/../../model.py"):
        with pytest.raises(pb_utils.TritonModelException, match="inside the model folder"):
            pb_utils.load_model("m", config="{}", files={key: b"x"})
    with pytest.raises(pb_utils.TritonModelException, match="must be bytes, got str"):
        pb_utils.load_model("m", config="{}", files={"file:1/model.py": "x"})  # type: ignore[dict-item]
