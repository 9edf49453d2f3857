"""KServe's admission webhook for ServingRuntimes, its rules rewritten as checks (read from
pkg/webhook/admission/servingruntime/servingruntime_webhook.go and pkg/validation/env_policy.go at
the kserve commit in kserve_crds/SOURCE.md; KServe's own webhook is Go and is not run here).

A runtime is checked against the runtimes beside it: KServe's stock runtimes (what
config/runtimes at that commit declares, summarised in kserve_stock_runtimes.py). The rules are
first checked on the stock runtimes themselves, which KServe installs together and must all be
admitted."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.deploy.kserve_stock_runtimes import STOCK_RUNTIMES

OURS = ROOT / "deploy/kserve/servingruntime.yaml"
BLOCKED_ENV = ("PYTHONPATH",)  # validation.DefaultBlockedEnvVars
Runtime = dict[str, Any]


def stock() -> list[Runtime]:
    return copy.deepcopy(STOCK_RUNTIMES)


def ours() -> Runtime:
    return dict(yaml.safe_load(OURS.read_text()))


def auto(fmt: dict[str, Any]) -> bool:
    return fmt.get("autoSelect") is True


def same_format(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """areSupportedModelFormatsEqual: names equal ignoring case, versions equal (or both unset)."""
    return str(a["name"]).lower() == str(b["name"]).lower() and a.get("version") == b.get("version")


def priorities_differ(spec: dict[str, Any]) -> str | None:
    """validateModelFormatPrioritySame: one runtime's auto-selectable entries of a format name
    (e.g. two versions) carry one priority."""
    seen: dict[str, int | None] = {}
    for fmt in spec.get("supportedModelFormats", []):
        if not auto(fmt):
            continue
        if fmt["name"] in seen:
            before, now = seen[fmt["name"]], fmt.get("priority")
            if before is not None and now is not None and before != now:
                return f"different priorities assigned for the model format {fmt['name']}"
        else:
            seen[fmt["name"]] = fmt.get("priority")
    return None


def priority_clash(new: Runtime, existing: Runtime) -> str | None:
    """validateServingRuntimePriority: two enabled runtimes of the same kind (single or multi
    model) sharing a protocol version may not both auto-select a format at one priority."""
    a, b = new["spec"], existing["spec"]
    if (bool(a.get("multiModel")) != bool(b.get("multiModel")) or b.get("disabled")
            or new["metadata"]["name"] == existing["metadata"]["name"]):
        return None
    if not set(a.get("protocolVersions") or []) & set(b.get("protocolVersions") or []):
        return None
    for theirs in b.get("supportedModelFormats", []):
        for mine in a.get("supportedModelFormats", []):
            if (auto(theirs) and auto(mine) and same_format(theirs, mine) and theirs.get("priority") is not None
                    and theirs.get("priority") == mine.get("priority")):
                return f"same priority assigned for the model format {mine['name']}"
    return None


def multi_node(spec: dict[str, Any]) -> str | None:
    """validateMultiNodeSpec, the parts that need no GPU resource table (inferd has no workerSpec)."""
    worker = spec.get("workerSpec")
    if worker is None:
        return None
    if len(worker.get("containers", [])) > 1:
        return "setting multiple containers in workerSpec is not allowed"
    for container in spec.get("containers", []):
        if container["name"] == "kserve-container":
            names = {env["name"] for env in container.get("env", [])}
            if "PIPELINE_PARALLEL_SIZE" in names:
                return "setting PIPELINE_PARALLEL_SIZE in environment variables is not allowed"
            if "TENSOR_PARALLEL_SIZE" in names:
                return "setting TENSOR_PARALLEL_SIZE in environment variables is not allowed"
    for field in ("pipelineParallelSize", "tensorParallelSize"):
        if worker.get(field, 1) < 1:
            return f"the WorkerSpec.{field[0].upper()}{field[1:]} cannot be less than 1({worker[field]})"
    return None


def blocked_env(spec: dict[str, Any]) -> str | None:
    """validateBlockedEnvVars: in the containers and the workerSpec's."""
    for container in [*spec.get("containers", []), *(spec.get("workerSpec") or {}).get("containers", [])]:
        for env in container.get("env", []):
            if env["name"] in BLOCKED_ENV:
                return (f"setting {env['name']} in container \"{container['name']}\" is not allowed for "
                        "security reasons")
    return None


