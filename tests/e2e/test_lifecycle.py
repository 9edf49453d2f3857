"""Model control: explicit loading at start, polling the repository, reloading under load with no
failed request."""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import RunningServer, serve
from tests.models import PYTHON_CONFIG, PYTHON_MODEL, write

BODY = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]}


def python_model(root: Path, name: str, version: int, offset: int = 10) -> None:
    write(root / name / str(version) / "model.py", PYTHON_MODEL.replace("self.offset = 10", f"self.offset = {offset}"))
    write(root / name / "config.toml", PYTHON_CONFIG)


def wait_for(check, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def test_explicit_mode_loads_only_what_it_is_told(tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient

    for name in ("a", "b", "c"):
        python_model(tmp_path, name, 1)
    with serve(tmp_path, "--model-control", "explicit", "--load-model", "a", grpc=True) as server:
        assert requests.post(f"{server.base}/v2/models/a/infer", json=BODY, timeout=10).status_code == 200
        assert requests.post(f"{server.base}/v2/models/b/infer", json=BODY, timeout=10).status_code == 404
        assert requests.post(f"{server.base}/v2/repository/models/b/load", timeout=30).status_code == 200
        assert requests.post(f"{server.base}/v2/models/b/infer", json=BODY, timeout=10).status_code == 200
        client = grpcclient.InferenceServerClient(server.grpc_url)  # the same over gRPC
        assert not client.is_model_ready("c")
        client.load_model("c")
        assert client.is_model_ready("c")
        answer = requests.post(f"{server.base}/v2/models/c/infer", json=BODY, timeout=10)
        assert answer.status_code == 200, answer.text  # (a 500 here once under load: keep its words)
        client.unload_model("a")
        assert requests.post(f"{server.base}/v2/models/a/infer", json=BODY, timeout=10).status_code == 404


def test_a_load_that_fails_is_an_error_and_a_failed_reload_keeps_the_old_versions(tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    python_model(tmp_path, "a", 1)
    python_model(tmp_path, "bad", 1)
    write(tmp_path / "bad/1/model.py", "raise ImportError('no such thing')\n")
    with serve(tmp_path, "--model-control", "explicit", "--load-model", "a", grpc=True) as server:
        answer = requests.post(f"{server.base}/v2/repository/models/bad/load", timeout=60)
        assert answer.status_code == 400, answer.text
        assert "failed to load 'bad'" in answer.json()["error"] and "no such thing" in answer.json()["error"]
        client = grpcclient.InferenceServerClient(server.grpc_url)
        with pytest.raises(InferenceServerException, match="failed to load 'bad'") as info:
            client.load_model("bad")
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        with pytest.raises(InferenceServerException, match="failed to load 'a'"):  # the override cannot load
            client.load_model("a", config='{"backend": "onnxruntime"}')
        assert requests.post(f"{server.base}/v2/models/a/infer", json=BODY, timeout=10).status_code == 200


def test_poll_loads_new_versions_reloads_changes_and_unloads_removals(tmp_path: Path) -> None:
    python_model(tmp_path, "m", 1)
    with serve(tmp_path, "--model-control", "poll", "--poll-interval", "0.3") as server:
        def answer() -> float:
            response = requests.post(f"{server.base}/v2/models/m/infer", json=BODY, timeout=10)
            return response.json()["outputs"][0]["data"][0] if response.status_code == 200 else -1.0

        assert answer() == 12.0
        python_model(tmp_path, "m", 2, offset=20)  # a new version: served once polled
        wait_for(lambda: answer() == 22.0)
        assert requests.get(f"{server.base}/v2/models/m", timeout=10).json()["versions"] == ["2"]
        python_model(tmp_path, "m", 2, offset=30)  # a changed artifact: reloaded
        os.utime(tmp_path / "m/2/model.py", (time.time() + 5, time.time() + 5))
        wait_for(lambda: answer() == 32.0)
        python_model(tmp_path, "n", 1)  # a new model
        wait_for(lambda: requests.get(f"{server.base}/v2/models/n/ready", timeout=5).status_code == 200)
        for path in sorted((tmp_path / "n").rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (tmp_path / "n").rmdir()
        wait_for(lambda: requests.get(f"{server.base}/v2/models/n/ready", timeout=5).status_code == 404)


def test_reloads_under_load_fail_no_request(tmp_path: Path) -> None:
    python_model(tmp_path, "m", 1)
    with serve(tmp_path, "--model-control", "explicit", "--load-model", "*") as server:
        stop = threading.Event()
        results: list[int] = []
        lock = threading.Lock()

        def client() -> None:
            with requests.Session() as session:
                while not stop.is_set():
                    code = session.post(f"{server.base}/v2/models/m/infer", json=BODY, timeout=30).status_code
                    with lock:
                        results.append(code)

        threads = [threading.Thread(target=client) for _ in range(32)]
        for thread in threads:
            thread.start()
        try:
            for swap in range(10):
                python_model(tmp_path, "m", 1, offset=100 + swap)
                response = requests.post(f"{server.base}/v2/repository/models/m/load", timeout=60)
                assert response.status_code == 200, response.text
                time.sleep(0.2)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert len(results) > 100
        assert set(results) == {200}, {code: results.count(code) for code in set(results)}
        final = requests.post(f"{server.base}/v2/models/m/infer", json=BODY, timeout=10).json()
        assert final["outputs"][0]["data"][0] == 2 * 1.0 + 109


def test_sigterm_drains_in_flight_requests_and_exits_zero(tmp_path: Path) -> None:
    import signal
    from concurrent.futures import ThreadPoolExecutor

    write(tmp_path / "slow/1/model.py", """
        import time

        class Model:
            def infer(self, inputs):
                time.sleep(1.0)
                return {"y": inputs["x"]}
        """)
    write(tmp_path / "slow/config.toml", 'backend = "python"\n[[input]]\nname = "x"\ndatatype = "FP64"\n'
          'shape = [1]\n[[output]]\nname = "y"\ndatatype = "FP64"\nshape = [1]\n')
    with serve(tmp_path) as server, ThreadPoolExecutor(2) as pool:
        pending = pool.submit(requests.post, f"{server.base}/v2/models/slow/infer", json=BODY, timeout=30)
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        response = pending.result()
        assert response.status_code == 200
        assert response.json()["outputs"][0]["data"] == [1.0]
        assert server.process.wait(30) == 0


def test_version_policy_and_labels_route_the_same_over_every_protocol(tmp_path: Path) -> None:
    import numpy as np
    import tensorflow as tf
    import tritonclient.grpc as grpcclient
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    for version in (1, 2, 3):
        python_model(tmp_path, "m", version, offset=version * 100)
    with (tmp_path / "m/config.toml").open("a") as config:
        config.write("\n[version_policy]\nspecific = [1, 3]\n[version_labels]\nstable = 1\ncanary = 3\n")
    with serve(tmp_path, grpc=True) as server:
        def v2(path: str) -> requests.Response:
            return requests.post(f"{server.base}/v2/models/{path}infer", json=BODY, timeout=10)

        assert requests.get(f"{server.base}/v2/models/m", timeout=10).json()["versions"] == ["1", "3"]
        newest = v2("m/")
        assert (newest.json()["model_version"], newest.json()["outputs"][0]["data"]) == ("3", [302.0])
        assert v2("m/versions/1/").json()["outputs"][0]["data"] == [102.0]
        missing = v2("m/versions/2/")
        assert missing.status_code == 404 and "served versions: 1, 3" in missing.json()["error"]

        def tf_rest(path: str) -> requests.Response:
            return requests.post(f"{server.base}/v1/models/m{path}:predict", json={"inputs": {"x": [1.0]}}, timeout=10)

        assert tf_rest("/labels/stable").json()["outputs"]["y"] == [102.0]
        assert tf_rest("/labels/canary").json()["outputs"]["y"] == [302.0]
        assert tf_rest("/versions/2").status_code == 404

        client = grpcclient.InferenceServerClient(server.grpc_url)
        tensor = grpcclient.InferInput("x", [1], "FP64")
        tensor.set_data_from_numpy(np.array([1.0]))
        assert client.infer("m", [tensor], model_version="1").as_numpy("y").tolist() == [102.0]
        answer = client.infer("m", [tensor])
        assert (answer.get_response().model_version, answer.as_numpy("y").tolist()) == ("3", [302.0])

        import grpc
        with grpc.insecure_channel(server.grpc_url) as channel:
            prediction = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "m"
            request.model_spec.version_label = "stable"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0])))
            response = prediction.Predict(request, timeout=30)
            assert tf.make_ndarray(response.outputs["y"]).tolist() == [102.0]
            assert response.model_spec.version.value == 1


