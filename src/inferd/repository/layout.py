"""Reading a model repository folder: models, integer versions, artifacts and config.toml.

    models/<name>/config.toml            optional
    models/<name>/<version>/<artifact>   version folders are integers; the artifact names the format
    models/<name>/<artifact>             no version folders: the folder itself is version 1

The folder given to ``inferd serve`` may also be one model's folder rather than a repository (what
KServe's storage initializer leaves in /mnt/models): see ``single_model``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from inferd.config import (
    INT64_MAX,
    MODEL_NAME,
    NAME_RULE,
    InstanceGroup,
    ModelConfig,
    ServedConfig,
    load_model_config,
)
from inferd.errors import ConfigError
from inferd.modelconfig import PBTXT, apply_override, model_config_json, read_pbtxt
from inferd.runtimes.torchserve import TGZ_SUFFIX
from inferd.types import numpy_dtype

log = logging.getLogger("inferd.repository")

# artifact file or folder name -> backend, in the order they are looked for
ARTIFACTS: dict[str, str] = {
    "model.onnx": "onnx",
    "model.pt2": "torch",
    "model.pt": "torch",
    "model.py": "python",
    "saved_model.pb": "tensorflow",
    "model.savedmodel": "tensorflow",
    "model.tflite": "tflite",  # after the SavedModel: TF Serving serves model.tflite only when told to prefer it
    "model.mar": "torchserve",
}
TFLITE = "model.tflite"




def is_archive(path: Path) -> bool:
    """A TorchServe model archive: a ``.mar`` file, a ``.tar.gz`` (``--archive-format tgz``), or the
    folder ``--archive-format no-archive`` makes (its files with ``MAR-INF/MANIFEST.json``)."""
    return (path.suffix == ".mar" or (path.name.endswith(TGZ_SUFFIX) and not path.is_dir())
            or (path / "MAR-INF" / "MANIFEST.json").is_file())


@dataclass(frozen=True, slots=True)
class ModelFolder:
    name: str
    path: Path
    versions: dict[int, Path]  # version -> its folder

    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    @property
    def pbtxt_path(self) -> Path:
        return self.path / PBTXT


def read_config(folder: ModelFolder) -> ModelConfig:
    """The model's configuration: config.toml, else Triton's config.pbtxt, else all defaults.

    When both are there config.toml wins: it is inferd's own file, says what config.pbtxt cannot
    (process instances, response timeouts, memory limits, version labels), and someone wrote it
    for inferd on purpose beside a repository's config.pbtxt. The ignored file is logged."""
    toml, pbtxt = folder.config_path, folder.pbtxt_path
    if toml.exists():
        if pbtxt.exists():
            log.warning("model %s: config.toml and config.pbtxt both exist; config.toml wins, "
                        "config.pbtxt is not read", folder.name)
        return read_labels(load_model_config(toml), folder.path)
    if pbtxt.exists():
        return read_labels(read_pbtxt(pbtxt), folder.path)
    return ModelConfig(instance_group=InstanceGroup(response_timeout_s=0.0))  # Triton's: no time limit


def auto_completed(folder: ModelFolder, config: ModelConfig) -> ModelConfig:
    """A Triton Python model's configuration as its ``auto_complete_config`` completes it (the
    newest version's model.py, as Triton does at load): tensors, batch size, dynamic batching,
    decoupled. Runs model code in a process of its own: call it off the event loop."""
    if config.backend not in (None, "", "python") or not folder.versions:
        return config
    model_py = folder.versions[max(folder.versions)] / "model.py"
    if not model_py.is_file():
        return config
    from inferd.runtimes import triton_python  # numpy and the model's own imports, only now

    given = model_config_json(ServedConfig(name=folder.name, platform="", backend="python", config=config))
    completed = triton_python.auto_complete(model_py, dict(given))
    if completed is None:
        return config
    changed = {key: completed[key] for key in _COMPLETED
               if key in completed and completed[key] != given.get(key)}
    return apply_override(config, json.dumps(changed), folder.name) if changed else config


_COMPLETED = ("input", "output", "max_batch_size", "dynamic_batching", "model_transaction_policy")


