"""`inferd torchserve`'s config snapshots (TorchServe's logs/config/*.cfg): written at the start,
after each management change and at the stop; a start without --ncs and --ts-config restores the
newest. And a model-config.yaml asking for torchrun workers is refused at registration."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests import ts_archives
from tests.conftest import ROOT, free_port, until_ready


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ts_archives.build_store(tmp_path_factory.mktemp("ts"))


def _command(workdir: Path, *flags: str) -> tuple[list[str], dict[str, str]]:
    command = [sys.executable, "-m", "inferd", "torchserve", "--start", "--foreground", *flags]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT / "src")),
           "TMPDIR": str(workdir)}  # its pid file (TorchServe's, in the temp folder) is ours
    env.pop("LOG_LOCATION", None)  # the snapshots go to workdir/logs/config
    return command, env


@contextlib.contextmanager
def torchserve(workdir: Path, *flags: str) -> Iterator[str]:
    """``inferd torchserve`` started in ``workdir`` with these flags only; yields the management address
    (read from the config.properties ``config`` writes: a snapshot repeats it)."""
    command, env = _command(workdir, *flags)
    with until_ready(command, env, workdir, []):
        yield (workdir / "management").read_text()


def config(workdir: Path, store: Path) -> Path:
    """config.properties on free ports, with the model API on and no token authorization."""
    ports = {api: free_port() for api in ("inference", "management", "metrics", "grpc_inference",
                                          "grpc_management")}
    lines = [f"{api}_address=http://127.0.0.1:{ports[api]}" for api in ("inference", "management", "metrics")]
    lines += [f"{api}_port={ports[api]}" for api in ("grpc_inference", "grpc_management")]
    lines += [f"model_store={store}", "disable_token_authorization=true", "enable_model_api=true"]
    (workdir / "management").write_text(f"http://127.0.0.1:{ports['management']}")
    path = workdir / "config.properties"
    path.write_text("\n".join(lines) + "\n")
    return path


def snapshots(workdir: Path, kind: str = "") -> list[str]:
    folder = workdir / "logs" / "config"
    return sorted(path.name for path in folder.glob(f"*{kind}.cfg")) if folder.is_dir() else []


def _store(archives: Path, root: Path) -> Path:
    store = root / "store"
    store.mkdir()
    for name in ("ts_mlp.mar", "ts_mlp_v2.mar"):
        (store / name).write_bytes((archives / name).read_bytes())
    return store


def _versions(management: str, name: str) -> dict[str, Any]:
    described = requests.get(f"{management}/models/{name}/all", timeout=10).json()
    return {row["modelVersion"]: row for row in described}


def test_a_start_without_ts_config_restores_the_newest_snapshot(archives: Path, tmp_path: Path) -> None:
    store = _store(archives, tmp_path)
    with torchserve(tmp_path, "--ts-config", str(config(tmp_path, store))) as management:
        assert len(snapshots(tmp_path, "startup")) == 1
        for url in ("/models?url=ts_mlp.mar&initial_workers=1&batch_size=2&max_batch_delay=40",
                    "/models?url=ts_mlp_v2.mar&model_name=ts_mlp&initial_workers=1"):
            assert requests.post(f"{management}{url}", timeout=120).status_code == 200
        assert requests.put(f"{management}/models/ts_mlp/1.0?min_worker=2&max_worker=3&synchronous=true",
                            timeout=120).status_code == 200
        assert requests.put(f"{management}/models/ts_mlp/1.0/set-default", timeout=10).status_code == 200
        assert len(snapshots(tmp_path, "-snapshot")) == 4  # one per change
    assert len(snapshots(tmp_path, "shutdown")) == 1

    with torchserve(tmp_path) as management:  # no --ts-config: the shutdown snapshot, its addresses too
        versions = _versions(management, "ts_mlp")
        assert sorted(versions) == ["1.0", "2.0"]
        first = versions["1.0"]
        assert (first["minWorkers"], first["maxWorkers"], first["batchSize"], first["maxBatchDelay"]) == (2, 3, 2, 40)
        assert len(first["workers"]) == 2 and len(versions["2.0"]["workers"]) == 1
        default = requests.get(f"{management}/models/ts_mlp", timeout=10).json()[0]
        assert default["modelVersion"] == "1.0"
    assert len(snapshots(tmp_path, "startup")) == 2  # restoring is not a management change
    assert len(snapshots(tmp_path, "-snapshot")) == 4


def test_ncs_writes_and_restores_nothing(archives: Path, tmp_path: Path) -> None:
    store = _store(archives, tmp_path)
    properties = config(tmp_path, store)
    with torchserve(tmp_path, "--ts-config", str(properties)) as management:
        assert requests.post(f"{management}/models?url=ts_mlp.mar&initial_workers=1", timeout=120).status_code == 200
    written = snapshots(tmp_path)
    with torchserve(tmp_path, "--ncs", "--ts-config", str(properties)) as management:
        assert requests.get(f"{management}/models", timeout=10).json() == {"models": []}
        assert requests.post(f"{management}/models?url=ts_mlp_v2.mar&initial_workers=0",
                             timeout=120).status_code == 200
    assert snapshots(tmp_path) == written


def test_a_workflows_models_are_left_out_as_in_torchserve(archives: Path, tmp_path: Path) -> None:
    from tests.e2e.test_torchserve_workflows import SPEC, build_war

    store = _store(archives, tmp_path)
    (store / "doubler.mar").write_bytes((archives / "doubler.mar").read_bytes())
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    build_war(workflows, "arith", SPEC)
    with torchserve(tmp_path, "--ts-config", str(config(tmp_path, store)), "--workflow-store",
                    str(workflows)) as management:
        assert requests.post(f"{management}/workflows?url=arith.war", timeout=180).status_code == 200
        assert requests.post(f"{management}/models?url=ts_mlp_v2.mar&initial_workers=0",
                             timeout=60).status_code == 200
    with torchserve(tmp_path, "--workflow-store", str(workflows)) as management:
        listed = requests.get(f"{management}/models", timeout=10).json()["models"]
        assert [row["modelName"] for row in listed] == ["ts_mlp_v2"]


def _refused(workdir: Path, *flags: str) -> str:
    command, env = _command(workdir, *flags)
    finished = subprocess.run(command, cwd=workdir, capture_output=True, text=True, env=env, timeout=120)
    assert finished.returncode != 0, finished.stdout
    return finished.stderr


def test_a_corrupt_snapshot_or_one_missing_its_archive_is_a_clear_error(archives: Path, tmp_path: Path) -> None:
    store = _store(archives, tmp_path)
    folder = tmp_path / "logs" / "config"
    folder.mkdir(parents=True)
    lines = config(tmp_path, store).read_text()
    (folder / "20260101000000000-snapshot.cfg").write_text(lines + 'model_snapshot={"models"\\: {"a"\n')
    assert "model_snapshot in " in _refused(tmp_path) and "not JSON" in _refused(tmp_path)
    missing = '{"models": {"gone": {"1.0": {"marName": "gone.mar", "minWorkers": 1, "defaultVersion": true}}}}'
    (folder / "20260101000000001-snapshot.cfg").write_text(lines + f"model_snapshot={missing}\n")
    message = _refused(tmp_path)  # the newest: its archive is not in the store, so no start
    assert "gone.mar for model gone, version 1.0 not found in model store" in message


TORCHRUN_YAML = """\
minWorkers: 1
maxWorkers: 1
parallelType: tp
torchrun:
  nproc-per-node: 2
