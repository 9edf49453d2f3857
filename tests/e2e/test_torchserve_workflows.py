"""TorchServe workflows under `inferd torchserve`: a real .war (WAR-INF/MANIFEST.json, the spec,
a handler of functions) holding real .mar models, registered over the management API, run over
/wfpredict and compared with the same steps run in-process."""

from __future__ import annotations

import json
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import requests
import torch

from tests import ts_archives
from tests.e2e.test_torchserve_cli import file_server, torchserve
from tests.repository.test_workflow_archives import billion_laughs

FUNCTIONS = '''
import json
from pathlib import Path


def pre_processing(data, context):
    if not data:
        return None
    payload = data[0].get("data") or data[0].get("body")  # the workflow's request: parsed when JSON
    payload = json.loads(payload) if isinstance(payload, (bytes, bytearray)) else payload
    return [json.dumps({"values": payload["values"]})]


def to_mlp(data, context):
    if not data:
        return None
    values = json.loads(data[0]["body"])["values"]
    return [json.dumps([values + values[:2]])]


def aggregate(data, context):
    if not data:
        return None
    return [{"doubled": json.loads(data[0]["doubler"])["scores"], "mlp": json.loads(data[0]["ts_mlp"]),
             "header": context.get_request_header(0, "X-Trace")}]


def passthrough(data, context):
    if not data:
        return None
    return [bytes(data[0]["body"])]


def left(data, context):
    return [{"side": "left", "got": bytes(data[0]["body"]).decode()}] if data else None


def right(data, context):
    return [{"side": "right"}] if data else None


def bare(data, context):
    return ["not an object"] if data else None


def slow(data, context):
    if not data:
        return None
    import time

    time.sleep(3)
    return ["late"]


def explode(data, context):
    if not data:
        return None
    with Path(bytes(data[0]["body"]).decode()).open("a") as attempts:
        attempts.write("attempt\\n")
    raise ValueError("explode always fails")
'''

SPEC = """
models:
    min-workers: 1
    max-workers: 1
    batch-size: 2
    max-batch-delay: 5
    retry-attempts: 2
    timeout-ms: 20000

    doubler:
      url: doubler.mar

    ts_mlp:
      url: ts_mlp.mar
      batch-size: 1

dag:
  pre_processing: [doubler, to_mlp]
  to_mlp: [ts_mlp]
  doubler: [aggregate]
  ts_mlp: [aggregate]
"""

FAILING_SPEC = """
models:
    retry-attempts: 2
dag:
  passthrough: [explode]
"""


def build_war(folder: Path, name: str, spec: str, handler: str = FUNCTIONS) -> Path:
    """A workflow archive laid out as torch-workflow-archiver lays it out."""
    manifest = {"createdOn": "28/11/2026 08:00:00", "archiverVersion": "0.2.15",
                "workflow": {"workflowName": name, "specFile": "spec.yaml", "handler": "functions.py"}}
    path = folder / f"{name}.war"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("WAR-INF/MANIFEST.json", json.dumps(manifest))
        bundle.writestr("spec.yaml", textwrap.dedent(spec))
        bundle.writestr("functions.py", textwrap.dedent(handler))
    return path


def inflated_war(folder: Path, name: str, declared: int) -> Path:
    """A .war whose handler entry claims to inflate to ``declared`` bytes (a zip bomb's header)."""
    path = build_war(folder, name, "models: {}\ndag:\n  passthrough: []\n")
    data = bytearray(path.read_bytes())
    central = data.rindex(b"PK\x01\x02")  # the last entry's central directory record: functions.py
    data[central + 24:central + 28] = declared.to_bytes(4, "little")  # its uncompressed size
    path.write_bytes(bytes(data))
    return path


def in_process(work: Path, values: list[float]) -> dict[str, object]:
    """The workflow's steps without the server: the doubler branch and the MLP branch."""
    doubled = ts_archives.doubler_in_process(work, [values])[0]
    with torch.inference_mode():
        mlp = ts_archives.Mlp().eval()(torch.tensor([values + values[:2]])).tolist()[0]
    return {"doubled": doubled, "mlp": mlp}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("wf")
    models = ts_archives.build_store(root)
    workflows = root / "workflows"
    workflows.mkdir()
    build_war(workflows, "arith", SPEC)
    remote = root / "remote"
    remote.mkdir()
    build_war(remote, "arith_remote", SPEC)
    build_war(workflows, "failing", FAILING_SPEC)
    build_war(workflows, "two_leaves", "models: {}\ndag:\n  passthrough: [left, right]\n")
    build_war(workflows, "bare_leaf", "models: {}\ndag:\n  passthrough: [left, bare]\n")
    build_war(workflows, "missing_model", "models:\n  m1:\n    url: absent.mar\ndag:\n  passthrough: [m1]\n")
    build_war(workflows, "too_slow", "models:\n  retry-attempts: 0\n  timeout-ms: 300\ndag:\n  passthrough: [slow]\n")
    build_war(workflows, "no_dag", "models:\n  m1:\n    url: doubler.mar\n")
    build_war(workflows, "no_url", "models:\n  m1:\n    batch-size: 2\ndag:\n  m1: []\n")
    build_war(workflows, "two_starts", SPEC.replace("  to_mlp: [ts_mlp]\n", ""))
    build_war(workflows, "missing_function", "models: {}\ndag:\n  pre_processing: [nowhere]\n")
    build_war(workflows, "laughs", billion_laughs(9))
    inflated_war(workflows, "inflated", 0xFFFF0000)
    return models, workflows, root / "work"


