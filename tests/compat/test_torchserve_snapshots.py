"""TorchServe's config snapshot files: what is written reads back, in Java's properties escapes too."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferd.compat import torchserve_snapshots
from inferd.compat.torchserve import read_properties
from inferd.errors import ConfigError

MODELS = {"mnist": {"1.0": {"defaultVersion": True, "marName": "mnist.mar", "minWorkers": 1, "maxWorkers": 2,
                            "batchSize": 1, "maxBatchDelay": 100, "responseTimeout": 120, "startupTimeout": 120,
                            "runtimeType": "python"}}}


def test_a_written_snapshot_reads_back_and_the_newest_is_found(tmp_path: Path) -> None:
    written = torchserve_snapshots.write(tmp_path, "snapshot", {"model_store": "/m", "a": "http://h:1"}, MODELS)
    assert written is not None and written.name.endswith("-snapshot.cfg")
    (tmp_path / "19990101000000000-startup.cfg").write_text("")
    (tmp_path / "notes.cfg").write_text("")  # no timestamp: not a snapshot
    assert torchserve_snapshots.latest(tmp_path) == written
    properties = read_properties(written.read_text())
    assert (properties["model_store"], properties["a"]) == ("/m", "http://h:1")
    assert "\\:" in properties["model_snapshot"]  # one line, as Java's Properties.store escapes it
    assert torchserve_snapshots.models_of(properties["model_snapshot"], "x") == MODELS


def test_java_escapes_and_a_snapshot_that_is_not_one(tmp_path: Path) -> None:
    escaped = '{\\n  "models"\\: {"m"\\: {"2.0"\\: {"marName"\\: "m.mar"}}}}'  # as test_snapshot.py rewrites it
    assert torchserve_snapshots.models_of(escaped, "x") == {"m": {"2.0": {"marName": "m.mar"}}}
    with pytest.raises(ConfigError, match=r"model_snapshot in s\.cfg is not a TorchServe snapshot: not JSON"):
        torchserve_snapshots.models_of('{"models": ', "s.cfg")
    with pytest.raises(ConfigError, match=r"expected .*marName"):
        torchserve_snapshots.models_of('{"models": {"m": {"1.0": {"minWorkers": 1}}}}', "s.cfg")
    assert torchserve_snapshots.latest(tmp_path / "none") is None
