"""deploy/kubernetes and deploy/kserve: validated against Kubernetes' OpenAPI schemas (strict: unknown
fields fail) from the kubernetes-validate package, their wiring checked, and every container's
arguments parsed by inferd's own command line.

ServingRuntime and InferenceService are also checked here in two parts: their Kubernetes parts
(containers, volumes, probes, ports) as a strict Pod, and KServe's own fields by the rules below
(formats, protocols, autoSelect); test_kserve_crds.py validates them whole against KServe's CRDs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from inferd.cli import _parser
from tests.conftest import ROOT

K8S = "1.33.0"  # the schema version validated against (kubernetes-validate bundles 1.x up to its own)
DEPLOY = ROOT / "deploy"
KSERVE_FORMATS = {"onnx", "pytorch", "tensorflow", "triton"}
KSERVE_PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}  # ServingRuntime.spec.protocolVersions' values


def load(path: Path) -> dict[str, Any]:
    (doc,) = list(yaml.safe_load_all(path.read_text()))
    return dict(doc)


def kube(name: str) -> dict[str, Any]:
    return load(DEPLOY / "kubernetes" / name)


def validate(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S, strict=True)


def as_pod(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": spec}


@pytest.mark.parametrize("name", ["deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"])
def test_kubernetes_manifests_are_valid(name: str) -> None:
    validate(kube(name))


def test_validation_rejects_unknown_fields() -> None:
    doc = kube("deployment.yaml")
    doc["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(doc)


def serve_args(container: dict[str, Any]) -> Any:
    """The container's args as the image's `inferd serve` entrypoint reads them."""
    args = [a.replace("{{.Name}}", "mlp") for a in container["args"]]
    return _parser().parse_args(["serve", *args])


def test_deployment_service_hpa_pdb_fit_together() -> None:
    deployment, service, hpa, pdb = (kube(n) for n in ("deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"))
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (service["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"],
                     deployment["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Resource", "Pods"}
    pods = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods == ["inferd_queue_depth"]
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"]

    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = serve_args(container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (args.http_port, args.grpc_port, args.host) == (ports["http"], ports["grpc"], "0.0.0.0")
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    assert container["readinessProbe"]["grpc"]["port"] == args.grpc_port
    # a rolling update drops nothing: no pod leaves before its successor is ready, and the old
    # one has time to leave the endpoints (preStop) and drain before it is killed
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 5 and pod["terminationGracePeriodSeconds"] >= pre_stop + args.drain_timeout + 10
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert str(args.model_repository) in mounts
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0


def runtime() -> dict[str, Any]:
    return load(DEPLOY / "kserve/servingruntime.yaml")


def test_serving_runtime_kubernetes_parts_are_a_valid_pod() -> None:
    spec = runtime()["spec"]
    validate(as_pod({"containers": spec["containers"], "volumes": spec["volumes"]}))


def test_serving_runtime_as_kserve_expects() -> None:
    doc = runtime()
    assert (doc["apiVersion"], doc["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    spec = doc["spec"]
    assert set(spec) <= {"supportedModelFormats", "protocolVersions", "containers", "volumes", "annotations",
                         "multiModel", "disabled", "nodeSelector", "affinity", "tolerations", "imagePullSecrets",
                         "labels", "builtInAdapter", "grpcEndpoint", "grpcDataEndpoint", "replicas",
                         "storageHelper", "httpDataEndpoint", "hostIPC", "workerSpec"}
    formats = spec["supportedModelFormats"]
    assert {f["name"] for f in formats} == KSERVE_FORMATS
    for fmt in formats:
        assert set(fmt) <= {"name", "version", "autoSelect", "priority"} and isinstance(fmt["version"], str)
        # chosen by name only: no priority to clash with the stock runtimes' under KServe's webhook
        assert fmt["autoSelect"] is False and "priority" not in fmt
    assert spec["protocolVersions"] == ["v2", "grpc-v2"] and set(spec["protocolVersions"]) <= KSERVE_PROTOCOLS
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"  # the name KServe merges the predictor into
    args = serve_args(container)
    assert (str(args.model_repository), args.model_name) == ("/mnt/models", "mlp")
    assert "--model-name={{.Name}}" in container["args"]
    assert (args.http_port, args.grpc_port) == (8080, 9000)  # KServe's HTTP port and h2c port
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert spec["annotations"]["prometheus.kserve.io/port"] == "8080"


@pytest.mark.parametrize("name", ["inferenceservice-http.yaml", "inferenceservice-grpc.yaml",
                                  "inferenceservice-repository.yaml"])
def test_inference_services(name: str) -> None:
    doc = load(DEPLOY / "kserve" / name)
    assert (doc["apiVersion"], doc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    model = dict(doc["spec"]["predictor"]["model"])
    assert model.pop("runtime") == runtime()["metadata"]["name"]
    assert model.pop("modelFormat")["name"] in {f["name"] for f in runtime()["spec"]["supportedModelFormats"]}
    assert model.pop("protocolVersion") in runtime()["spec"]["protocolVersions"]
    assert model.pop("storageUri").startswith(("gs://", "s3://", "pvc://", "https://"))
    # what is left are a container's fields: valid as a strict Pod's container
    validate(as_pod({"containers": [{"name": "kserve-container", "image": "inferd", **model}]}))
    if doc["spec"]["predictor"]["model"]["protocolVersion"] == "grpc-v2":
        (port,) = model["ports"]
        grpc_port = serve_args(runtime()["spec"]["containers"][0]).grpc_port
        assert (port["name"], port["containerPort"]) == ("h2c", grpc_port)
        assert model["readinessProbe"]["grpc"]["port"] == port["containerPort"]


def test_prometheus_adapter_rule_names_the_metric_inferd_exports() -> None:
    from inferd.observability.metrics import Metrics

    rules = yaml.safe_load((DEPLOY / "kubernetes/prometheus-adapter-rules.yaml").read_text())
    (rule,) = rules["rules"]["custom"]
    exported = {m.name for m in Metrics().registry.collect()}
    assert rule["name"]["as"] == "inferd_queue_depth" and "inferd_queue_depth" in exported
