"""Model lifecycle: which versions load (version policy), their state, and finding a ready one.

A model that fails to load is kept as UNAVAILABLE with its reason; it never stops the others.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from inferd.config import ModelConfig, VersionPolicy, load_model_config
from inferd.errors import ConfigError, InferdError, InvalidInput, NotFound, Unavailable
from inferd.isolation.process import InstanceSpec, ProcessRuntime
from inferd.repository.layout import ModelFolder, find_artifact, is_valid_name, read_model_folder, scan
from inferd.repository.loader import load_runtime
from inferd.runtimes.base import LoadContext, Runtime

log = logging.getLogger("inferd.repository")

DRAIN_SECONDS = 30.0  # the longest a retiring version waits for the requests it holds

# Wraps a freshly loaded runtime (scheduling: batcher, instance pool). Given by the composition root.
Wrap = Callable[[Runtime, ModelConfig, str, str], Runtime]


class ModelState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(slots=True)
class VersionEntry:
    version: str
    state: ModelState = ModelState.LOADING
    reason: str = ""
    runtime: Runtime | None = None
    signatures: dict[str, Runtime] = field(default_factory=dict)  # TensorFlow's other signatures
    default_signature: str = ""


@dataclass(slots=True)
class ModelEntry:
    name: str
    config: ModelConfig = field(default_factory=ModelConfig)
    versions: dict[str, VersionEntry] = field(default_factory=dict)
    reason: str = ""  # a problem with the model as a whole (e.g. its config.toml)
    source: str = ""  # where it came from: its folder, or the archive in the model store
    default_version: str | None = None  # set-default (TorchServe); None = the newest ready
    _newest: tuple[Runtime, str] | None = None

    def newest_ready(self) -> tuple[Runtime, str] | None:
        """The unversioned route's target (the default version if one is set and ready, else the
        newest ready); cached, refreshed whenever a version changes state."""
        if self._newest is None:
            ready = self.ready_versions()
            chosen = self.default_version if self.default_version in ready else (ready[-1] if ready else None)
            if chosen is not None:
                runtime = self.versions[chosen].runtime
                assert runtime is not None
                self._newest = (runtime, chosen)
        return self._newest

    def changed(self) -> None:
        self._newest = None

    def ready_versions(self) -> list[str]:
        ready = [v for v, e in self.versions.items() if e.state is ModelState.READY]
        return sorted(ready, key=version_key)


def version_key(version: str) -> tuple[int, tuple[int, ...], str]:
    """Versions sort numerically: "2" < "10", and TorchServe's "1.0" < "1.10"."""
    parts = version.split(".")
    if all(p.isdigit() for p in parts):
        return 0, tuple(int(p) for p in parts), ""
    return 1, (), version


def _no_wrap(runtime: Runtime, config: ModelConfig, name: str, version: str) -> Runtime:
    return runtime


def choose_versions(available: list[int], policy: VersionPolicy) -> list[int]:
    """The versions a policy serves, from the ones on disk (ascending)."""
    if policy.all:
        return list(available)
    if policy.specific:
        return [v for v in available if v in policy.specific]
    return list(available)[-(policy.latest or 1):]