"""


def test_torchrun_workers_are_refused_at_registration_naming_the_key(archives: Path, tmp_path: Path) -> None:
    store = _store(archives, tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    (work / "model-config.yaml").write_text(TORCHRUN_YAML)
    ts_archives.archive(store, "tp_mlp", archives.parent / "work" / "mlp.pt", "base_handler",
                        config_file=work / "model-config.yaml")
    # torchrun without a parallelType: TorchServe starts a plain worker, and so does inferd
    (work / "model-config.yaml").write_text("torchrun:\n  nproc-per-node: 2\n")
    ts_archives.archive(store, "torchrun_mlp", archives.parent / "work" / "mlp.pt", "base_handler",
                        config_file=work / "model-config.yaml")
    with torchserve(tmp_path, "--ncs", "--ts-config", str(config(tmp_path, store))) as management:
        answer = requests.post(f"{management}/models?url=tp_mlp.mar&initial_workers=1", timeout=120)
        assert answer.status_code == 400
        message = answer.json()["message"]
        assert "parallelType: tp with torchrun nproc-per-node: 2" in message and "no torchrun workers" in message
        assert requests.get(f"{management}/models", timeout=10).json() == {"models": []}
        answer = requests.post(f"{management}/models?url=torchrun_mlp.mar&initial_workers=1", timeout=120)
        assert answer.status_code == 200, answer.text
