"""An ensemble gives its steps its request's parameters (as Triton's SetParameters); parameters
named as the protocol's reserved ones (sequence, priority, timeout, binary output) are read as such
and a step's model sees them no more than the model asked directly does."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import RunningServer, serve
from tests.e2e.test_header_forwarding import _repository

RESERVED = {"sequence_id": 5, "sequence_start": True, "sequence_end": True, "priority": 1, "timeout": 5_000_000,
            "binary_data_output": False}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serve(_repository(tmp_path_factory.mktemp("reserved"))) as running:
        yield running


@pytest.mark.parametrize("model", ["params", "ensemble"])
def test_reserved_names_reach_no_step_as_parameters(server: RunningServer, model: str) -> None:
    body = {"parameters": {**RESERVED, "asked": "yes"},
            "inputs": [{"name": "IN", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    answer = requests.post(f"{server.base}/v2/models/{model}/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert json.loads(answer.json()["outputs"][0]["data"][0]) == {"asked": "yes"}


def test_a_malformed_reserved_parameter_of_an_ensemble_is_refused_saying_what_it_takes(server: RunningServer) -> None:
    body = {"parameters": {"sequence_id": [1, 2]},
            "inputs": [{"name": "IN", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    answer = requests.post(f"{server.base}/v2/models/ensemble/infer", json=body, timeout=30)
    assert answer.status_code == 400, answer.text
    assert "sequence_id" in answer.json()["error"], answer.text