class ModelRegistry:
    def __init__(self, root: Path | None, wrap: Wrap = _no_wrap) -> None:
        self._root = root
        self._wrap = wrap
        self._models: dict[str, ModelEntry] = {}
        self._fingerprints: dict[str, tuple[tuple[str, int, int], ...]] = {}

    @property
    def models(self) -> dict[str, ModelEntry]:
        return self._models

    async def load_all(self, only: tuple[str, ...] = ("*",)) -> None:
        """Load the repository's models: all of them, or the names in ``only`` ("*" = all)."""
        if self._root is None:
            return
        folders = [f for f in scan(self._root) if "*" in only or f.name in only]
        for folder in folders:  # known at once, so requests get 503 "loading", not 404
            self._models.setdefault(folder.name, ModelEntry(name=folder.name))
        for folder in folders:
            await self._load_folder(folder)

    async def load_model(self, name: str) -> ModelEntry:
        """Load a model, or reload it without loss: the new versions load and warm beside the old
        ones, then take the traffic; the old ones finish what they hold and unload."""
        if self._root is None or not is_valid_name(name):
            raise NotFound(f"model '{name}' is not in the repository")
        path = self._root / name
        if not path.is_dir():
            raise NotFound(f"model '{name}' is not in the repository")
        old = self._models.get(name)
        serving = old is not None and bool(old.ready_versions())
        entry = await self._load_folder(read_model_folder(path), publish_early=not serving)
        if old is not None and old is not entry and serving:
            if not entry.ready_versions():
                log.error("model %s: the new load has no ready version (%s); the old one keeps serving",
                          name, self.reason(entry))
                return old
            self._models[name] = entry
            await self._retire(old)
        return entry

    async def poll(self) -> None:
        """One rescan (``--model-control poll``): new models load, removed ones unload, a changed
        config.toml or artifact reloads (without loss)."""
        if self._root is None:
            return
        folders = {folder.name: folder for folder in scan(self._root)}
        for name, entry in list(self._models.items()):
            if name not in folders and not entry.source.endswith(".mar"):
                log.info("model %s left the repository: unloading", name)
                await self.unload_model(name, missing_ok=True)
        for name, folder in folders.items():
            if self._fingerprints.get(name) != fingerprint(folder):
                log.info("model %s is new or changed: loading", name)
                await self.load_model(name)

    async def _retire(self, entry: ModelEntry) -> None:
        for version in entry.versions.values():
            if version.runtime is not None:
                version.state = ModelState.UNLOADING
                for runtime in (version.runtime, *version.signatures.values()):
                    await runtime.drain(DRAIN_SECONDS)
                    await asyncio.to_thread(runtime.unload)
                version.runtime, version.signatures = None, {}

    async def unload_model(self, name: str, missing_ok: bool = False) -> None:
        entry = self._models.pop(name, None)
        self._fingerprints.pop(name, None)
        if entry is None:
            if missing_ok:
                return
            raise NotFound(f"model '{name}' is not loaded")
        entry.changed()
        await self._retire(entry)

    async def close(self) -> None:
        for name in list(self._models):
            await self.unload_model(name, missing_ok=True)

    async def register_archive(self, name: str, archive: Path, config: ModelConfig, version: str) -> ModelEntry:
        """Serve a model archive from outside the repository (TorchServe's model store)."""
        entry = self._models.get(name)
        if entry is None or not entry.source.endswith(".mar"):
            await self.unload_model(name, missing_ok=True)
            entry = self._models[name] = ModelEntry(name=name, config=config, source=str(archive))
        if version in entry.versions and entry.versions[version].state is ModelState.READY:
            raise InvalidInput(f"model '{name}' version {version} is already registered")
        entry.versions[version] = VersionEntry(version=version)
        await self._load_version(entry, version, archive, config)
        return entry

    async def unload_version(self, name: str, version: str) -> None:
        entry = self._models.get(name)
        if entry is None or version not in entry.versions:
            raise NotFound(f"model '{name}' has no version '{version}'")
        if len(entry.versions) == 1:
            await self.unload_model(name)
            return
        slot = entry.versions.pop(version)
        if entry.default_version == version:
            entry.default_version = None
        entry.changed()
        if slot.runtime is not None:
            await asyncio.to_thread(slot.runtime.unload)

    def set_default(self, name: str, version: str) -> None:
        entry = self._models.get(name)
        if entry is None or version not in entry.versions:
            raise NotFound(f"model '{name}' has no version '{version}'")
        entry.default_version = version
        entry.changed()

    async def _load_folder(self, folder: ModelFolder, publish_early: bool = True) -> ModelEntry:
        entry = ModelEntry(name=folder.name, source=str(folder.path))
        self._fingerprints[folder.name] = fingerprint(folder)
        if publish_early:
            self._models[folder.name] = entry
        await self._fill(entry, folder)
        return entry

    async def _fill(self, entry: ModelEntry, folder: ModelFolder) -> None:
        try:
            entry.config = load_model_config(folder.config_path)
        except ConfigError as exc:
            self._fail_model(entry, folder, str(exc))
            return
        chosen = choose_versions(list(folder.versions), entry.config.version_policy)
        if not chosen:
            self._fail_model(entry, folder, f"{folder.path}: no version folder (1/, 2/, ...) "
                             "that the version policy serves")
            return
        for number in chosen:
            entry.versions[str(number)] = VersionEntry(version=str(number))
        for number in chosen:
            await self._load_version(entry, str(number), folder.versions[number])

    def _fail_model(self, entry: ModelEntry, folder: ModelFolder, reason: str) -> None:
        entry.reason = reason
        log.error("model %s unavailable: %s", entry.name, reason)
        for number in folder.versions or {}:
            entry.versions[str(number)] = VersionEntry(str(number), ModelState.UNAVAILABLE, reason)

    async def _load_version(self, entry: ModelEntry, version: str, path: Path,
                            config: ModelConfig | None = None) -> None:
        slot = entry.versions[version]
        try:
            runtime, signatures, default = await asyncio.to_thread(self._build, entry, version, path,
                                                                   config or entry.config)
        except Exception as exc:  # a broken model is reported and never stops the others
            slot.state, slot.reason = ModelState.UNAVAILABLE, _reason(exc)
            log.error("model %s version %s unavailable: %s", entry.name, version, slot.reason)
            return
        slot.runtime, slot.state, slot.reason = runtime, ModelState.READY, ""
        slot.signatures, slot.default_signature = signatures, default
        entry.changed()
        log.info("model %s version %s ready (%s)", entry.name, version, runtime.describe())

    def _build(self, entry: ModelEntry, version: str, path: Path, config: ModelConfig
               ) -> tuple[Runtime, dict[str, Runtime], str]:
        """The scheduled runtime, the other signatures' (TensorFlow), and the default's name."""
        if path.suffix == ".mar":
            artifact, backend = path, "torchserve"
        else:
            artifact, backend = find_artifact(path, config.backend)
        group = config.instance_group
        device = "cpu"
        if group.kind == "gpu":
            device = f"cuda:{group.gpus[0] if group.gpus else 0}"
        context = LoadContext(name=entry.name, version=version, artifact=artifact,
                              config=config, device=device)
        if group.resolved_kind(backend) == "process":
            spec = InstanceSpec(backend, context, group.response_timeout_s, group.memory_limit_mb)
            runtime: Runtime = ProcessRuntime(spec, group.count)
        else:
            runtime = load_runtime(backend, context)
            runtime.warmup()
        default = str(getattr(runtime, "signature_name", ""))
        signatures = {name: self._wrap(runtime.signature(name), config, entry.name, f"{version}:{name}")
                      for name in getattr(runtime, "signature_names", []) if name != default}
        return self._wrap(runtime, config, entry.name, version), signatures, default

    def runtimes(self, name: str) -> list[tuple[str, Runtime]]:
        """Every loaded version of a model with its runtime (scheduler), for scaling and describing."""
        entry = self._models.get(name)
        if entry is None:
            raise NotFound(f"unknown model '{name}'")
        return [(v, e.runtime) for v, e in entry.versions.items() if e.runtime is not None]

    def get(self, name: str, version: str | None) -> tuple[Runtime, str]:
        """The runtime that serves ``name`` at ``version`` (None: the newest ready version)."""
        entry = self._models.get(name)
        if entry is None:
            raise NotFound(f"unknown model '{name}'")
        if version is None:
            newest = entry.newest_ready()
            if newest is None:
                raise Unavailable(f"model '{name}' has no ready version: "
                                  f"{self.reason(entry) or 'loading'}")
            return newest
        slot = entry.versions.get(version)
        if slot is None:
            raise NotFound(f"unknown version '{version}' of model '{name}' (served versions: "
                           f"{', '.join(sorted(entry.versions, key=version_key)) or 'none'})")
        if slot.state is not ModelState.READY or slot.runtime is None:
            raise Unavailable(f"model '{name}' version {version} is not ready: "
                              f"{slot.reason or slot.state.value}")
        return slot.runtime, version

    def get_signature(self, name: str, version: str | None, signature: str) -> tuple[Runtime, str]:
        """A named signature of a TensorFlow model (the default one is what ``get`` gives)."""
        runtime, resolved = self.get(name, version)
        slot = self._models[name].versions[resolved]
        if signature in ("", slot.default_signature):
            return runtime, resolved
        if signature not in slot.signatures:
            available = sorted([slot.default_signature, *slot.signatures]) if slot.default_signature else []
            has = f"it has {', '.join(available)}" if available else "only TensorFlow models have signatures"
            raise NotFound(f"model '{name}' has no signature '{signature}'; {has}")
        return slot.signatures[signature], resolved

    def signatures(self, name: str, version: str | None) -> dict[str, Runtime]:
        """Every signature of a version by name (non-TensorFlow models: one, named serving_default)."""
        runtime, resolved = self.get(name, version)
        slot = self._models[name].versions[resolved]
        return {slot.default_signature or "serving_default": runtime, **slot.signatures}

    def resolve_label(self, name: str, label: str) -> str:
        entry = self._models.get(name)
        if entry is None:
            raise NotFound(f"unknown model '{name}'")
        if label not in entry.config.version_labels:
            known = ", ".join(sorted(entry.config.version_labels)) or "none ([version_labels] in config.toml)"
            raise NotFound(f"model '{name}' has no version label '{label}' (labels: {known})")
        return str(entry.config.version_labels[label])

    @staticmethod
    def reason(entry: ModelEntry) -> str:
        reasons = [v.reason for v in entry.versions.values() if v.reason]
        return entry.reason or (reasons[0] if reasons else "")


def fingerprint(folder: ModelFolder) -> tuple[tuple[str, int, int], ...]:
    """What a poll compares: every file's path, size and mtime under the model's folder."""
    found = []
    for path in sorted(folder.path.rglob("*")):
        if path.is_file():
            stat = path.stat()
            found.append((str(path.relative_to(folder.path)), stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def _reason(exc: Exception) -> str:
    if isinstance(exc, InferdError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"
