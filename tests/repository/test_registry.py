from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable
from pathlib import Path

import numpy as np
import pytest

from inferd.config import VersionPolicy
from inferd.errors import NotFound, Unavailable
from inferd.isolation.process import ProcessRuntime
from inferd.repository.layout import find_artifact, is_valid_name, scan
from inferd.repository.registry import ModelRegistry
from inferd.runtimes.base import Runtime
from inferd.types import ModelState
from tests.models import PYTHON_CONFIG, PYTHON_MODEL, write


def python_model(root: Path, name: str, versions: list[int], config: str = PYTHON_CONFIG) -> None:
    for version in versions:
        write(root / name / str(version) / "model.py", PYTHON_MODEL)
    write(root / name / "config.toml", config)


def test_scan_reads_integer_versions_and_skips_the_rest(tmp_path: Path) -> None:
    python_model(tmp_path, "m", [1, 3, 10])
    (tmp_path / "m/notaversion").mkdir()
    (tmp_path / ".hidden").mkdir()
    folders = scan(tmp_path)
    assert [f.name for f in folders] == ["m"]
    assert list(folders[0].versions) == [1, 3, 10]


def test_find_artifact_names_what_it_expected(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(Exception, match=r"no model artifact.*model.onnx.*weights.bin"):
        find_artifact(tmp_path, None)


@pytest.mark.parametrize("name", ["..", "../x", ".x", "a/b", "", "a" * 200])
def test_bad_names(name: str) -> None:
    assert not is_valid_name(name)


@pytest.mark.parametrize(("policy", "chosen"), [
    (VersionPolicy(), [7]),
    (VersionPolicy(latest=2), [3, 7]),
    (VersionPolicy(latest=None, all=True), [1, 3, 7]),
    (VersionPolicy(latest=None, specific=(1, 7, 9)), [1, 7]),
])
def test_version_policy(policy: VersionPolicy, chosen: list[int]) -> None:
    assert policy.choose([1, 3, 7]) == chosen


def test_registry_serves_versions_and_isolates_broken_models(tmp_path: Path) -> None:
    python_model(tmp_path, "good", [1, 2], PYTHON_CONFIG + "\n[version_policy]\nall = true\n")
    python_model(tmp_path, "crashes_on_load", [1])
    write(tmp_path / "crashes_on_load/1/model.py", "raise ImportError('no such thing')\n")
    write(tmp_path / "empty/config.toml", "")
    registry = ModelRegistry(tmp_path)
    asyncio.run(registry.load_all())
    runtime, version = registry.get("good", None)
    assert version == "2"
    assert registry.get("good", "1")[1] == "1"
    out = runtime.infer({"x": np.array([1.0])})
    assert out["y"].tolist() == [12.0]
    broken = registry.models["crashes_on_load"].versions["1"]
    assert broken.state is ModelState.UNAVAILABLE
    assert "no such thing" in broken.reason
    with pytest.raises(Unavailable, match="no such thing"):
        registry.get("crashes_on_load", None)
    with pytest.raises(Unavailable, match="no version folder"):
        registry.get("empty", None)
    with pytest.raises(NotFound):
        registry.get("absent", None)
    with pytest.raises(NotFound, match="served versions: 1, 2"):
        registry.get("good", "5")


@pytest.mark.parametrize("where", ["import", "load"])
def test_a_python_model_that_exits_fails_its_load_not_the_server(tmp_path: Path, where: str) -> None:
    python_model(tmp_path, "good", [1])
    python_model(tmp_path, "exits", [1], PYTHON_CONFIG + '\n[instance_group]\nkind = "cpu"\n')
    exits = ("import argparse\nargparse.ArgumentParser().parse_args(['--oops'])\n" if where == "import" else
             "import sys\nclass Model:\n    def load(self):\n        sys.exit(3)\n    def infer(self, inputs):\n"
             "        return inputs\n")
    write(tmp_path / "exits/1/model.py", exits)
    registry = ModelRegistry(tmp_path)
    asyncio.run(registry.load_all())
    assert registry.get("good", None)[1] == "1"
    broken = registry.models["exits"].versions["1"]
    assert broken.state is ModelState.UNAVAILABLE
    assert "SystemExit" in broken.reason and "must not exit" in broken.reason


def test_poll_reports_an_unreadable_config_and_retries_once_the_folder_changes(tmp_path: Path) -> None:
    python_model(tmp_path, "good", [1])
    python_model(tmp_path, "m", [1])
    (tmp_path / "m/config.toml").unlink()
    (tmp_path / "m/config.toml").mkdir()  # cannot be read
    registry = ModelRegistry(tmp_path)

    async def scenario() -> None:
        await registry.poll()
        entry = registry.models["m"]
        assert entry.versions["1"].state is ModelState.UNAVAILABLE
        assert "config.toml: cannot read" in entry.problem()
        assert registry.get("good", None)[1] == "1"
        (tmp_path / "m/config.toml").rmdir()
        write(tmp_path / "m/config.toml", PYTHON_CONFIG)
        await registry.poll()
        assert registry.get("m", None)[1] == "1"
        await registry.close()

    asyncio.run(scenario())


SLOW_MODEL = """
import time

class Model:
    def load(self):
        time.sleep(4)

    def infer(self, inputs):
        return {"y": inputs["x"], "n": inputs["x"]}
"""


def test_a_slow_load_holds_up_no_other_model(tmp_path: Path) -> None:
    python_model(tmp_path, "aaa_slow", [1], PYTHON_CONFIG + '\n[instance_group]\nkind = "cpu"\n')
    write(tmp_path / "aaa_slow/1/model.py", SLOW_MODEL)
    python_model(tmp_path, "fast", [1], PYTHON_CONFIG + '\n[instance_group]\nkind = "cpu"\n')
    registry = ModelRegistry(tmp_path)

    async def scenario() -> None:
        loading = asyncio.ensure_future(registry.load_all())
        for _ in range(30):
            await asyncio.sleep(0.1)
            if registry.models.get("fast") and registry.models["fast"].ready_versions():
                break
        assert registry.get("fast", None)[1] == "1"
        assert registry.models["aaa_slow"].versions["1"].state is ModelState.LOADING
        await loading
        assert registry.get("aaa_slow", None)[1] == "1"
        await registry.close()

    asyncio.run(scenario())


def test_a_load_stopped_midway_leaves_no_version_loading(tmp_path: Path) -> None:
    """A load cancelled while its version builds (a scan stopped at shutdown) says so instead of
    leaving the version LOADING for good; what the build makes is unloaded when it is made."""
    python_model(tmp_path, "aaa_slow", [1], PYTHON_CONFIG + '\n[instance_group]\nkind = "cpu"\n')
    write(tmp_path / "aaa_slow/1/model.py", SLOW_MODEL)
    registry = ModelRegistry(tmp_path)

    async def scenario() -> None:
        loading = asyncio.ensure_future(registry.load_model("aaa_slow"))
        await asyncio.sleep(0.5)
        assert registry.models["aaa_slow"].versions["1"].state is ModelState.LOADING
        loading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loading
        slot = registry.models["aaa_slow"].versions["1"]
        assert slot.state is ModelState.UNAVAILABLE and "stopped" in slot.reason
        with pytest.raises(Unavailable):
            registry.get("aaa_slow", None)
        await registry.close()

    asyncio.run(scenario())


def test_poll_unloads_a_version_whose_folder_was_removed(tmp_path: Path) -> None:
    import shutil

    python_model(tmp_path, "m", [1, 2], PYTHON_CONFIG + "\n[version_policy]\nall = true\n")
    registry = ModelRegistry(tmp_path)

    async def scenario() -> None:
        await registry.poll()
        assert registry.models["m"].ready_versions() == ["1", "2"]
        write(tmp_path / "m/1/model.py", "raise ImportError('broken now')\n")
        shutil.rmtree(tmp_path / "m/2")
        await registry.poll()  # version 1 fails to reload and keeps serving; version 2 is gone
        assert registry.models["m"].ready_versions() == ["1"]
        with pytest.raises(NotFound):
            registry.get("m", "2")
        shutil.rmtree(tmp_path / "m/1")  # the only version left
        await registry.poll()
        with pytest.raises(Unavailable, match="no version folder"):
            registry.get("m", None)
        assert registry.models["m"].versions == {}
        await registry.close()

    asyncio.run(scenario())


def test_folders_skipped_for_their_names_are_logged_and_a_load_says_why(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    from inferd.errors import InvalidInput

    python_model(tmp_path, "good", [1])
    python_model(tmp_path, "my model", [1])
    (tmp_path / ".hidden").mkdir()
    registry = ModelRegistry(tmp_path)

    async def scenario() -> None:
        await registry.load_all()
        await registry.poll()  # logged once, not at every scan
        with pytest.raises(InvalidInput, match=r"failed to load 'my model': .*letters, digits"):
            await registry.load_model("my model")
        await registry.close()

    asyncio.run(scenario())
    skipped = [r.getMessage() for r in caplog.records if "is not served" in r.getMessage()]
    assert len(skipped) == 1 and "'my model'" in skipped[0] and "starting with a letter or digit" in skipped[0]
    assert list(registry.models) == []


async def longest_stall(work: Awaitable[object]) -> float:
    """The event loop's longest stall while ``work`` runs, seen by a task that sleeps 5 ms at a time."""
    stalls, done = [0.0], asyncio.Event()

    async def tick() -> None:
        while not done.is_set():
            start = time.monotonic()
            await asyncio.sleep(0.005)
            stalls.append(time.monotonic() - start)

    ticker = asyncio.ensure_future(tick())
    await asyncio.sleep(0.02)
    await work
    done.set()
    await ticker
    return max(stalls)


def test_a_poll_reads_the_disk_off_the_event_loop(tmp_path: Path) -> None:
    """A model folder of thousands of files (or a link to a large tree) was walked on the event
    loop by every poll and every load: no request was answered meanwhile."""
    from tests.conftest import holds_in_one_of

    python_model(tmp_path, "many", [1])
    for group in range(5):
        folder = tmp_path / "many/1/data" / str(group)
        folder.mkdir(parents=True)
        for i in range(1000):
            (folder / str(i)).touch()

    async def scenario() -> str | None:
        registry: ModelRegistry[Runtime] = ModelRegistry(tmp_path)
        first = await longest_stall(registry.poll())  # loads the model: its fingerprint, its build
        assert registry.get("many", None)[1] == "1"
        again = await longest_stall(registry.poll())  # nothing changed: the walk alone
        await registry.close()
        return None if max(first, again) < 0.25 else f"the event loop stalled {first:.2f} s, {again:.2f} s"

    holds_in_one_of(3, lambda: asyncio.run(scenario()))


def test_a_large_config_pbtxt_is_parsed_off_the_event_loop(tmp_path: Path) -> None:
    """protobuf's text format parses about half a megabyte a second: a config.pbtxt of 400 KB held
    every request for most of a second, at each load and each load with an override."""
    from tests.conftest import holds_in_one_of

    write(tmp_path / "big/1/model.py", PYTHON_MODEL)
    lines = ['backend: "python"'] + [f'parameters {{ key: "k{i}" value {{ string_value: "{"v" * 64}" }} }}'
                                     for i in range(4000)]
    write(tmp_path / "big/config.pbtxt", "\n".join(lines))

    async def scenario() -> str | None:
        registry: ModelRegistry[Runtime] = ModelRegistry(tmp_path)
        # the model fails to load (its config.pbtxt declares no tensors): what matters is the wait
        load = await longest_stall(registry.load_model("big"))
        override = await longest_stall(registry.load_model("big", override='{"max_batch_size": 0}'))
        await registry.close()
        return None if max(load, override) < 0.25 else f"the event loop stalled {load:.2f} s, {override:.2f} s"

    holds_in_one_of(3, lambda: asyncio.run(scenario()))


TRITON_ECHO = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x")
                                                            .as_numpy())]) for r in requests]