def test_workflow_registers_runs_and_unregisters(stores: tuple[Path, Path, Path], tmp_path: Path) -> None:
    models, workflows, work = stores
    with file_server(workflows.parent / "remote") as remote, torchserve(
            tmp_path, {"disable_token_authorization": "true", "enable_model_api": "true",
                       "allowed_urls": f"{remote}/.*"},
            "--model-store", str(models), "--workflow-store", str(workflows)) as urls:
        inference, management = urls["inference"], urls["management"]
        registered = requests.post(f"{management}/workflows?url=arith.war", timeout=180)
        assert registered.status_code == 200, registered.text
        assert registered.json() == {"status": "Workflow arith has been registered and scaled successfully."}

        values = [0.5, -1.0, 2.0, 0.25]
        answer = requests.post(f"{inference}/wfpredict/arith", json={"values": values}, timeout=60,
                               headers={"X-Trace": "t-1"})
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("application/json")
        got, expected = answer.json(), in_process(work, values)
        assert got["header"] == "t-1"  # each node sees the workflow request's headers
        assert got["doubled"] == pytest.approx(expected["doubled"], rel=1e-5)
        assert got["mlp"] == [pytest.approx(expected["mlp"], rel=1e-5)]  # one row: the batch of one

        # its models are TorchServe's <workflow>__<node> models, and answer on their own endpoints
        names = {m["modelName"] for m in requests.get(f"{management}/models", timeout=5).json()["models"]}
        assert {"arith__doubler", "arith__ts_mlp", "arith__pre_processing", "arith__to_mlp",
                "arith__aggregate"} <= names
        direct = requests.post(f"{inference}/predictions/arith__doubler", json={"values": values}, timeout=30)
        assert direct.status_code == 200 and direct.json()["scores"] == pytest.approx(expected["doubled"], rel=1e-5)
        assert requests.get(f"{management}/models/arith__doubler", timeout=5).json()[0]["batchSize"] == 2

        listed = requests.get(f"{management}/workflows", timeout=5).json()
        assert listed == {"workflows": [{"workflowName": "arith", "workflowUrl": "arith.war"}]}
        described = requests.get(f"{management}/workflows/arith", timeout=5).json()
        assert described == [{"workflowName": "arith", "workflowUrl": "arith.war", "minWorkers": 1, "maxWorkers": 1,
                              "batchSize": 2, "maxBatchDelay": 5,
                              "workflowDag": "{pre_processing=[doubler, to_mlp], to_mlp=[ts_mlp], "
                                             "doubler=[aggregate], ts_mlp=[aggregate]}"}]
        again = requests.post(f"{management}/workflows?url=arith.war", timeout=60)
        assert (again.status_code, again.json()["message"]) == (409, "Workflow arith is already registered.")
        # a URL that allowed_urls admits is downloaded into the workflow store, under another name here
        renamed = requests.post(f"{management}/workflows?url={remote}/arith_remote.war&workflow_name=arith2",
                                timeout=180)
        assert renamed.status_code == 200, renamed.text
        assert (workflows / "arith_remote.war").is_file()
        page = requests.get(f"{management}/workflows?limit=1", timeout=5).json()
        assert page == {"nextPageToken": "1", "workflows": [{"workflowName": "arith", "workflowUrl": "arith.war"}]}
        second = requests.post(f"{inference}/wfpredict/arith2", json={"values": values}, timeout=60)
        assert second.status_code == 200 and second.json()["doubled"] == got["doubled"]

        gone = requests.delete(f"{management}/workflows/arith2", timeout=60)
        assert (gone.status_code, gone.json()) == (200, {"status": 'Workflow "arith2" unregistered'})
        assert not (workflows / "arith_remote.war").exists()  # downloaded, so removed, as TorchServe does
        assert (workflows / "arith.war").is_file()
        assert requests.get(f"{management}/models/arith2__doubler", timeout=5).status_code == 404
        assert requests.post(f"{inference}/wfpredict/arith2", json={"values": values}, timeout=5).status_code == 404
        assert requests.post(f"{inference}/wfpredict/arith", json={"values": values}, timeout=60).status_code == 200


