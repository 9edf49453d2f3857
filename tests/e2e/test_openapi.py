"""The published OpenAPI document, checked against a live server by schemathesis: for generated
requests to every route, no 5xx, only declared status codes, and bodies of the declared shape."""

from __future__ import annotations

import copy

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import serve
from tests.models import PYTHON_CONFIG, PYTHON_MODEL, mlp, write

MODELS = ["mlp_onnx", "py_double"]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    import torch

    root = tmp_path_factory.mktemp("openapi")
    (root / "mlp_onnx/1").mkdir(parents=True)
    torch.onnx.export(mlp(), (torch.randn(2, 8),), str(root / "mlp_onnx/1/model.onnx"), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False)
    write(root / "mlp_onnx/config.toml", "max_batch_size = 16\n")
    write(root / "py_double/1/model.py", PYTHON_MODEL.replace("raise ValueError", "return {}  #"))
    write(root / "py_double/config.toml", PYTHON_CONFIG)
    with serve(root) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(live):
    document = requests.get(f"{live.base}/openapi.json", timeout=10).json()
    # half the generated requests name a served model, so infer and metadata get past the 404
    targeted = copy.deepcopy(document)
    for operations in targeted["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "model" and parameter["in"] == "path":
                    parameter["schema"] = {"anyOf": [{"enum": MODELS}, {"type": "string", "minLength": 1}]}
    schema = schemathesis.openapi.from_dict(targeted)
    schema.config.update(base_url=live.base)
    return schema


def test_the_document_describes_every_protocol(live) -> None:
    document = requests.get(f"{live.base}/openapi.json", timeout=10).json()
    assert document["openapi"].startswith("3.")
    for path in ("/v2/models/{model}/infer", "/v1/models/{model}:predict", "/predictions/{model}", "/metrics",
                 "/v2/repository/index", "/models/{model}"):
        assert path in document["paths"], path


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_requests_get_declared_answers_and_never_a_server_error(case, live) -> None:
    case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                   response_schema_conformance], timeout=30)
    assert requests.get(f"{live.base}/v2/health/ready", timeout=10).status_code == 200