"""
TRITON_ECHO_PBTXT = """
backend: "python"
input [ { name: "x" data_type: TYPE_FP64 dims: [ -1 ] } ]
output [ { name: "y" data_type: TYPE_FP64 dims: [ -1 ] } ]
"""


def test_a_process_instance_call_has_no_time_limit_unless_config_toml_sets_one(tmp_path: Path) -> None:
    """Triton gives a Python model's execute no time limit (its QA's bls model ran past 120 s): a
    config.pbtxt model's process calls wait as long as the model runs; config.toml, inferd's own
    file, keeps its 120 s default against hung instances, and what it sets."""
    write(tmp_path / "triton/1/model.py", TRITON_ECHO)
    write(tmp_path / "triton/config.pbtxt", TRITON_ECHO_PBTXT)
    python_model(tmp_path, "toml_default", [1])
    python_model(tmp_path, "toml_set", [1], PYTHON_CONFIG + "\n[instance_group]\nresponse_timeout_s = 7\n")
    registry = ModelRegistry(tmp_path)
    asyncio.run(registry.load_all())
    try:
        limits: dict[str, float] = {}
        for name in ("triton", "toml_default", "toml_set"):
            runtime = registry.get(name, None)[0]
            assert isinstance(runtime, ProcessRuntime), runtime
            limits[name] = runtime.spec.response_timeout_s
            assert runtime.infer({"x": np.array([1.0, 2.0])})["y"].shape == (2,)
        assert limits == {"triton": math.inf, "toml_default": 120.0, "toml_set": 7.0}
    finally:
        asyncio.run(registry.close())