def read_labels(config: ModelConfig, folder: Path) -> ModelConfig:
    """Each output's ``label_filename`` (one label a line, in the model's folder) read now."""
    outputs = []
    for tensor in config.outputs:
        if tensor.label_filename:
            path = folder / tensor.label_filename
            if Path(tensor.label_filename).is_absolute() or ".." in Path(tensor.label_filename).parts:
                raise ConfigError(f"{config.source}: output '{tensor.name}' label_filename must name a file in "
                                  f"the model's folder, got {tensor.label_filename!r}")
            try:
                labels = tuple(path.read_text(encoding="utf-8").splitlines())
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{config.source}: output '{tensor.name}' label_filename: {exc}") from exc
            tensor = replace(tensor, labels=labels)
        outputs.append(tensor)
    return replace(config, outputs=tuple(outputs))


INITIAL_STATE_FOLDER = "initial_state"  # Triton's: the files of sequence_batching state's initial_state


def read_initial_states(config: ModelConfig, folder: Path) -> ModelConfig:
    """Each implicit state's ``initial_state`` data_file (raw, row-major, in the model folder's
    ``initial_state/``) read now, checked to hold the state's bytes (Triton's rule: at least that
    many; only those are used)."""
    batching = config.sequence_batching
    if batching is None or not any(s.initial is not None and s.initial.source == "file" for s in batching.states):
        return config
    states = []
    for state in batching.states:
        initial = state.initial
        if initial is not None and initial.source == "file":
            path = folder / INITIAL_STATE_FOLDER / initial.file
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"{config.source}: sequence_batching state '{state.input_name}' initial_state "
                                  f"data_file: {exc}") from exc
            wanted = math.prod(initial.dims) * numpy_dtype(initial.datatype).itemsize
            if len(data) < wanted:
                raise ConfigError(f"{config.source}: sequence_batching state '{state.input_name}': initial_state "
                                  f"{initial.datatype} {list(initial.dims)} needs {wanted} bytes, but {path} has "
                                  f"{len(data)}")
            state = replace(state, initial=replace(initial, data=data[:wanted]))
        states.append(state)
    return replace(config, sequence_batching=replace(batching, states=tuple(states)))

def is_valid_name(name: str) -> bool:
    """Model names are plain folder names: no separators, no dot-dot, no leading dot."""
    return bool(MODEL_NAME.match(name)) and ".." not in name


def misnamed(root: Path) -> list[str]:
    """The folders under ``root`` that ``scan`` skips for their names (hidden ones aside)."""
    if not root.is_dir():
        return []
    return sorted(child.name for child in root.iterdir()
                  if child.is_dir() and not child.name.startswith(".") and not is_valid_name(child.name))


def skipped_because(name: str) -> str:
    return f"folder {name!r} is not served: {NAME_RULE}"


def scan(root: Path) -> list[ModelFolder]:
    """Every model folder under ``root``, sorted by name. Hidden and badly named folders are skipped."""
    if not root.is_dir():
        raise ConfigError(f"model repository {root} is not a folder")
    return [read_model_folder(child) for child in sorted(root.iterdir())
            if child.is_dir() and is_valid_name(child.name)]


def read_model_folder(path: Path, name: str | None = None) -> ModelFolder:
    """A model's folder; ``name`` defaults to the folder's. Version folders are integers, zero-padded
    or not (TF Serving's testdata has ``00000123``: version 123), from 1 to int64's largest (as in
    Triton and TF Serving, whose protocols carry int64 versions). Where two folders name one
    version (``1`` and ``01``), the one without leading zeros wins, so every scan picks the same.
    A missing folder (or one removed since the repository was listed) has no versions."""
    try:
        children = sorted(path.iterdir(), key=lambda child: (child.name.startswith("0"), child.name))
    except OSError:  # a scan must not fail for a folder someone removes meanwhile
        children = []
    versions: dict[int, Path] = {}
    for child in children:
        if child.name.isascii() and child.name.isdigit() and 0 < int(child.name) <= INT64_MAX and child.is_dir():
            versions.setdefault(int(child.name), child)
    if not versions and has_artifact(path):  # the artifact at the top: the folder is version 1
        versions = {1: path}
    return ModelFolder(name=name or path.name, path=path, versions=dict(sorted(versions.items())))


