"""deploy/kserve validated against KServe's own CRD schemas (vendored at a recorded commit, see
kserve_crds/SOURCE.md), strictly: a field KServe does not know fails, as `kubectl apply
--validate=strict` would refuse it."""

from __future__ import annotations

import copy
import functools
import gzip
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import ROOT

CRDS = Path(__file__).with_name("kserve_crds")
KSERVE = ROOT / "deploy/kserve"
EXAMPLES = ["servingruntime.yaml", "inferenceservice-http.yaml", "inferenceservice-grpc.yaml",
            "inferenceservice-repository.yaml"]


def strict(schema: Any) -> Any:
    """Objects with declared properties take no others, unless the CRD keeps unknown fields."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@functools.cache
def validator(kind: str, version: str) -> jsonschema.Draft7Validator:
    plural = {"ServingRuntime": "servingruntimes", "InferenceService": "inferenceservices"}[kind]
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the InferenceService CRD is 2 MB
    crd = yaml.load(gzip.decompress((CRDS / f"serving.kserve.io_{plural}.yaml.gz").read_bytes()), Loader=loader)
    assert crd["spec"]["names"]["kind"] == kind
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert entry["served"], f"{kind} {version} is not served by this KServe"
    return jsonschema.Draft7Validator(strict(entry["schema"]["openAPIV3Schema"]))


def check(doc: dict[str, Any]) -> None:
    validator(doc["kind"], doc["apiVersion"].split("/")[1]).validate(doc)


def example(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((KSERVE / name).read_text()))


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_match_kserves_crds(name: str) -> None:
    check(example(name))


@pytest.mark.parametrize(("name", "path"), [
    ("servingruntime.yaml", ("spec", "supportedModelFormats", 0)),
    ("servingruntime.yaml", ("spec", "containers", 0)),
    ("inferenceservice-http.yaml", ("spec", "predictor", "model")),
    ("inferenceservice-grpc.yaml", ("spec", "predictor")),
])
def test_unknown_fields_are_rejected(name: str, path: tuple[str | int, ...]) -> None:
    doc = copy.deepcopy(example(name))
    node: Any = doc
    for key in path:
        node = node[key]
    node["protocolVersoin"] = "v2"  # a typo KServe would not know
    with pytest.raises(jsonschema.ValidationError, match="protocolVersoin"):
        check(doc)


def test_wrong_types_are_rejected() -> None:
    doc = example("servingruntime.yaml")
    doc["spec"]["supportedModelFormats"][0]["autoSelect"] = "no"
    with pytest.raises(jsonschema.ValidationError):
        check(doc)
