"""TorchServe's config snapshots (its snapshot/FSSnapshotSerializer, pytorch/serve 62c4d6a1f).

``LOG_LOCATION/config`` (``./logs/config`` by default) gets ``<yyyyMMddHHmmssSSS>-startup.cfg`` once
the server serves, ``-snapshot.cfg`` after each management change and ``-shutdown.cfg`` at the stop:
the config.properties lines plus ``model_snapshot={json}``, each model version's workers, batching,
timeouts and whether it is the default. A start without ``--ncs`` and without ``--ts-config`` reads
the newest one; ``--ts-config <snapshot>`` reads that one.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from inferd.errors import ConfigError

SNAPSHOT_KEY = "model_snapshot"
_NAME = re.compile(r"(\d{17})-[^/]*\.cfg")  # TorchServe's yyyyMMddHHmmssSSS timestamp first
VersionState = dict[str, Any]  # TorchServe's Model.getModelState: marName, minWorkers, ... defaultVersion


def folder(environ: dict[str, str], cwd: Path) -> Path:
    """Where TorchServe keeps them: ``LOG_LOCATION/config``, as its log files (torchserve_logs.py)."""
    return Path(environ.get("LOG_LOCATION") or cwd / "logs") / "config"


def latest(snapshots: Path) -> Path | None:
    """The newest snapshot by the timestamp its name starts with (TorchServe's getLastSnapshot)."""
    if not snapshots.is_dir():
        return None
    stamped = [(match.group(1), path) for path in snapshots.iterdir()
               if path.is_file() and (match := _NAME.fullmatch(path.name))]
    return max(stamped)[1] if stamped else None


def _timestamp() -> str:
    now = time.time()
    return time.strftime("%Y%m%d%H%M%S", time.localtime(now)) + f"{int(now * 1000) % 1000:03d}"


def write(snapshots: Path, kind: str, properties: dict[str, str],
          models: dict[str, dict[str, VersionState]]) -> Path | None:
    """Write ``<timestamp>-<kind>.cfg``; None when that name exists already (TorchServe keeps the first)."""
    snapshots.mkdir(parents=True, exist_ok=True)
    path = snapshots / f"{_timestamp()}-{kind}.cfg"
    if path.exists():
        return None
    snapshot = {"name": path.name, "modelCount": sum(len(versions) for versions in models.values()),
                "created": int(time.time() * 1000), "models": models}
    lines = ["#Saving snapshot", "#" + time.strftime("%a %b %d %H:%M:%S %Z %Y")]
    lines += [f"{key}={value}" for key, value in properties.items() if key != SNAPSHOT_KEY]
    # as Java's Properties.store writes it: one line, newlines and colons escaped
    text = json.dumps(snapshot, indent=2).replace("\n", "\\n").replace(":", "\\:")
    lines.append(f"{SNAPSHOT_KEY}={text}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _unescape(value: str) -> str:
    """A Java properties value's escapes (``\\n``, ``\\:``, ``\\\\``, ...)."""
    specials = {"n": "\n", "t": "\t", "r": "\r", "f": "\f"}
    return re.sub(r"\\(.)", lambda match: specials.get(match.group(1), match.group(1)), value)


def models_of(value: str, source: str) -> dict[str, dict[str, VersionState]]:
    """``model_snapshot``'s models: {name: {version: state}}; a snapshot that does not parse says so."""
    try:
        snapshot = json.loads(_unescape(value))
    except ValueError as exc:
        raise ConfigError(f"{SNAPSHOT_KEY} in {source} is not a TorchServe snapshot: not JSON ({exc})") from None
    models = snapshot.get("models") if isinstance(snapshot, dict) else None
    if not isinstance(models, dict) or not all(
            isinstance(versions, dict) and all(isinstance(state, dict) and isinstance(state.get("marName"), str)
                                               for state in versions.values())
            for versions in models.values()):
        raise ConfigError(f"{SNAPSHOT_KEY} in {source} is not a TorchServe snapshot: expected "
                          '{"models": {NAME: {VERSION: {"marName": ..., ...}}}}')
    return models


def check_archives(models: dict[str, dict[str, VersionState]], model_store: Path | None, source: str) -> None:
    """Every archive the snapshot names is in the model store, or the server does not start (as TorchServe)."""
    for name, versions in models.items():
        for version, state in versions.items():
            if model_store is None or not (model_store / state["marName"]).is_file():
                raise ConfigError(f"{source}: model archive file {state['marName']} for model {name}, version "
                                  f"{version} not found in model store {model_store}")