def test_drain_timeout_bounds_the_exit_even_when_a_model_never_returns(tmp_path: Path) -> None:
    import signal
    from concurrent.futures import ThreadPoolExecutor

    write(tmp_path / "stuck/1/model.py", """
        import time

        class Model:
            def infer(self, inputs):
                time.sleep(60)
                return {"y": inputs["x"]}
        """)
    write(tmp_path / "stuck/config.toml", 'backend = "python"\n[instance_group]\nkind = "cpu"\n'
          '[[input]]\nname = "x"\ndatatype = "FP64"\nshape = [1]\n'
          '[[output]]\nname = "y"\ndatatype = "FP64"\nshape = [1]\n')
    with serve(tmp_path, "--drain-timeout", "1") as server, ThreadPoolExecutor(4) as pool:
        for _ in range(3):  # one running, two queued behind it
            pool.submit(requests.post, f"{server.base}/v2/models/stuck/infer", json=BODY, timeout=30)
        time.sleep(0.5)
        start = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(15) == 0
        took = time.monotonic() - start
        assert took < 1 + 2 + 1.5, f"--drain-timeout 1 took {took:.1f} s"  # drain, unload grace, exit
        assert "--drain-timeout 1 s passed with work still running" in server.log()


HANGING_CONFIG = ('backend = "python"\n[instance_group]\nkind = "cpu"\n[[input]]\nname = "x"\ndatatype = "FP64"\n'
                  'shape = [1]\n[[output]]\nname = "y"\ndatatype = "FP64"\nshape = [1]\n')
