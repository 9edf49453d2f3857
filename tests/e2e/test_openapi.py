"""The published OpenAPI document, checked against a live server by schemathesis: for generated
requests to every route, no 5xx, only declared status codes, and bodies of the declared shape."""

from __future__ import annotations

import copy
import os

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import serve
from tests.models import PYTHON_CONFIG, PYTHON_MODEL, mlp, write

MODELS = ["mlp_onnx", "py_double"]
EXAMPLES = int(os.environ.get("INFERD_API_EXAMPLES", "25"))  # per operation; raise it to hunt longer


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


def schema_for(live, document: dict) -> schemathesis.schemas.BaseSchema:
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=live.base)
    return schema


@pytest.fixture(scope="module")
def api_schemas(live) -> list:
    """The document as served (any model name), and a copy whose model names are the served models,
    so infer, metadata and predict requests get past the 404 to the decoders."""
    document = requests.get(f"{live.base}/openapi.json", timeout=10).json()
    targeted = copy.deepcopy(document)
    for operations in targeted["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "model" and parameter["in"] == "path":
                    parameter["schema"] = {"type": "string", "enum": MODELS}
    return [schema_for(live, document), schema_for(live, targeted)]


def test_the_document_describes_every_protocol(live) -> None:
    document = requests.get(f"{live.base}/openapi.json", timeout=10).json()
    assert document["openapi"].startswith("3.")
    for path in ("/v2/models/{model}/infer", "/v1/models/{model}:predict", "/predictions/{model}", "/metrics",
                 "/v2/repository/index", "/models/{model}"):
        assert path in document["paths"], path


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.parametrize("which", [0, 1], ids=["any-model", "served-models"])
def test_generated_requests_get_declared_answers_and_never_a_server_error(api_schemas, live, which: int) -> None:
    """Every operation, 25 generated requests each, for any model name and for served ones
    (hypothesis drives schemathesis's strategies directly: the same under any pytest version)."""
    operations = [result.ok() for result in api_schemas[which].get_all_operations()]
    assert len(operations) > 30
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case) -> None:  # type: ignore[no-untyped-def]
            case.call_and_validate(checks=CHECKS, timeout=30)

        call()
    assert requests.get(f"{live.base}/v2/health/ready", timeout=10).status_code == 200
