"""Triton's extension shapes, without a server: statistics and load parameters, read back with
Triton's own generated messages (tritonclient's) to prove the bytes are what its clients parse."""

from __future__ import annotations

import pytest
from tritonclient.grpc import model_config_pb2, service_pb2

from inferd.config import DynamicBatching, ModelConfig, ServedConfig, TensorConfig
from inferd.errors import InvalidInput
from inferd.protocols import kserve_v2_extensions as ext
from inferd.protocols._proto import kserve_v2_pb2 as pb
from inferd.types import BatchStatistics, Duration, LoadOverride, ModelStatistics, RequestStatistics


def _row() -> ModelStatistics:
    requests = RequestStatistics(success=Duration(3, 300), fail=Duration(1, 5), queue=Duration(3, 30),
                                 compute_input=Duration(3, 3), compute_infer=Duration(3, 200),
                                 compute_output=Duration(3, 6), last_inference_ms=1234)
    return ModelStatistics("m", "2", inference_count=5, execution_count=2, requests=requests,
                           batches=(BatchStatistics(1, Duration(1, 90)), BatchStatistics(4, Duration(1, 110))))


def test_statistics_json_has_tritons_keys() -> None:
    stats = ext.statistics_json([_row()])["model_stats"][0]
    assert (stats["name"], stats["version"], stats["last_inference"]) == ("m", "2", 1234)
    assert stats["inference_stats"]["success"] == {"count": 3, "ns": 300}
    assert stats["inference_stats"]["fail"] == {"count": 1, "ns": 5}
    assert stats["inference_stats"]["cache_hit"] == {"count": 0, "ns": 0}
    assert [b["batch_size"] for b in stats["batch_stats"]] == [1, 4]
    assert stats["batch_stats"][1]["compute_infer"] == {"count": 1, "ns": 110}


def test_statistics_message_parses_as_tritons() -> None:
    wire = ext.statistics_message([_row()]).SerializeToString()
    theirs = service_pb2.ModelStatisticsResponse.FromString(wire)
    stats = theirs.model_stats[0]
    assert (stats.name, stats.inference_count, stats.execution_count) == ("m", 5, 2)
    assert stats.inference_stats.compute_infer.ns == 200 and stats.inference_stats.queue.count == 3
    assert [(b.batch_size, b.compute_infer.ns) for b in stats.batch_stats] == [(1, 90), (4, 110)]


def test_config_message_parses_as_tritons_model_config() -> None:
    config = ModelConfig(backend="onnx", max_batch_size=8, dynamic_batching=DynamicBatching(0.5, (4,)),
                         inputs=(TensorConfig("x", "FP32", (3, -1), "FORMAT_NCHW"),),
                         outputs=(TensorConfig("s", "BYTES", (1,)),))
    wire = ext.config_message(ServedConfig("m", "onnxruntime_onnx", "onnx", config)).SerializeToString()
    theirs = service_pb2.ModelConfigResponse.FromString(wire).config
    assert (theirs.name, theirs.platform, theirs.backend, theirs.max_batch_size) == (
        "m", "onnxruntime_onnx", "onnxruntime", 8)
    assert list(theirs.input[0].dims) == [3, -1] and theirs.input[0].format == model_config_pb2.ModelInput.FORMAT_NCHW
    assert theirs.output[0].data_type == model_config_pb2.TYPE_STRING
    assert theirs.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(theirs.dynamic_batching.preferred_batch_size) == [4]


def test_load_override_from_http_and_grpc() -> None:
    assert ext.load_override_json(b"", "m") is None
    assert ext.load_override_json(b'{"parameters": {"config": "{\\"max_batch_size\\": 2}"}}', "m") == (
        LoadOverride('{"max_batch_size": 2}'))
    assert ext.load_override_json(b'{"parameters": {"config": {"max_batch_size": 2}}}', "m") == (
        LoadOverride('{"max_batch_size":2}'))
    body = b'{"parameters": {"config": "{}", "file:1/model.onnx": "AAEC", "file:labels.txt": ""}}'
    assert ext.load_override_json(body, "m") == LoadOverride("{}", {"1/model.onnx": b"\0\1\2", "labels.txt": b""})
    message = pb.RepositoryModelLoadRequest(model_name="m")
    message.parameters["config"].string_param = "{}"
    assert ext.load_override_message(message) == LoadOverride("{}")
    message.parameters["file:1/model.onnx"].bytes_param = b"\0\1"
    assert ext.load_override_message(message) == LoadOverride("{}", {"1/model.onnx": b"\0\1"})


