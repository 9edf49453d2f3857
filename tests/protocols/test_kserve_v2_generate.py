"""Triton's generate extension's requests, converted as Triton's http_server.cc converts them."""

from __future__ import annotations

import json
import re

import pytest

from inferd.errors import InvalidInput
from inferd.protocols.kserve_v2_generate import decode_generate_request
from inferd.types import ModelMetadata, TensorSpec

LLM = ModelMetadata(name="llm", versions=("1",), platform="python", inputs=(
    TensorSpec("PROMPT", "BYTES", (1, 1)), TensorSpec("STREAM", "BOOL", (1, 1)),
    TensorSpec("input_ids", "INT32", (1, -1), optional=True), TensorSpec("ids", "INT32", (-1, 2, -1))),
    outputs=(TensorSpec("TEXT", "BYTES", (1, -1)),))


def decode(payload: dict) -> dict:
    request = decode_generate_request(json.dumps(payload).encode(), LLM, None)
    return {"shapes": {t.name: list(t.data.shape) for t in request.inputs}, "parameters": request.parameters,
            "id": request.id}


def test_a_value_takes_the_inputs_shape_its_variable_dims_deduced() -> None:
    decoded = decode({"PROMPT": "hello", "STREAM": True, "input_ids": [1, 2, 3], "ids": [1, 2, 3, 4]})
    # fixed dims take their share, the innermost -1 the rest, any other -1 is 1
    assert decoded["shapes"] == {"PROMPT": [1, 1], "STREAM": [1, 1], "input_ids": [1, 3], "ids": [1, 2, 2]}


def test_keys_that_name_no_input_are_request_parameters() -> None:
    decoded = decode({"PROMPT": ["hi"], "STREAM": False, "max_tokens": 8, "temperature": 0.5, "stop": "\n",
                      "parameters": {"REPETITION": 3}, "id": "7"})
    assert decoded["parameters"] == {"REPETITION": 3, "max_tokens": 8, "temperature": 0.5, "stop": "\n"}
    assert decoded["id"] == "7"


@pytest.mark.parametrize(("payload", "message"), [
    ({"PROMPT": "a", "PARAMS": {"x": 1}}, "parameter 'PARAMS' has invalid type. It should be either 'int', 'bool', or "
                                          "'string'."),
    ({"PROMPT": "a", "parameters": {"nested": {"twice": 1}}},
     "Converting keyword: 'parameters': parameter 'nested' has invalid type."),
    ({"PROMPT": "a", "parameters": 1}, "Expected JSON object for keyword: 'parameters'"),
    ({"PROMPT": ["a", "b"]}, "The schema can not convert input 'PROMPT' to tensor with proper shape"),
    ({"ids": [1, 2, 3]}, "The schema can not convert input 'ids' to tensor with proper shape"),
])
def test_what_cannot_be_converted_is_refused_in_tritons_words(payload: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        decode(payload)
