"""TorchServe's service envelopes around a handler: the rows it gets, the answers they become."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from inferd.compat import torchserve
from inferd.errors import ConfigError
from inferd.runtimes import ts_envelopes
from inferd.runtimes.ts_context import Context

MANIFEST = {"model": {"modelName": "adder", "modelVersion": "2.0"}}


def context(*headers: dict[str, str]) -> Context:
    made = Context("adder", "/nowhere", MANIFEST, 4, None)
    made._start_batch(list(headers) or [{}])
    return made


def recording(answer: Any = None) -> tuple[list[Any], ts_envelopes.Handle]:
    """A handler that keeps the rows it got and answers each row plus one (or ``answer``)."""
    seen: list[Any] = []

    def handle(rows: Any, _context: Any) -> Any:
        seen.append(rows)
        return answer if answer is not None else [[v + 1 for v in row] if isinstance(row, list) else row
                                                  for row in rows]
    return seen, handle


def test_body_hands_each_requests_value_and_answers_as_they_are() -> None:
    seen, handle = recording()
    wrapped = ts_envelopes.wrap("body", handle)
    assert wrapped([{"body": [1]}, {"data": [2], "body": b"x"}], context({}, {})) == [[2], [3]]
    assert seen == [[[1], [2]]]


def test_json_joins_the_instances_of_every_request_and_splits_the_answers() -> None:
    seen, handle = recording()
    wrapped = ts_envelopes.wrap("json", handle)
    answers = wrapped([{"body": {"instances": [[1], [2]]}}, {"body": {"instances": [[3]]}}], context({}, {}))
    assert seen == [[[1], [2], [3]]]
    assert [json.loads(a) for a in answers] == [{"predictions": [[2], [3]]}, {"predictions": [[4]]}]


def test_json_decodes_b64_instances_and_columns() -> None:
    seen, handle = recording(answer=["a", "b"])
    encoded = base64.b64encode(b"\x00\x01").decode()
    wrapped = ts_envelopes.wrap("json", handle)
    wrapped([{"body": {"instances": [{"b64": encoded}, {"image": {"b64": encoded}, "k": 1}]}}], context({}))
    assert seen == [[b"\x00\x01", {"image": b"\x00\x01", "k": 1}]]


def test_kserve_takes_the_first_requests_instances_and_answers_once() -> None:
    seen, handle = recording()
    wrapped = ts_envelopes.wrap("kserve", handle)
    assert wrapped([{"body": b'{"instances": [[1], [5]]}'}], context({"explain": "False"})) == [
        {"predictions": [[2], [6]]}]
    assert seen == [[[1], [5]]]
    assert wrapped([{"body": {"instances": [[1]]}}], context({"explain": "True"})) == [{"explanations": [[2]]}]


def test_kservev2_shapes_each_input_and_names_each_output_after_its_input() -> None:
    seen, handle = recording(answer=[[2.5, 3.5], [7, 8, 9]])
    body = {"id": "req-1", "inputs": [
        {"name": "x", "shape": [2, 1], "datatype": "FP32", "data": [1.0, 2.0]},
        {"name": "words", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]}
    answers = ts_envelopes.wrap("kservev2", handle)([{"body": body}], context({}))
    assert seen == [[{"name": "x", "shape": [2, 1], "datatype": "FP32", "data": [[1.0], [2.0]]},
                     {"name": "words", "shape": [1], "datatype": "BYTES", "data": "hello"}]]
    assert answers == [{"id": "req-1", "model_name": "adder", "model_version": "2.0", "outputs": [
        {"name": "x", "datatype": "FP64", "data": [2.5, 3.5], "shape": [2]},
        {"name": "words", "datatype": "INT64", "data": [7, 8, 9], "shape": [3]}]}]


def test_kservev2_without_an_id_answers_with_the_requests_and_text_is_bytes() -> None:
    _, handle = recording(answer=[["a", "bc"]])
    body = b'{"inputs": [{"name": "t", "shape": [1], "datatype": "INT32", "data": [4]}]}'
    made = context({})
    [answer] = ts_envelopes.wrap("kservev2", handle)([{"body": body}], made)
    assert answer["id"] == made.get_request_id(0) and answer["outputs"] == [
        {"name": "t", "datatype": "BYTES", "data": ["a", "bc"], "shape": [2]}]
    assert not hasattr(made, "input_names")  # each batch's names are its own


def test_no_data_or_no_answers_pass_through() -> None:
    seen, handle = recording(answer=[])
    assert ts_envelopes.wrap("kservev2", handle)(None, context({})) == []
    assert seen == [None]


def test_no_envelope_is_the_handler_and_an_unknown_one_is_refused() -> None:
    _, handle = recording()
    assert ts_envelopes.wrap("", handle) is handle
    assert ts_envelopes.wrap(None, handle) is handle
    with pytest.raises(ConfigError, match="service_envelope=seldon: expected one of body, json, kserve, kservev2"):
        ts_envelopes.wrap("seldon", handle)


def test_config_properties_names_the_same_envelopes() -> None:
    assert tuple(ts_envelopes.ENVELOPES) == torchserve.SERVICE_ENVELOPES
    assert torchserve.ENVELOPE_ENV == ts_envelopes.ENVELOPE_ENV
