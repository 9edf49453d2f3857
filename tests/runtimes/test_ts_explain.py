"""TorchServe's explanations and customized describe in the handler runtime, run in process:
BaseHandler's ``_is_explain``/``_is_describe``/``explain_handle``/``describe_handle``, a batch
mixing predictions, explanations and describes, and the codec's part (headers, customizedMetadata)."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch

from inferd.protocols import torchserve
from inferd.runtimes import handler
from inferd.runtimes.builtin_handlers import BaseHandler, VisionHandler
from inferd.runtimes.torchserve import read_manifest
from inferd.runtimes.ts_context import Context
from inferd.types import InferResponse, Tensor
from tests import ts_archives

VALUES = [1.0, -2.0, 0.5, 3.0]


def requests_of(*rows: tuple[bytes, dict[str, str]]) -> dict[str, np.ndarray]:
    """The handler model's inputs for these (body, headers) requests, as decode_prediction builds them."""
    decoded = [torchserve.decode_prediction(body, "application/json", "m", None, headers) for body, headers in rows]
    return {name: np.concatenate([next(t.data for t in r.inputs if t.name == name) for r in decoded])
            for name in ("body", "content_type")}


@pytest.fixture
def explainer(tmp_path: Path) -> Iterator[handler.HandlerRuntime]:
    """The e2e tests' ExplainingHandler over the doubler's weights, as its archive holds them."""
    ts_archives.build_explain_store(tmp_path / "built")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("model.py", "doubler.pth", "explaining_handler.py"):
        shutil.copy(tmp_path / "built" / "work" / name, model_dir / name)
    (model_dir / "MAR-INF").mkdir()
    (model_dir / "MAR-INF" / "MANIFEST.json").write_text(json.dumps({"model": {
        "modelName": "explainer", "handler": "explaining_handler.py", "modelFile": "model.py",
        "serializedFile": "doubler.pth"}}))
    try:
        yield handler.build("explainer", model_dir, read_manifest(model_dir), 4, None)
    finally:
        sys.path.remove(str(model_dir))
        sys.modules.pop("explaining_handler", None)


def answers(outputs: dict[str, np.ndarray]) -> list[Any]:
    return [orjson.loads(bytes(body)) for body in outputs["output"]]


def test_the_explain_header_runs_explain_handle_instead_of_inference(explainer: handler.HandlerRuntime,
                                                                     tmp_path: Path) -> None:
    body = json.dumps({"values": VALUES, "target": 1}).encode()
    explained = answers(explainer.infer(requests_of((body, {"explain": "True"}))))[0]
    expected = ts_archives.doubler_attributions(tmp_path / "built" / "work", VALUES, 1)
    np.testing.assert_allclose(explained["attributions"], expected, rtol=1e-5, atol=1e-6)
    predicted = answers(explainer.infer(requests_of((body, {"explain": "False"}), (body, {}))))
    scores = ts_archives.doubler_in_process(tmp_path / "built" / "work", [VALUES])[0]
    for answer in predicted:
        np.testing.assert_allclose(answer["scores"], scores, rtol=1e-5)
        assert answer["n"] == 2


def test_a_mixed_batch_is_handled_once_per_kind_in_its_order(explainer: handler.HandlerRuntime) -> None:
    body = json.dumps({"values": VALUES}).encode()
    outputs = explainer.infer(requests_of((body, {"explain": "False"}), (body, {"explain": "True"}),
                                          (b"", {"describe": "True"}), (body, {"explain": "False"}),
                                          (body, {"explain": "True"})))
    got = answers(outputs)
    assert [sorted(a) for a in got[:2]] == [["explain", "n", "scores"], ["attributions", "explain", "n", "target"]]
    assert got[2] == {"handler": "ExplainingHandler", "inputs": 4, "explains": "input x gradient"}
    assert got[3] == got[0] and got[4] == got[1]
    assert [got[i]["n"] for i in (0, 1, 3, 4)] == [2, 2, 2, 2]  # each kind's two requests were one batch
    assert outputs["status"].tolist() == [200] * 5


def test_describes_batched_together_are_each_answered_alone(explainer: handler.HandlerRuntime) -> None:
    outputs = explainer.infer(requests_of((b"", {"describe": "True"}), (b"", {"describe": "True"})))
    assert answers(outputs) == [{"handler": "ExplainingHandler", "inputs": 4, "explains": "input x gradient"}] * 2


