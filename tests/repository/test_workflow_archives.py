"""Reading TorchServe workflow specifications: settings, overrides, the DAG's checks."""

from __future__ import annotations

import time

import pytest

from inferd.errors import InvalidInput
from inferd.repository.workflow_archives import NodeSettings, parse_spec

SPEC = """
models:
    min-workers: 2
    max-workers: 3
    batch-size: 4
    retry-attempts: 0
    m1:
       url: model1.mar
       batch-size: 8
    m2:
       url: https://example.com/model2.mar
dag:
  pre: [m1, m2]
  m1: [post]
  m2: [post]
"""


def test_settings_defaults_and_overrides() -> None:
    spec = parse_spec(SPEC, "spec.yaml")
    assert spec.settings == NodeSettings(2, 3, 4, 50, 0, 10000)  # max-batch-delay, timeout-ms: TorchServe's defaults
    assert spec.models["m1"] == ("model1.mar", NodeSettings(2, 3, 8, 50, 0, 10000))
    assert spec.models["m2"][0] == "https://example.com/model2.mar"
    assert spec.nodes == ("pre", "m1", "m2", "post")
    assert spec.functions == ("pre", "post")
    assert spec.predecessors("post") == ("m1", "m2")
    assert spec.dag_text == "{pre=[m1, m2], m1=[post], m2=[post]}"  # as TorchServe's describe shows it


@pytest.mark.parametrize(("text", "named"), [
    ("models: {}\n", "'dag'"),
    ("dag:\n  a: [b]\n", "'models'"),
    ("models: {}\ndag:\n  a: [b]\n  b: [a]\n", "start node"),
    ("models: {}\ndag:\n  a: [b, c]\n  b: [d]\n  d: [b]\n", "loop"),
    ("models: {}\ndag:\n  a: [a]\n", "dag.a"),
    ("models: {}\ndag:\n  a: b\n", "dag.a"),
    ("models:\n  m1: {batch-size: 2}\ndag:\n  m1: []\n", "models.m1"),
    ("models:\n  m1: {url: m.mar, workers: 2}\ndag:\n  m1: []\n", "'workers'"),
    ("models:\n  batch-size: -1\ndag:\n  a: []\n", "batch-size"),
    ("models:\n  min-workers: 3\n  max-workers: 1\ndag:\n  a: []\n", "max-workers"),
    ("models: [\n", "YAML"),
])
def test_broken_specs_name_the_key(text: str, named: str) -> None:
    with pytest.raises(InvalidInput, match=None) as raised:
        parse_spec(text, "spec.yaml")
    assert named in raised.value.message and "spec.yaml" in raised.value.message


def billion_laughs(levels: int) -> str:
    """A spec of under 1 KB whose models.m is, through YAML aliases, 9**levels strings."""
    lines = ['  x0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  x{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 9) + "]" for n in range(1, levels)]
    return "anchors:\n" + "\n".join(lines) + f"\nmodels:\n  m: *a{levels - 1}\ndag:\n  m: []\n"


def test_a_yaml_bomb_is_refused_with_a_short_message() -> None:
    began = time.monotonic()
    with pytest.raises(InvalidInput) as raised:
        parse_spec(billion_laughs(9), "spec.yaml")  # models.m's full repr would be 2.8 GB
    assert time.monotonic() - began < 2
    assert len(raised.value.message) < 2000 and "spec.yaml" in raised.value.message


def test_yaml_nested_past_the_parsers_depth_is_a_clear_refusal() -> None:
    with pytest.raises(InvalidInput, match="nests too deeply"):
        parse_spec("models: " + "[" * 50_000 + "]" * 50_000 + "\ndag: {a: []}\n", "spec.yaml")