def write_override_folder(name: str, files: dict[str, bytes]) -> ModelFolder:
    """A load's override files as a model folder of their own, in a fresh temporary folder (its
    parent is the caller's to remove). Paths are relative and already checked by the protocol."""
    root = Path(tempfile.mkdtemp(prefix="inferd-load-"))
    folder = root / name
    try:
        for relative, content in files.items():
            target = folder.joinpath(*PurePosixPath(relative).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    except OSError:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return read_model_folder(folder, name)


def has_artifact(folder: Path) -> bool:
    """Whether a model artifact lies directly in ``folder``."""
    return any((folder / filename).exists() for filename in ARTIFACTS)


def single_model(root: Path) -> bool:
    """Whether ``root`` is one model's folder rather than a repository of models folders.

    KServe's storage initializer copies one model to /mnt/models as ``model.onnx`` (the artifact
    at the top) or as ``1/model.onnx`` (version folders at the top); a repository has a folder
    per model. Integer folders at the top that hold an artifact are versions, not models named
    "1"; any other model folder beside them makes ``root`` a repository."""
    if not root.is_dir():
        return False
    if has_artifact(root):
        return True
    folders = [child for child in root.iterdir() if child.is_dir() and is_valid_name(child.name)]
    versions = [child for child in folders if child.name.isascii() and child.name.isdigit()]
    return bool(versions) and len(versions) == len(folders) and any(has_artifact(v) for v in versions)


def find_artifact(version_dir: Path, backend: str | None, filename: str = "",
                  prefer_tflite: bool = False) -> tuple[Path, str]:
    """The artifact in a version folder and the backend that loads it (an ensemble's version
    folder is empty, as in Triton: the folder stands for it). ``filename``: Triton's
    default_model_filename, the artifact's name when it is not the usual one. ``prefer_tflite``:
    TF Serving's --prefer_tflite_model, model.tflite before saved_model.pb (which serves where
    there is no model.tflite)."""
    if backend == "ensemble":
        return version_dir, backend
    if filename:
        return _named_artifact(version_dir / filename, backend)
    if prefer_tflite and backend in (None, "tensorflow", "tflite") and (version_dir / TFLITE).is_file():
        return version_dir / TFLITE, "tflite"
    for filename, kind in ARTIFACTS.items():
        candidate = version_dir / filename
        if candidate.exists() and (backend is None or backend == kind):
            if kind == "tensorflow" and filename == "saved_model.pb":
                candidate = version_dir
            return candidate, kind
    wanted = [f for f, k in ARTIFACTS.items() if backend in (None, k)]
    found = sorted(p.name for p in version_dir.iterdir()) if version_dir.is_dir() else []
    raise ConfigError(f"{version_dir}: no model artifact; expected one of {wanted}, found {found}")


_SUFFIXES = {".onnx": "onnx", ".pt": "torch", ".pt2": "torch", ".py": "python", ".savedmodel": "tensorflow",
             ".tflite": "tflite", ".mar": "torchserve"}


def _named_artifact(candidate: Path, backend: str | None) -> tuple[Path, str]:
    if not candidate.exists():
        raise ConfigError(f"{candidate}: no such file (the model's default_model_filename)")
    kind = backend or _SUFFIXES.get(candidate.suffix) or (
        "tensorflow" if (candidate / "saved_model.pb").exists() else None)
    if kind is None:
        raise ConfigError(f"{candidate}: name the backend (platform or backend in config.pbtxt): its suffix does "
                          f"not say which of {sorted(set(_SUFFIXES.values()))} loads it")
    return candidate, kind


Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(folder: ModelFolder) -> Fingerprint:
    """What a poll compares: every file's path, size and mtime under the model's folder, following
    symbolic links (git-sync and Kubernetes volumes swap version folders by a link), each folder
    once (a link back up is no loop), and where each link points."""
    found: list[tuple[str, int, int]] = []
    seen: set[tuple[int, int]] = set()
    for top, folders, files in os.walk(folder.path, followlinks=True):
        here = Path(top)
        try:
            where = here.stat()
        except OSError:
            folders.clear()
            continue
        if (where.st_dev, where.st_ino) in seen:
            folders.clear()
            continue
        seen.add((where.st_dev, where.st_ino))
        for name in sorted(folders + files):
            path = here / name
            relative = str(path.relative_to(folder.path))
            if path.is_symlink():
                found.append((f"{relative} -> {_readlink(path)}", 0, 0))
            if name in files:
                try:
                    stat = path.stat()
                except OSError:  # a dangling link, or gone since the listing
                    continue
                found.append((relative, stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(found))


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"