def test_a_kind_that_fails_fails_only_its_own_requests() -> None:
    def handle(data: list[dict[str, Any]], context: Context) -> list[str]:
        if context.get_request_header(0, "explain") == "True":
            raise ValueError("cannot explain")
        return ["predicted"] * len(data)

    runtime = handler.HandlerRuntime(handle, Context("m", ".", {"model": {}}, 4, None), 4, "m")
    outputs = runtime.infer(requests_of((b"1", {"explain": "False"}), (b"2", {"explain": "True"})))
    assert outputs["status"].tolist() == [200, 503]
    assert bytes(outputs["output"][0]) == b"predicted"
    failed = orjson.loads(bytes(outputs["output"][1]))
    assert failed["code"] == 503 and "model 'm' failed: ValueError: cannot explain" in failed["message"]
    with pytest.raises(ValueError, match="cannot explain"):  # alone, the batch fails as any other
        runtime.infer(requests_of((b"2", {"explain": "True"})))


class _Plain(BaseHandler):
    def preprocess(self, data: list[dict[str, Any]]) -> Any:
        return data


def _context(headers: dict[str, str]) -> Context:
    context = Context("m", ".", {"model": {}}, 1, None)
    context._start_batch([headers])
    return context


def test_a_base_handler_without_get_insights_says_it_cannot_explain() -> None:
    with pytest.raises(NotImplementedError, match="_Plain cannot explain: it defines neither explain_handle"):
        _Plain().handle([{"body": b"x"}], _context({"explain": "True"}))
    plain = _Plain()
    assert plain.handle([{}], _context({"describe": "True"})) == [None]  # describe_handle's default
    assert not plain._is_explain() and plain._is_describe() and not plain.explain


def test_explain_handle_hands_get_insights_the_first_requests_data_and_target() -> None:
    seen: list[Any] = []

    class Insightful(_Plain):
        def get_insights(self, tensor_data: Any, inputs: Any, target: Any = 0) -> list[Any]:
            seen.append((tensor_data, inputs, target))
            return [[0.5]]

    handler_ = Insightful()
    rows = [{"data": b"picture", "target": 3}]
    assert handler_.handle(rows, _context({"explain": "True"})) == [[0.5]]
    assert seen == [(rows, b"picture", 3)] and handler_.explain
    handler_.handle([{"body": b"x"}], _context({"explain": "True"}))
    assert seen[-1][1:] == (b"x", 0)  # no target: 0, as TorchServe's


class _Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.fc = torch.nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(x, 1))


def test_the_image_handlers_get_insights_is_captums_integrated_gradients() -> None:
    """TorchServe's VisionHandler.get_insights; IntegratedGradients' completeness: the attributions
    add up to F(x) - F(0) for the target."""
    pytest.importorskip("captum")
    vision = VisionHandler()
    vision.model = _Linear().eval()
    x = torch.randn(1, 3, 2, 2)
    attributions = torch.tensor(vision.get_insights(x, None, 2))
    assert attributions.shape == x.shape
    with torch.no_grad():
        expected = (vision.model(x) - vision.model(torch.zeros_like(x)))[0, 2]
    assert float(attributions.sum()) == pytest.approx(float(expected), rel=1e-4)


def test_without_captum_the_image_handlers_explanations_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("captum", "captum.attr"):  # as on a machine without it (None: an import raises ImportError)
        monkeypatch.setitem(sys.modules, module, None)
    vision = VisionHandler()
    vision.model = _Linear().eval()
    with pytest.raises(RuntimeError, match=r"need captum \(pip install captum\)"):
        vision.get_insights(torch.zeros(1, 3, 2, 2), None, 0)


def test_the_explain_header_is_the_routes_not_the_clients() -> None:
    assert torchserve.with_explain({"Explain": "True", "x-trace": "1"}, False) == {"x-trace": "1", "explain": "False"}
    assert torchserve.with_explain({}, True) == {"explain": "True"}
    request = torchserve.decode_describe("m", "1.0")
    content_type = next(t.data[0] for t in request.inputs if t.name == "content_type")
    assert content_type == b"\r\ndescribe: True" and request.model_version == "1.0"


@pytest.mark.parametrize(("body", "metadata"), [
    (b'{"a": 1}', {"a": 1}), (b"null", None), (b"", None), (b"[1, 2]", {}), (b'"text"', {}), (b"not json", {}),
])
def test_customized_metadata_is_what_torchserves_front_end_makes_of_the_answer(body: bytes, metadata: Any) -> None:
    array = np.empty(1, dtype=object)
    array[0] = body
    response = InferResponse("m", "1", [Tensor("output", "BYTES", array)])
    assert torchserve.customized_metadata(response) == metadata


def test_a_function_handler_gets_an_empty_row_for_a_describe() -> None:
    seen: list[Any] = []

    def handle(data: list[dict[str, Any]], context: Context) -> list[Any]:
        seen.extend(data)
        return [{"rows": len(data)}]

    runtime = handler.HandlerRuntime(handle, Context("m", ".", {"model": {}}, 1, None), 1, "m")
    request = torchserve.decode_describe("m", None)
    runtime.infer({t.name: t.data for t in request.inputs})
    assert seen == [{}]  # TorchServe's describe job carries no parameters