HANGING_MODEL = "import time\nclass Model:\n    def load(self):\n        time.sleep(3600)\n" \
                "    def infer(self, inputs):\n        return inputs\n"


def test_a_hanging_load_holds_up_no_poll_and_no_shutdown(tmp_path: Path) -> None:
    import signal

    python_model(tmp_path, "m", 1)
    with serve(tmp_path, "--model-control", "poll", "--poll-interval", "0.3", "--drain-timeout", "1") as server:
        write(tmp_path / "aaa_hang/1/model.py", HANGING_MODEL)
        write(tmp_path / "aaa_hang/config.toml", HANGING_CONFIG)
        wait_for(lambda: "aaa_hang is new or changed" in server.log())
        python_model(tmp_path, "later", 1)  # picked up while aaa_hang's load still hangs
        wait_for(lambda: requests.get(f"{server.base}/v2/models/later/ready", timeout=5).status_code == 200)
        start = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(15) == 0
        assert time.monotonic() - start < 1 + 2 + 2.5  # drain, unload grace, exit


def test_sigterm_while_a_load_hangs_at_start_stops_the_server(tmp_path: Path) -> None:
    import signal

    write(tmp_path / "aaa_hang/1/model.py", HANGING_MODEL)
    write(tmp_path / "aaa_hang/config.toml", HANGING_CONFIG)
    python_model(tmp_path, "m", 1)
    with serve(tmp_path, "--drain-timeout", "1", wait_ready=False) as server:
        wait_for(lambda: requests.get(f"{server.base}/v2/models/m/ready", timeout=5).status_code == 200)
        assert "inferd ready" not in server.log()  # every model must have been tried first
        start = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(15) == 0
        assert time.monotonic() - start < 1 + 2 + 2.5


