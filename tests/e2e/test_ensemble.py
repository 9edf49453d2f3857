"""Ensembles against the real server: the pipeline example (image bytes -> Python preprocessing ->
ONNX classifier -> Python postprocessing, all Triton models) answers as running its three models in
process does, over HTTP and gRPC with Triton's clients; each step shows in its own model's
statistics; a config.toml ensemble runs a diamond DAG; a broken step says which."""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from tests import models
from tests.conftest import ROOT, RunningServer, serve


def pipeline_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_pipeline", ROOT / "examples/pipeline/make_pipeline.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def png(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    rng = np.random.default_rng(sum(color))
    pixels = (rng.random((size[1], size[0], 3)) * 60 + np.array(color) * 0.7).clip(0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def expected(repo: Path, images: list[bytes]) -> tuple[np.ndarray, list[bytes]]:
    """The three models run in this process: PIL, onnxruntime, numpy."""
    size = pipeline_module().SIZE
    pixels = []
    for data in images:
        image = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BILINEAR)
        array = np.asarray(image, dtype=np.float32) / 255.0
        pixels.append(((array - 0.5) / 0.25).transpose(2, 0, 1))
    session = ort.InferenceSession(str(repo / "classifier/1/model.onnx"))
    logits = session.run(None, {"x": np.stack(pixels).astype(np.float32)})[0]
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = shifted / shifted.sum(axis=1, keepdims=True)
    return probs, [f"class_{i}".encode() for i in probs.argmax(axis=1)]


DIAMOND_STEP = '''
import numpy as np

class Model:
    def infer(self, inputs):
        return {"out": inputs["in"] * FACTOR}
'''

STEP_CONFIG = """
backend = "python"
max_batch_size = 8
[dynamic_batching]
[[input]]
name = "in"
datatype = "FP32"
shape = [2]
[[output]]
name = "out"
datatype = "FP32"
shape = [2]
"""

ADD_MODEL = '''
class Model:
    def infer(self, inputs):
        return {"sum": inputs["a"] + inputs["b"]}
'''

ADD_CONFIG = """
backend = "python"
max_batch_size = 8
[[input]]
name = "a"
datatype = "FP32"
shape = [2]
[[input]]
name = "b"
datatype = "FP32"
shape = [2]
[[output]]
name = "sum"
datatype = "FP32"
shape = [2]
"""

# x -> double and triple side by side -> add: 5x
DIAMOND = """
platform = "ensemble"
max_batch_size = 8
[[input]]
name = "x"
datatype = "FP32"
shape = [2]
[[output]]
name = "y"
datatype = "FP32"
shape = [2]

[[ensemble_scheduling.step]]
model_name = "add"
input_map = { a = "doubled", b = "tripled" }
output_map = { sum = "y" }

[[ensemble_scheduling.step]]
model_name = "double"
input_map = { in = "x" }
output_map = { out = "doubled" }

[[ensemble_scheduling.step]]
model_name = "triple"
model_version = 1
input_map = { in = "x" }
output_map = { out = "tripled" }
"""


# an ensemble without a batch dimension whose step batches, and one with whose step does not: Triton's
# ensemble adds or drops a batch of 1 between them (its QA's nobatch sequence ensembles of nop steps)
UNBATCHED_OVER_BATCHING = """
platform = "ensemble"
max_batch_size = 0
[[input]]
name = "x"
datatype = "FP32"
shape = [2]
[[output]]
name = "y"
datatype = "FP32"
shape = [2]
[[ensemble_scheduling.step]]
model_name = "double"
input_map = { in = "x" }
output_map = { out = "y" }
"""
BATCHED_OVER_UNBATCHED = UNBATCHED_OVER_BATCHING.replace("max_batch_size = 0", "max_batch_size = 8").replace(
    '"double"', '"double_unbatched"')


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = pipeline_module().build(tmp_path_factory.mktemp("pipeline"))
    for name, factor in (("double", 2), ("triple", 3)):
        models.write(root / f"{name}/1/model.py", DIAMOND_STEP.replace("FACTOR", str(factor)))
        models.write(root / f"{name}/config.toml", STEP_CONFIG)
    models.write(root / "double_unbatched/1/model.py", DIAMOND_STEP.replace("FACTOR", "2"))
    models.write(root / "double_unbatched/config.toml",
                 STEP_CONFIG.replace("max_batch_size = 8\n[dynamic_batching]\n", "max_batch_size = 0\n"))
    for ensemble, config in (("unbatched_over_batching", UNBATCHED_OVER_BATCHING),
                             ("batched_over_unbatched", BATCHED_OVER_UNBATCHED)):
        (root / f"{ensemble}/1").mkdir(parents=True)
        models.write(root / f"{ensemble}/config.toml", config)
    models.write(root / "add/1/model.py", ADD_MODEL)
    models.write(root / "add/config.toml", ADD_CONFIG)
    for ensemble in ("diamond", "counted"):  # counted: only test_ensemble_statistics_count_each_request asks it
        (root / f"{ensemble}/1").mkdir(parents=True)
        models.write(root / f"{ensemble}/config.toml", DIAMOND)
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    with serve(repo, grpc=True) as running:
        yield running


def images_input(module: ModuleType, images: list[bytes]) -> object:
    batch = np.array([[data] for data in images], dtype=object)
    given = module.InferInput("IMAGE", list(batch.shape), "BYTES")
    if module is httpclient:
        given.set_data_from_numpy(batch, binary_data=True)
    else:
        given.set_data_from_numpy(batch)
    return given


def test_the_pipeline_answers_as_its_three_models_in_process(server: RunningServer, repo: Path) -> None:
    images = [png((200, 30, 30)), png((20, 200, 40), (64, 48)), png((10, 20, 220))]
    probs, labels = expected(repo, images)
    http = httpclient.InferenceServerClient(server.url)
    result = http.infer("image_pipeline", [images_input(httpclient, images)])
    np.testing.assert_allclose(result.as_numpy("PROBS"), probs, rtol=1e-4, atol=1e-6)
    assert result.as_numpy("LABEL").reshape(-1).tolist() == labels
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    one = grpc.infer("image_pipeline", [images_input(grpcclient, images[1:2])])
    np.testing.assert_allclose(one.as_numpy("PROBS"), probs[1:2], rtol=1e-4, atol=1e-6)
    assert one.as_numpy("LABEL").reshape(-1).tolist() == labels[1:2]

    # every step went through its own model's data plane: counted there, under protocol "ensemble"
    stats = {row["name"]: row for row in http.get_inference_statistics()["model_stats"]}
    for step in ("image_pipeline", "preprocess", "classifier", "postprocess"):
        assert stats[step]["inference_stats"]["success"]["count"] == 2, step
    assert stats["classifier"]["inference_count"] == 4  # rows: 3 + 1
    metrics = requests.get(f"{server.base}/metrics", timeout=10).text
    assert ('inferd_requests_total{model="classifier",outcome="success",protocol="ensemble",version="1"} 2.0'
            in metrics)


def test_the_ensemble_describes_itself_as_triton_does(server: RunningServer) -> None:
    http = httpclient.InferenceServerClient(server.url)
    metadata = http.get_model_metadata("image_pipeline")
    assert metadata["platform"] == "ensemble"
    assert [i["name"] for i in metadata["inputs"]] == ["IMAGE"]
    config = grpcclient.InferenceServerClient(server.grpc_url).get_model_config("image_pipeline").config
    assert config.platform == "ensemble" and config.max_batch_size == 8
    assert [s.model_name for s in config.ensemble_scheduling.step] == ["preprocess", "classifier", "postprocess"]
    assert dict(config.ensemble_scheduling.step[1].input_map) == {"x": "pixels"}
    assert not config.instance_group


def test_a_config_toml_ensemble_runs_a_diamond(server: RunningServer) -> None:
    x = np.array([[1, 2], [3, 4]], dtype=np.float32)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": x.reshape(-1).tolist()}]}
    response = requests.post(f"{server.base}/v2/models/diamond/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == (x * 5).reshape(-1).tolist()
    timing = response.headers["server-timing"]  # each step under its model's name
    assert all(f"step.{model};dur=" in timing for model in ("double", "triple", "add")), timing


@pytest.mark.parametrize(("ensemble", "shape"), [("unbatched_over_batching", [2]), ("batched_over_unbatched", [1, 2])])
def test_a_tensor_crosses_between_batching_and_non_batching_models_as_in_triton(
        server: RunningServer, ensemble: str, shape: list[int]) -> None:
    x = grpcclient.InferInput("x", shape, "FP32")
    x.set_data_from_numpy(np.array([1.5, -2.0], dtype=np.float32).reshape(shape))
    y = grpcclient.InferenceServerClient(server.grpc_url).infer(ensemble, [x]).as_numpy("y")
    assert y.shape == tuple(shape)
    np.testing.assert_array_equal(y.reshape(-1), [3.0, -4.0])


def _failures(server: RunningServer) -> dict[str, str]:
    text = requests.get(f"{server.base}/metrics", timeout=10).text
    return dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("nv_inference_request_failure"))


def test_a_failing_step_says_which(server: RunningServer) -> None:
    http = httpclient.InferenceServerClient(server.url)
    before = _failures(server)
    with pytest.raises(InferenceServerException) as caught:
        http.infer("image_pipeline", [images_input(httpclient, [b"not an image"])])
    # Triton's words first (its QA matches the start), then the step inferd names
    assert caught.value.message().startswith("in ensemble 'image_pipeline', "), caught.value.message()
    assert "(at its step 'preprocess')" in caught.value.message()
    assert "cannot identify image file" in str(caught.value)
    # Triton's reasons: the step's model raised (BACKEND); the ensemble's own failure is OTHER
    after = _failures(server)
    for model, reason in (("preprocess", "BACKEND"), ("image_pipeline", "OTHER"), ("image_pipeline", "BACKEND")):
        key = f'nv_inference_request_failure{{model="{model}",reason="{reason}",version="1"}}'
        assert int(after[key]) - int(before[key]) == (0 if (model, reason) == ("image_pipeline", "BACKEND") else 1)


def test_ensemble_statistics_count_each_request_as_one_execution_of_its_batch_size(server: RunningServer) -> None:
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    for rows in (2, 2, 1):
        x = grpcclient.InferInput("x", [rows, 2], "FP32")
        x.set_data_from_numpy(np.ones((rows, 2), dtype=np.float32))
        grpc.infer("counted", [x])
    stats = grpc.get_inference_statistics("counted", "1").model_stats[0]
    # as Triton's ensemble scheduler counts them: one execution per request, of the request's batch size
    assert {batch.batch_size: batch.compute_infer.count for batch in stats.batch_stats} == {1: 1, 2: 2}
    assert (stats.execution_count, stats.inference_count) == (3, 5)
    assert all(batch.compute_infer.ns > 0 for batch in stats.batch_stats)


def test_classification_answers_the_top_classes_with_their_labels(server: RunningServer, repo: Path) -> None:
    images = [png((120, 60, 200)), png((250, 250, 10))]
    probs, _ = expected(repo, images)
    top = np.argsort(-probs, axis=1)[:, :3]
    want = [[f"{probs[r, i]:f}:{i}:class_{i}".encode() for i in top[r]] for r in range(2)]
    http = httpclient.InferenceServerClient(server.url)
    result = http.infer("image_pipeline", [images_input(httpclient, images)],
                        outputs=[httpclient.InferRequestedOutput("PROBS", binary_data=True, class_count=3)])
    got = result.as_numpy("PROBS")
    assert got.shape == (2, 3)
    for row, wanted in zip(got.tolist(), want, strict=True):  # values to 6 decimals, as Triton prints them
        assert [item.split(b":")[1:] for item in row] == [item.split(b":")[1:] for item in wanted]
        np.testing.assert_allclose([float(item.split(b":")[0]) for item in row],
                                   [float(item.split(b":")[0]) for item in wanted], atol=1e-5)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    x = grpcclient.InferInput("x", [1, 3, 16, 16], "FP32")
    x.set_data_from_numpy(np.zeros((1, 3, 16, 16), dtype=np.float32))
    answer = grpc.infer("classifier", [x], outputs=[grpcclient.InferRequestedOutput("logits", class_count=2)])
    assert answer.as_numpy("logits").shape == (1, 2)
    assert all(item.decode().split(":")[2].startswith("class_") for item in answer.as_numpy("logits")[0])
    with pytest.raises(InferenceServerException, match="classification needs a numeric output"):
        http.infer("image_pipeline", [images_input(httpclient, images[:1])],
                   outputs=[httpclient.InferRequestedOutput("LABEL", class_count=1)])


ADD_ONE = '''
class Model:
    def infer(self, inputs):
        return {"b": inputs["a"] + 1}
'''

ADD_ONE_CONFIG = """
backend = "python"
[instance_group]
kind = "cpu"
[[input]]
name = "a"
datatype = "FP32"
shape = [-1]
[[output]]
name = "b"
datatype = "FP32"
shape = [-1]
"""


def one_step(step: str, out_datatype: str = "FP32", out_shape: str = "[-1]", output: str = "b",
             in_name: str = "a") -> str:
    return f"""
platform = "ensemble"
[[input]]
name = "IN"
datatype = "FP32"
shape = [-1]
[[output]]
name = "OUT"
datatype = "{out_datatype}"
shape = {out_shape}
[[ensemble_scheduling.step]]
model_name = "{step}"
input_map = {{ {in_name} = "IN" }}
output_map = {{ {output} = "OUT" }}
"""


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Ensembles that disagree with their steps' models. Models load in name order: "add1" before
    the "ens_*" ones (checked at load), "zz_add1" after the "late_*" ones (checked per request)."""
    root = tmp_path_factory.mktemp("broken_ensembles")
    ensembles = {
        "ens_datatype": one_step("add1", out_datatype="INT32"),
        "ens_no_output": one_step("add1", output="bogus"),
        "ens_no_input": one_step("add1", in_name="bogus"),
        "ens_shape": one_step("add1", out_shape="[5]"),
        "late_datatype": one_step("zz_add1", out_datatype="INT32"),
        "late_no_output": one_step("zz_add1", output="bogus"),
        "ens_self": one_step("ens_self", output="OUT", in_name="IN"),
        "cycle_a": one_step("cycle_b", output="OUT", in_name="IN"),
        "cycle_b": one_step("cycle_a", output="OUT", in_name="IN"),
    }
    for step in ("add1", "zz_add1"):
        models.write(root / step / "1" / "model.py", ADD_ONE)
        models.write(root / step / "config.toml", ADD_ONE_CONFIG)
    for name, config in ensembles.items():
        (root / name / "1").mkdir(parents=True)
        models.write(root / name / "config.toml", config)
    with serve(root) as running:
        yield running


def reasons(server: RunningServer) -> dict[str, str]:
    index = requests.post(f"{server.base}/v2/repository/index", json={}, timeout=10).json()
    return {row["name"]: row.get("reason", "") for row in index}


def ask(server: RunningServer, model: str) -> requests.Response:
    body = {"inputs": [{"name": "IN", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}]}
    return requests.post(f"{server.base}/v2/models/{model}/infer", json=body, timeout=30)


def test_an_ensemble_that_disagrees_with_a_loaded_step_is_a_load_error_naming_both(broken: RunningServer) -> None:
    why = reasons(broken)
    assert "tensor 'OUT': the ensemble declares INT32, but step 'add1' makes it from its output 'b' as FP32" \
        in why["ens_datatype"], why
    assert "step 'add1' maps output 'bogus', which the model does not have (its outputs: b)" in why["ens_no_output"]
    assert "step 'add1' maps input 'bogus', which the model does not have (its inputs: a)" in why["ens_no_input"]
    for name in ("ens_datatype", "ens_no_output", "ens_no_input"):
        assert ask(broken, name).status_code == 503


def test_an_ensemble_output_unlike_its_declaration_is_a_500_naming_it(broken: RunningServer) -> None:
    shape = ask(broken, "ens_shape")  # [-1] may be [5]: only the answer shows it is not
    assert shape.status_code == 500, shape.text
    assert ("ensemble 'ens_shape:1' output 'OUT' is declared shape [5], but step 'add1' made it "
            "(its output 'b') of shape [2]") in shape.json()["error"]
    why = reasons(broken)  # an ensemble loads after its steps, whatever their names: checked at load
    assert "the ensemble declares INT32, but step 'zz_add1' makes it from its output 'b' as FP32" \
        in why["late_datatype"], why
    assert "zz_add1" in why["late_no_output"] and "bogus" in why["late_no_output"], why


def test_an_ensemble_that_leads_back_to_itself_is_a_load_error(broken: RunningServer) -> None:
    why = reasons(broken)
    assert "its steps form a cycle of models: ens_self -> ens_self" in why["ens_self"], why
    assert "its steps form a cycle of models: cycle_b -> cycle_a -> cycle_b" in why["cycle_b"], why
    response = ask(broken, "cycle_a")  # loaded before cycle_b was refused: its step is not there
    assert response.status_code == 503 and len(response.text) < 1000, response.text