@pytest.mark.parametrize(("body", "expected"), [
    (b"[1]", "must be a JSON object"),
    (b"{bad", "malformed JSON"),
    (b'{"parameters": {"file:1/model.onnx": "AAAA"}}', "file overrides need parameter 'config'"),
    (b'{"parameters": {"config": "{}", "file:1/m.onnx": "@@"}}', "'file:1/m.onnx' is not valid base64"),
    (b'{"parameters": {"config": "{}", "file:1/m.onnx": 1}}', "must be base64 text, got int"),
    (b'{"parameters": {"config": "{}", "file:1/../../x": ""}}', "inside the model folder"),
    (b'{"parameters": {"config": "{}", "file:/../x": ""}}', "inside the model folder"),
    (b'{"parameters": {"config": "{}", "file:": ""}}', "inside the model folder"),
    (b'{"parameters": {"colour": "red"}}', "unknown load parameter 'colour'"),
    (b'{"parameters": {"config": 5}}', "must be a model configuration in JSON, got int"),
])
def test_load_requests_that_cannot_be_honoured_say_why(body: bytes, expected: str) -> None:
    with pytest.raises(InvalidInput, match="failed to load 'm'") as caught:
        ext.load_override_json(body, "m")
    assert expected in caught.value.message


def test_unload_dependents_from_http_and_grpc() -> None:
    """Triton's unload parameter (server's http_server.cc and grpc_server.cc): a boolean; any other
    parameter is ignored; anything but a boolean is an error naming it."""
    assert ext.unload_dependents_json(b"", "m") is False
    assert ext.unload_dependents_json(b'{"parameters": {"unload_dependents": true, "other": 1}}', "m") is True
    assert ext.unload_dependents_json(b'{"parameters": {}}', "m") is False
    with pytest.raises(InvalidInput, match="parameter 'unload_dependents' must be a boolean, got 1"):
        ext.unload_dependents_json(b'{"parameters": {"unload_dependents": 1}}', "m")
    with pytest.raises(InvalidInput, match="failed to unload 'm': malformed JSON"):
        ext.unload_dependents_json(b"{", "m")
    message = pb.RepositoryModelUnloadRequest(model_name="m")
    assert ext.unload_dependents_message(message) is False
    message.parameters["unload_dependents"].bool_param = True
    assert ext.unload_dependents_message(message) is True
    message.parameters["unload_dependents"].string_param = "true"
    with pytest.raises(InvalidInput, match="must be a boolean, got 'true'"):
        ext.unload_dependents_message(message)


def test_trace_settings_messages_are_tritons() -> None:
    sent = service_pb2.TraceSettingRequest(model_name="m")  # as tritonclient builds it
    sent.settings["trace_level"].value.extend(["TIMESTAMPS"])
    sent.settings["trace_rate"].value.extend(["5"])
    sent.settings["trace_count"]  # None: an empty list, which clears the setting
    changes = ext.trace_settings_changes(pb.TraceSettingRequest.FromString(sent.SerializeToString()))
    assert changes == {"trace_level": ["TIMESTAMPS"], "trace_rate": "5", "trace_count": None}
    answer = ext.trace_settings_message({"trace_level": ["OFF"], "trace_rate": "1000", "trace_mode": "triton"})
    read = service_pb2.TraceSettingResponse.FromString(answer.SerializeToString())
    assert {key: list(value.value) for key, value in read.settings.items()} == {
        "trace_level": ["OFF"], "trace_rate": ["1000"], "trace_mode": ["triton"]}
    twice = pb.TraceSettingRequest()
    twice.settings["trace_rate"].value.extend(["1", "2"])
    with pytest.raises(InvalidInput, match="expect only 1 value for 'trace_rate', got 2"):
        ext.trace_settings_changes(twice)