def test_workflow_leaves_and_errors(stores: tuple[Path, Path, Path], tmp_path: Path) -> None:
    models, workflows, _ = stores
    with torchserve(tmp_path, {"disable_token_authorization": "true", "enable_model_api": "true"},
                    "--model-store", str(models), "--workflow-store", str(workflows)) as urls:
        inference, management = urls["inference"], urls["management"]
        missing = requests.post(f"{inference}/wfpredict/nope", data=b"x", timeout=5)
        assert (missing.status_code, missing.json()) == (
            404, {"code": 404, "type": "WorkflowNotFoundException", "message": "Workflow not found: nope"})
        assert requests.get(f"{management}/workflows/nope", timeout=5).status_code == 404
        assert requests.delete(f"{management}/workflows/nope", timeout=5).status_code == 404
        no_url = requests.post(f"{management}/workflows", timeout=5)
        assert (no_url.status_code, no_url.json()["message"]) == (400, "Parameter url is required.")
        assert requests.post(f"{management}/workflows?url=absent.war", timeout=5).status_code == 404
        bad_name = requests.post(f"{management}/workflows?url=arith.war&workflow_name=a%20b", timeout=30)
        assert bad_name.status_code == 400 and "'a b'" in bad_name.json()["message"], bad_name.text

        for war, named in (("no_dag", "'dag'"), ("no_url", "models.m1"), ("two_starts", "one start node"),
                           ("missing_function", "nowhere"), ("laughs", "models.m"),
                           ("inflated", "over the limit of 1073741824")):
            broken = requests.post(f"{management}/workflows?url={war}.war", timeout=30)
            assert broken.status_code == 400, (war, broken.text)
            assert named in broken.json()["message"], (war, broken.text)
            assert len(broken.content) < 4096, war  # a YAML bomb's value is not written out whole
        # a model that cannot register fails the workflow (500) and unregisters the nodes that did
        failed_model = requests.post(f"{management}/workflows?url=missing_model.war", timeout=60)
        assert (failed_model.status_code, failed_model.json()["type"]) == (500, "WorkflowException")
        assert failed_model.json()["message"].startswith("Workflow missing_model has failed to register. Failures: "
                                                         "[Workflow Node missing_model__m1 failed to register.")
        assert "absent.mar" in failed_model.json()["message"]
        assert requests.get(f"{management}/workflows", timeout=5).json() == {"workflows": []}
        assert not any(m["modelName"].startswith(("no_", "two_", "missing_"))
                       for m in requests.get(f"{management}/models", timeout=5).json()["models"])

        # several leaves: {node: its JSON object}, as TorchServe combines them; a leaf without one is a 500
        for war in ("two_leaves", "bare_leaf"):
            assert requests.post(f"{management}/workflows?url={war}.war", timeout=120).status_code == 200
        both = requests.post(f"{inference}/wfpredict/two_leaves", data=b"hi", timeout=60)
        assert (both.status_code, both.json()) == (200, {"left": {"side": "left", "got": "hi"},
                                                         "right": {"side": "right"}})
        bare = requests.post(f"{inference}/wfpredict/bare_leaf", data=b"hi", timeout=60)
        assert bare.status_code == 500 and "leaf node bare" in bare.json()["message"], bare.text

        assert requests.post(f"{management}/workflows?url=failing.war", timeout=120).status_code == 200
        attempts = tmp_path / "attempts.txt"
        failed = requests.post(f"{inference}/wfpredict/failing", data=str(attempts).encode(), timeout=60)
        assert (failed.status_code, failed.json()) == (
            500, {"code": 500, "type": "InternalServerException", "message": "Error executing explode"})
        assert attempts.read_text().count("attempt") == 3  # the first try and retry-attempts: 2

        # timeout-ms bounds each try: a node slower than that fails the request without waiting for it
        assert requests.post(f"{management}/workflows?url=too_slow.war", timeout=120).status_code == 200
        began = time.monotonic()
        late = requests.post(f"{inference}/wfpredict/too_slow", data=b"x", timeout=60)
        assert (late.status_code, late.json()["message"]) == (500, "Error executing slow")
        assert time.monotonic() - began < 2.5


def test_workflows_need_the_keys_under_token_authorization(stores: tuple[Path, Path, Path], tmp_path: Path) -> None:
    models, workflows, _ = stores
    with torchserve(tmp_path, {"enable_model_api": "true"}, "--model-store", str(models),
                    "--workflow-store", str(workflows)) as urls:
        inference, management = urls["inference"], urls["management"]
        keys = json.loads((tmp_path / "key_file.json").read_text())
        manage = {"Authorization": f"Bearer {keys['management']['key']}"}
        infer = {"Authorization": f"Bearer {keys['inference']['key']}"}
        for method, url in (("GET", f"{management}/workflows"), ("GET", f"{management}/workflows/two_leaves"),
                            ("POST", f"{management}/workflows?url=two_leaves.war"),
                            ("DELETE", f"{management}/workflows/two_leaves"),
                            ("POST", f"{inference}/wfpredict/two_leaves")):
            assert requests.request(method, url, timeout=30).status_code == 400, (method, url)  # TorchServe's
        assert requests.post(f"{management}/workflows?url=two_leaves.war", headers=manage, timeout=120).ok
        assert requests.get(f"{management}/workflows/two_leaves", headers=manage, timeout=5).ok
        answer = requests.post(f"{inference}/wfpredict/two_leaves", data=b"k", headers=infer, timeout=60)
        assert answer.status_code == 200 and answer.json()["left"]["got"] == "k", answer.text