def test_a_load_whose_client_gives_up_still_finishes(tmp_path: Path) -> None:
    """A gRPC client's deadline passes while its model loads: the load goes on (as Triton's), the
    model turns READY and serves; cut short, it stayed LOADING for good, its instance unserved."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    slow = PYTHON_MODEL.replace("    def load(self):\n", "    def load(self):\n        __import__('time').sleep(2)\n")
    write(tmp_path / "slow/1/model.py", slow)
    write(tmp_path / "slow/config.toml", PYTHON_CONFIG)
    with serve(tmp_path, "--model-control", "explicit", grpc=True) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        with pytest.raises(InferenceServerException, match="Deadline"):
            client.load_model("slow", client_timeout=0.5)
        wait_for(lambda: client.is_model_ready("slow"), 30)
        response = requests.post(f"{server.base}/v2/models/slow/infer", json=BODY, timeout=10)
        assert response.json()["outputs"][0]["data"] == [12.0]
        client.close()
        # a load whose client waits for its error is no error of the server's log
        assert requests.post(f"{server.base}/v2/repository/models/nope/load", timeout=10).status_code in (400, 404)
        assert "after its caller went away" not in server.log()


def test_loads_racing_unloads_of_one_model_answer_what_each_did(tmp_path: Path) -> None:
    """Several clients load and unload one model at once: each load that made the model ready
    answers 200, even when an unload queued behind it runs before its answer is written (it was
    judged after the lock was let go: 'no version is ready' for a load that had succeeded)."""
    from concurrent.futures import ThreadPoolExecutor

    python_model(tmp_path, "a", 1)
    with serve(tmp_path, "--model-control", "explicit", "--load-model", "a") as server:
        def change(i: int) -> tuple[str, int, str]:
            action = "unload" if i % 2 else "load"
            answer = requests.post(f"{server.base}/v2/repository/models/a/{action}", timeout=60)
            return action, answer.status_code, answer.text

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(change, range(16)))
        loads = [answer for answer in answers if answer[0] == "load"]
        assert all(status == 200 for _, status, _ in loads), loads
        assert requests.post(f"{server.base}/v2/repository/models/a/load", timeout=60).status_code == 200
        assert requests.post(f"{server.base}/v2/models/a/infer", json=BODY, timeout=10).status_code == 200


def test_unloading_a_model_that_is_not_loaded_succeeds_as_in_triton(tmp_path: Path) -> None:
    """Triton answers an unload of a model that is not loaded (never loaded, already unloaded by
    another client, not in the repository) with success; inferd answered 404, so the second of
    two clients unloading one model saw an error."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    python_model(tmp_path, "a", 1)
    python_model(tmp_path, "b", 1)
    with serve(tmp_path, "--model-control", "explicit", "--load-model", "a", grpc=True) as server:
        http = httpclient.InferenceServerClient(server.url)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        for client in (http, grpc, http):
            client.unload_model("a")
            client.unload_model("b")  # never loaded
            client.unload_model("nowhere")  # no such folder
        assert not http.is_model_ready("a")
        rows = {row["name"]: row for row in http.get_model_repository_index()}
        assert (rows["a"]["state"], rows["a"]["reason"]) == ("UNAVAILABLE", "unloaded")
        http.load_model("a")
        assert grpc.is_model_ready("a")
        grpc.close()


