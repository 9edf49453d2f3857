"""Implicit state (Triton's sequence_batching.state) against the real server with Triton's clients:
the server feeds each sequence's last state output back as its state input, starting from the
initial state; the client never sends or sees them; a bad state configuration fails the load."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import requests
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests import models, sequence_models
from tests.conftest import RunningServer, serve

Step = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]  # (x, state) -> (y, new state)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = sequence_models.build_state(tmp_path_factory.mktemp("state"), idle_us=500_000)
    bad = {  # each fails its load with the reason named
        "bad_initial_dims": ("dims: [ 4 ]", 'initial_state: { data_type: TYPE_FP32 dims: [ 3 ] zero_data: true '
                                            'name: "z" }'),
        "bad_growable": ("dims: [ 4 ]", "use_growable_memory: true use_same_buffer_for_input_output: true"),
        "bad_data_file": ("dims: [ 4 ]", 'initial_state: { data_type: TYPE_FP32 dims: [ 4 ] data_file: "none.bin" '
                                         'name: "f" }'),
        "bad_state_name": ("dims: [ 4 ]", ""),
        "bad_short_file": ("dims: [ 4 ]", 'initial_state: { data_type: TYPE_FP32 dims: [ 4 ] data_file: "short.bin" '
                                          'name: "s" }'),
    }
    for name, (state_dims, initial) in bad.items():
        text = sequence_models.STATE_PBTXT % {
            "name": name, "platform": "onnxruntime_onnx", "max_batch_size": 0, "idle_us": 1_000_000,
            "strategy": "", "state_dims": state_dims.removeprefix("dims: [ ").removesuffix(" ]"), "initial": initial,
            "dims": "4"}
        if name == "bad_state_name":
            text = text.replace('input_name: "INPUT_STATE"', 'input_name: "STATE"')
        models.write(root / name / "config.pbtxt", text)
        (root / name / "1").mkdir(parents=True)
        (root / name / "1/model.onnx").write_bytes(sequence_models.accumulator_onnx(batching=False))
    (root / "bad_short_file/initial_state").mkdir()
    (root / "bad_short_file/initial_state/short.bin").write_bytes(b"abc")
    return root


@pytest.fixture(scope="module", params=[0, 1], ids=["one-process", "workers"])
def server(repo: Path, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    with serve(repo, "--workers", str(request.param), grpc=True) as running:
        yield running


def onnx_step(path: Path) -> Step:
    session = ort.InferenceSession(str(path))

    def step(x: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y, new_state = session.run(["OUTPUT", "OUTPUT_STATE"], {"INPUT": x, "INPUT_STATE": state})
        return y, new_state
    return step


def torch_step(path: Path) -> Step:
    module = torch.jit.load(str(path))  # type: ignore[no-untyped-call]

    def step(x: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y, new_state = module(torch.from_numpy(x), torch.from_numpy(state))
        return y.numpy(), new_state.numpy()
    return step


# model -> (in-process step, its first state, one request's input shape)
def cases(repo: Path) -> dict[str, tuple[Step, np.ndarray, tuple[int, ...]]]:
    return {
        "state_direct": (onnx_step(repo / "state_direct/1/model.onnx"), np.zeros((1, 4), np.float32), (1, 4)),
        "state_oldest": (onnx_step(repo / "state_oldest/1/model.onnx"),
                         np.array(sequence_models.INITIAL_STATE, np.float32), (4,)),
        "state_torch": (torch_step(repo / "state_torch/1/model.pt"), np.zeros((1, 1), np.float32), (1, 3)),
    }


def value(module: Any, array: np.ndarray) -> Any:
    given = module.InferInput("INPUT", list(array.shape), "FP32")
    given.set_data_from_numpy(array)
    return given


@pytest.mark.parametrize("model", ["state_direct", "state_oldest", "state_torch"])
def test_interleaved_sequences_keep_their_own_state(server: RunningServer, repo: Path, model: str) -> None:
    """Two sequences interleaved, one over HTTP and one over gRPC, twice each (the second time the
    same ids start again): every answer is what the model gives run step by step in-process from
    the initial state (zeros, or initial_state/start.bin), each sequence with its own state."""
    step, first, shape = cases(repo)[model]
    rng = np.random.default_rng(7)
    steps = 4
    inputs = {key: [rng.uniform(-5, 5, shape).astype(np.float32) for _ in range(steps)] for key in ("a", "b")}
    expected: dict[str, list[np.ndarray]] = {}
    for key, xs in inputs.items():
        state, answers = first, []
        for x in xs:
            y, state = step(x, state)
            answers.append(y)
        expected[key] = answers
    assert not np.allclose(expected["a"][-1], expected["b"][-1])  # the sequences' states differ
    with httpclient.InferenceServerClient(server.url) as h, grpcclient.InferenceServerClient(server.grpc_url) as g:
        for _ in range(2):
            got: dict[str, list[np.ndarray]] = {"a": [], "b": []}
            for index in range(steps):
                flags = {"sequence_start": index == 0, "sequence_end": index == steps - 1}
                answer = h.infer(model, [value(httpclient, inputs["a"][index])], sequence_id=101, **flags)
                assert answer.as_numpy("OUTPUT_STATE") is None
                got["a"].append(answer.as_numpy("OUTPUT"))
                answer = g.infer(model, [value(grpcclient, inputs["b"][index])], sequence_id="b-102", **flags)
                got["b"].append(answer.as_numpy("OUTPUT"))
            for key in ("a", "b"):
                for index, (want, have) in enumerate(zip(expected[key], got[key], strict=True)):
                    np.testing.assert_allclose(have, want, rtol=1e-6, err_msg=f"{model} sequence {key} step {index}")


@pytest.mark.parametrize("model", ["state_string", "state_string_torch"])
def test_a_string_state_starts_empty_and_follows_its_sequence(server: RunningServer, model: str) -> None:
    """A BYTES (TYPE_STRING) state, as Triton's QA onnx/libtorch_sequence_object models keep (a
    TorchScript model takes and gives strings as List[str]): each answer is the state the request
    found, the input before it in its sequence, and b"" at START; two sequences interleaved (one over
    HTTP, one over gRPC) keep theirs apart."""
    shape = [1, 1] if model == "state_string" else [1]
    words = {"a": [b"one", b"two", b"three"], "b": [b"uno", b"dos", b"tres"]}
    got: dict[str, list[bytes]] = {"a": [], "b": []}
    with httpclient.InferenceServerClient(server.url) as h, grpcclient.InferenceServerClient(server.grpc_url) as g:
        for index in range(3):
            flags = {"sequence_start": index == 0, "sequence_end": index == 2}
            for key, module, client, sequence_id in (("a", httpclient, h, 301), ("b", grpcclient, g, "s-302")):
                given = module.InferInput("INPUT", shape, "BYTES")
                given.set_data_from_numpy(np.full(shape, words[key][index], dtype=object))
                answer = client.infer(model, [given], sequence_id=sequence_id, **flags)
                got[key].append(answer.as_numpy("OUTPUT").reshape(-1)[0])
    assert got == {key: [b"", *sent[:2]] for key, sent in words.items()}


def test_the_state_tensors_are_the_servers(server: RunningServer) -> None:
    """Metadata lists neither state tensor; a request sending the state input, or asking for the
    state output, is a 400 (gRPC INVALID_ARGUMENT) that says so."""
    for model in ("state_direct", "state_oldest", "state_torch"):
        metadata = requests.get(f"{server.base}/v2/models/{model}", timeout=10).json()
        assert [t["name"] for t in metadata["inputs"]] == ["INPUT"]
        assert [t["name"] for t in metadata["outputs"]] == ["OUTPUT"]
    with httpclient.InferenceServerClient(server.url) as h, grpcclient.InferenceServerClient(server.grpc_url) as g:
        for client, module in ((h, httpclient), (g, grpcclient)):
            state = module.InferInput("INPUT_STATE", [4], "FP32")
            state.set_data_from_numpy(np.ones(4, np.float32))
            with pytest.raises(InferenceServerException) as caught:
                client.infer("state_oldest", [value(module, np.ones(4, np.float32)), state], sequence_id=5,
                             sequence_start=True)
            assert caught.value.status() in ("400", "StatusCode.INVALID_ARGUMENT"), caught.value
            assert ("input 'INPUT_STATE' of model 'state_oldest' is an implicit state (sequence_batching state), "
                    "kept by the server for each sequence, which the server supplies: do not send it; the model "
                    "takes 'INPUT' (FP32 [4])") in caught.value.message()
            with pytest.raises(InferenceServerException) as caught:
                client.infer("state_oldest", [value(module, np.ones(4, np.float32))], sequence_id=5,
                             sequence_start=True, outputs=[module.InferRequestedOutput("OUTPUT_STATE")])
            assert caught.value.status() in ("400", "StatusCode.INVALID_ARGUMENT"), caught.value
            assert "unexpected inference output 'OUTPUT_STATE' for model" in caught.value.message()


def test_the_configuration_shows_the_state(server: RunningServer) -> None:
    config = requests.get(f"{server.base}/v2/models/state_oldest/config", timeout=10).json()
    assert [t["name"] for t in config["input"]] == ["INPUT"]
    assert config["sequence_batching"]["state"] == [{
        "input_name": "INPUT_STATE", "output_name": "OUTPUT_STATE", "data_type": "TYPE_FP32", "dims": [4],
        "initial_state": [{"data_type": "TYPE_FP32", "dims": [4], "data_file": "start.bin", "name": "start"}],
        "use_same_buffer_for_input_output": False, "use_growable_memory": False}]
    assert "oldest" in config["sequence_batching"]
    with grpcclient.InferenceServerClient(server.grpc_url) as g:
        state = g.get_model_config("state_direct").config.sequence_batching.state
    assert [(s.input_name, s.output_name, list(s.dims), s.initial_state[0].zero_data, s.initial_state[0].name)
            for s in state] == [("INPUT_STATE", "OUTPUT_STATE", [4], True, "zeros")]


def test_a_bad_state_configuration_fails_the_load(server: RunningServer) -> None:
    index = requests.post(f"{server.base}/v2/repository/index", json={}, timeout=10).json()
    rows = {row["name"]: row for row in index}
    reasons = {name: rows[name].get("reason", "") for name in rows if name.startswith("bad_")}
    assert all(rows[name]["state"] == "UNAVAILABLE" for name in reasons), rows
    assert ("sequence_batching state 'INPUT_STATE': initial_state dims [3] must be fixed sizes (no -1) that fit "
            "the state's dims [4]") in reasons["bad_initial_dims"]
    assert "'use_growable_memory' is not served" in reasons["bad_growable"]
    assert "initial_state data_file" in reasons["bad_data_file"] and "none.bin" in reasons["bad_data_file"]
    assert "initial_state FP32 [4] needs 16 bytes" in reasons["bad_short_file"]
    assert "short.bin has 3" in reasons["bad_short_file"]
    assert "declares input 'STATE' but the ONNX model has ['INPUT', 'INPUT_STATE']" in reasons["bad_state_name"]


def test_an_idle_sequences_state_is_dropped(server: RunningServer) -> None:
    """Past max_sequence_idle_microseconds (500 ms) the sequence and its state are gone: its next
    request is refused as one without START, and a START begins again from initial_state."""
    initial = np.array(sequence_models.INITIAL_STATE, np.float32)
    ones = np.ones(4, np.float32)
    with httpclient.InferenceServerClient(server.url) as h:
        first = h.infer("state_oldest", [value(httpclient, ones)], sequence_id=77, sequence_start=True)
        np.testing.assert_allclose(first.as_numpy("OUTPUT"), initial + 1)
        second = h.infer("state_oldest", [value(httpclient, ones)], sequence_id=77)
        np.testing.assert_allclose(second.as_numpy("OUTPUT"), initial + 2)
        time.sleep(1.0)
        with pytest.raises(InferenceServerException) as caught:
            h.infer("state_oldest", [value(httpclient, ones)], sequence_id=77)
        assert "must specify the START flag" in caught.value.message()
        again = h.infer("state_oldest", [value(httpclient, ones)], sequence_id=77, sequence_start=True,
                        sequence_end=True)
        np.testing.assert_allclose(again.as_numpy("OUTPUT"), initial + 1)