def admit(new: Runtime, existing: list[Runtime], namespace: str = "default") -> str | None:
    """The webhook's answer for ``new`` created beside ``existing`` (same kind): None when
    allowed, else KServe's denial message. Handle() for both kinds, in its order."""
    spec, name, kind = new["spec"], new["metadata"]["name"], new["kind"]
    if spec.get("disabled"):
        return None
    for other in existing:
        if (why := priorities_differ(spec)) is not None:
            return f"{why} under the {kind.lower()} {name}"
        if (why := priority_clash(new, other)) is not None:
            where = (f"in the servingruntimes {other['metadata']['name']} and {name} in namespace {namespace}"
                     if kind == "ServingRuntime" else f"in the clusterservingruntimes {other['metadata']['name']} "
                     f"and {name}")
            return f"{why} {where}"
    if (why := multi_node(spec)) is not None:
        return f"the {kind} {name} is invalid: {why}"
    if (why := blocked_env(spec)) is not None:
        return f'the {kind} "{name}" is invalid: {why}'
    return None


def as_kind(runtime: Runtime, kind: str) -> Runtime:
    return {**runtime, "kind": kind}


def test_the_stock_runtimes_are_admitted_together() -> None:
    runtimes = stock()
    assert {r["metadata"]["name"] for r in runtimes} >= {"kserve-tritonserver", "kserve-torchserve",
                                                          "kserve-tensorflow-serving", "kserve-mlserver"}
    for index, runtime in enumerate(runtimes):
        assert admit(runtime, runtimes[:index]) is None, runtime["metadata"]["name"]


@pytest.mark.parametrize("kind", ["ServingRuntime", "ClusterServingRuntime"])
def test_inferd_is_admitted_beside_every_stock_runtime(kind: str) -> None:
    """Installed in a namespace beside the stock runtimes (as namespaced copies), or as a cluster
    runtime beside them: no clash, whatever the order."""
    runtimes = [as_kind(r, kind) for r in stock()]
    mine = as_kind(ours(), kind)
    assert admit(mine, runtimes) is None
    for runtime in runtimes:
        assert admit(runtime, [mine]) is None, runtime["metadata"]["name"]


def test_auto_selection_at_tritons_priority_is_denied() -> None:
    """What KServe refuses if inferd's onnx entry were auto-selected at the stock Triton runtime's
    priority for onnx (both speak v2 and grpc-v2)."""
    mine = ours()
    onnx = next(f for f in mine["spec"]["supportedModelFormats"] if f["name"] == "onnx")
    triton = next(r for r in stock() if r["metadata"]["name"] == "kserve-tritonserver")
    tritons = next(f for f in triton["spec"]["supportedModelFormats"] if same_format(f, onnx))
    onnx.update(autoSelect=True, priority=tritons["priority"])
    assert admit(mine, [triton]) == ("same priority assigned for the model format onnx in the servingruntimes "
                                     "kserve-tritonserver and inferd in namespace default")
    onnx["priority"] = tritons["priority"] + 1  # a priority of its own: admitted
    assert admit(mine, [triton]) is None
    mine["spec"]["protocolVersions"] = ["v1"]  # no protocol in common: no clash at any priority
    onnx["priority"] = tritons["priority"]
    assert admit(mine, [triton]) is None


def test_one_runtimes_versions_of_a_format_share_a_priority() -> None:
    mine = ours()
    formats = [f for f in mine["spec"]["supportedModelFormats"] if f["name"] == "pytorch"]
    assert len(formats) == 2
    formats[0].update(autoSelect=True, priority=3)
    formats[1].update(autoSelect=True, priority=4)
    assert admit(mine, stock()) == "different priorities assigned for the model format pytorch under the " \
                                   "servingruntime inferd"
    formats[1]["priority"] = 3
    assert admit(mine, stock()) is None


def test_blocked_environment_is_denied() -> None:
    mine = ours()
    container = mine["spec"]["containers"][0]
    assert all(env["name"] not in BLOCKED_ENV for env in container.get("env", []))
    bad = copy.deepcopy(mine)
    bad["spec"]["containers"][0].setdefault("env", []).append({"name": "PYTHONPATH", "value": "/x"})
    assert admit(bad, stock()) == ('the ServingRuntime "inferd" is invalid: setting PYTHONPATH in container '
                                   '"kserve-container" is not allowed for security reasons')


def test_a_disabled_runtime_is_not_checked() -> None:
    mine = ours()
    mine["spec"]["disabled"] = True
    mine["spec"]["containers"][0].setdefault("env", []).append({"name": "PYTHONPATH", "value": "/x"})
    assert admit(mine, stock()) is None