def test_a_load_model_naming_no_model_is_an_error_not_silence(tmp_path: Path) -> None:
    """``--load-model`` with a name the repository lacks (a typo) loaded nothing and said nothing;
    Triton fails such a start. It is now UNAVAILABLE with its reason, and --exit-on-error exits."""
    import subprocess
    import sys

    python_model(tmp_path, "a", 1)
    with serve(tmp_path, "--model-control", "explicit", "--load-model", "a", "--load-model", "nope") as server:
        rows = requests.post(f"{server.base}/v2/repository/index", json={}, timeout=10).json()
        assert {row["name"]: (row["state"], row["reason"]) for row in rows}["nope"] == (
            "UNAVAILABLE", "failed to load 'nope': no model of that name in the repository")
        assert "nope" in requests.get(f"{server.base}/v2/models/nope/ready", timeout=10).text
        assert requests.get(f"{server.base}/v2/models/a/ready", timeout=10).status_code == 200
    done = subprocess.run([sys.executable, "-m", "inferd", "serve", str(tmp_path), "--http-port", "0", "--grpc-port",
                           "0", "--model-control", "explicit", "--load-model", "nope", "--exit-on-error"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "no model of that name" in done.stdout + done.stderr
    assert "--exit-on-error: model nope is UNAVAILABLE" in done.stderr  # no version to name (it said "version -")


TIMED_LOAD = ("import time\nclass Model:\n    def load(self):\n        start = time.time()\n        time.sleep(0.8)\n"
              "        with open({log!r}, 'a') as log:\n            log.write(f'{{start}} {{time.time()}}\\n')\n"
              "    def infer(self, inputs):\n        return {{'y': inputs['x']}}\n")


@pytest.mark.parametrize("threads", [1, 3])
def test_model_load_thread_count_bounds_the_builds_at_once(tmp_path: Path, threads: int) -> None:
    """Triton's ``--model-load-thread-count`` (default 4; server's command_line_parser.cc, core's
    ModelLifeCycle load pool): three models whose loads take 0.8 s, loaded at once through the
    repository API, build one after another with 1 and side by side with 3."""
    from concurrent.futures import ThreadPoolExecutor

    log = tmp_path / "loads.log"
    repo = tmp_path / "repo"
    for name in ("a", "b", "c"):
        write(repo / name / "1/model.py", TIMED_LOAD.format(log=str(log)))
        write(repo / name / "config.toml", HANGING_CONFIG)
    with serve(repo, "--model-control", "explicit", "--model-load-thread-count", str(threads)) as server:
        def load(name: str) -> int:
            return requests.post(f"{server.base}/v2/repository/models/{name}/load", timeout=60).status_code

        with ThreadPoolExecutor(3) as pool:
            assert list(pool.map(load, "abc")) == [200, 200, 200]
    spans = sorted(tuple(map(float, line.split())) for line in log.read_text().splitlines())
    assert len(spans) == 3
    overlaps = sum(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))
    assert overlaps == (0 if threads == 1 else 2), spans


STEP_MODEL = "class Model:\n    def infer(self, inputs):\n        return {'out': inputs['in'] * FACTOR}\n"
STEP_CONFIG = ('backend = "python"\nmax_batch_size = 8\n[instance_group]\nkind = "cpu"\n[[input]]\nname = "in"\n'
               'datatype = "FP32"\nshape = [2]\n[[output]]\nname = "out"\ndatatype = "FP32"\nshape = [2]\n')
ENSEMBLE_HEAD = ('platform = "ensemble"\nmax_batch_size = 8\n[[input]]\nname = "x"\ndatatype = "FP32"\nshape = [2]\n'
                 '[[output]]\nname = "y"\ndatatype = "FP32"\nshape = [2]\n')
ENSEMBLE_STEP = '[[ensemble_scheduling.step]]\nmodel_name = "{model}"\ninput_map = {{ in = "{a}" }}\n' \
                'output_map = {{ out = "{b}" }}\n'


def ensemble_repository(root: Path) -> None:
    """``times6`` = double then triple; ``times3`` = triple alone; ``times2`` = double alone."""
    for name, factor in (("double", 2), ("triple", 3)):
        write(root / name / "1/model.py", STEP_MODEL.replace("FACTOR", str(factor)))
        write(root / name / "config.toml", STEP_CONFIG)
    chains = {"times6": [("double", "x", "d"), ("triple", "d", "y")], "times3": [("triple", "x", "y")],
              "times2": [("double", "x", "y")]}
    for name, chain in chains.items():
        (root / name / "1").mkdir(parents=True)
        write(root / name / "config.toml", ENSEMBLE_HEAD + "".join(
            ENSEMBLE_STEP.format(model=model, a=a, b=b) for model, a, b in chain))


def ready(server: RunningServer, *names: str) -> dict[str, bool]:
    return {name: requests.get(f"{server.base}/v2/models/{name}/ready", timeout=10).status_code == 200
            for name in names}


def test_unload_dependents_unloads_what_an_ensemble_brought_along_as_triton_does(tmp_path: Path) -> None:
    """Triton's rule (core's model_repository_manager.cc: PollModels marks only the models asked for
    as explicitly loaded; DependencyGraph::RemoveNodes with cascading removal): an ensemble loaded
    by name brings the models of its steps along; unloaded with ``unload_dependents`` it takes each
    of them that was not loaded by name and that no loaded ensemble still uses, and without the
    parameter it takes none (server's qa/L0_lifecycle test_model_control_ensemble). Over HTTP."""
    ensemble_repository(tmp_path)
    with serve(tmp_path, "--model-control", "explicit", "--load-model", "times6") as server:
        assert ready(server, "times6", "double", "triple") == {"times6": True, "double": True, "triple": True}
        x = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}
        answer = requests.post(f"{server.base}/v2/models/times6/infer", json=x, timeout=10)
        assert answer.json()["outputs"][0]["data"] == [6.0, 12.0]
        extensions = requests.get(f"{server.base}/v2", timeout=10).json()["extensions"]
        assert "model_repository(unload_dependents)" in extensions

        def unload(name: str, body: object = None) -> requests.Response:
            return requests.post(f"{server.base}/v2/repository/models/{name}/unload", json=body, timeout=60)

        def load(name: str) -> None:
            assert requests.post(f"{server.base}/v2/repository/models/{name}/load", timeout=60).status_code == 200

        load("times3")  # triple is loaded already: it stays loaded along with times6
        assert unload("times6", {"parameters": {"unload_dependents": True}}).status_code == 200
        # double went with it; triple stays, times3 still uses it
        assert ready(server, "times6", "double", "triple") == {"times6": False, "double": False, "triple": True}
        assert unload("times3", {"parameters": {"unload_dependents": True}}).status_code == 200
        assert ready(server, "times3", "triple") == {"times3": False, "triple": False}

        load("double")  # loaded by name: an ensemble's unload never takes it
        load("times6")
        assert ready(server, "triple") == {"triple": True}
        assert unload("times6", {"parameters": {"unload_dependents": True}}).status_code == 200
        assert ready(server, "double", "triple") == {"double": True, "triple": False}

        load("times6")
        assert unload("times6", {"parameters": {"unload_dependents": False}}).status_code == 200
        assert unload("times2").status_code == 200  # not loaded: no error, as in Triton
        assert ready(server, "times6", "double", "triple") == {"times6": False, "double": True, "triple": True}

        wrong = unload("double", {"parameters": {"unload_dependents": "yes"}})
        assert wrong.status_code == 400
        assert wrong.json()["error"] == ("failed to unload 'double': parameter 'unload_dependents' must be a "
                                         "boolean, got 'yes'")
        assert ready(server, "double") == {"double": True}


def test_unload_dependents_over_grpc(tmp_path: Path) -> None:
    """The same parameter on gRPC's RepositoryModelUnload (a bool_param, as tritonclient sends it)."""
    import tritonclient.grpc as grpcclient

    ensemble_repository(tmp_path)
    with serve(tmp_path, "--model-control", "explicit", grpc=True) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        client.load_model("times6")
        client.load_model("times2")
        assert all(client.is_model_ready(name) for name in ("times6", "times2", "double", "triple"))
        client.unload_model("times6", unload_dependents=True)
        assert [client.is_model_ready(name) for name in ("times6", "double", "triple")] == [False, True, False]
        client.unload_model("times2")
        assert client.is_model_ready("double")  # no unload_dependents: it stays
        client.load_model("times2")
        client.unload_model("times2", unload_dependents=True)
        assert not client.is_model_ready("double")  # still never loaded by name: it goes now
        client.close()
