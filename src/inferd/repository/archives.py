"""TorchServe's model store: which archives may be registered (a name in the store, or a URL that
``allowed_urls`` admits, downloaded into the store as TorchServe does), what their manifest and
``model-config.yaml`` say, and the config their registration amounts to."""

from __future__ import annotations

import functools
import json
import logging
import re
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from inferd.config import INT32_MAX, DynamicBatching, InstanceGroup, ModelConfig, SequenceBatching
from inferd.errors import ConfigError, InferdError, InvalidInput, NotFound
from inferd.runtimes.torchserve import TGZ_SUFFIX, open_tgz, tgz_member_name, tgz_members
from inferd.types import SequenceSettings

log = logging.getLogger("inferd.repository")

MAX_DOWNLOAD_BYTES = 8 * 1024**3
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass(frozen=True, slots=True)
class LocatedArchive:
    path: Path  # where it is (or will be, once downloaded) in the model store
    remote: str = ""  # the URL to download it from; "" when it is in the store already


def locate_archive(model_store: Path | None, url: str | None, allowed_urls: tuple[str, ...] = (),
                   kind: str = "model") -> LocatedArchive:
    """The archive named by ``url``: a file name inside the model store, or a URL matching one of
    ``allowed_urls`` (regular expressions, as TorchServe's setting) whose file is not in the store
    yet. Status codes as TorchServe's: no url 400, empty or unknown 404, file already there 500.
    ``kind`` words the messages ("workflow": the workflow store's .war files)."""
    title = kind.capitalize()
    if url is None:
        raise InvalidInput("Parameter url is required.")
    if model_store is None:
        raise NotFound(f"{title} store has not been configured (--{kind}-store).")
    if not url:
        raise NotFound("empty url")
    if not url.isprintable():  # a NUL or a newline names no file, and would forge log lines
        raise InvalidInput(f"url must be printable text (no control characters), got {url!r}")
    if ".." in url:
        raise NotFound(f"Relative path is not allowed in url: {url} (it leaves the {kind} store)")
    if _URL.match(url):
        if not any(re.fullmatch(pattern, url, re.IGNORECASE) for pattern in allowed_urls):
            allowed = ", ".join(allowed_urls) or "none: inferd loads archives only from the model store"
            raise NotFound(f"Given URL {url} does not match any allowed URL(s) (allowed_urls: {allowed})")
        file_name = PurePosixPath(urlparse(url).path).name
        if not file_name:
            raise NotFound(f"url {url} names no archive file")
        target = model_store / file_name
        if target.exists():
            raise InferdError(f"{title} file already exists {file_name}")
        return LocatedArchive(target, url)
    # an absolute path inside the store is taken, as TorchServe takes one; the name is checked, not
    # where a link in the store leads: an archive the operator linked into the store is served
    candidate = (model_store / url).absolute()  # ".." was refused above
    if not (candidate.is_relative_to(model_store.absolute()) or candidate.is_relative_to(model_store.resolve())):
        raise NotFound(f"{title} not found at: {url}; the url leaves the {kind} store (give the archive's "
                       "name inside it)")
    if not candidate.exists():
        raise NotFound(f"{title} not found at: {url} (not in the {kind} store {model_store})")
    return LocatedArchive(candidate)


def download(url: str, target: Path, limit: int = MAX_DOWNLOAD_BYTES) -> None:
    """Fetch ``url`` into ``target`` (blocks; run it off the event loop). A failed download leaves
    nothing behind and is a 400, as TorchServe's DownloadArchiveException."""
    partial = target.with_name(f".{target.name}.part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as out:
            copied = 0
            while chunk := response.read(1 << 20):
                copied += len(chunk)
                if copied > limit:
                    raise InvalidInput(f"Failed to download archive from: {url}: larger than {limit} bytes")
                out.write(chunk)
        partial.rename(target)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise InvalidInput(f"Failed to download archive from: {url}: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    log.info("downloaded %s into the model store as %s", url, target.name)


@dataclass(frozen=True, slots=True)
class ArchiveInfo:
    """What an archive says about itself: its manifest, and its model-config.yaml if it has one."""

    name: str
    version: str
    handler: str
    runtime: str
    yaml: dict[str, Any] = field(default_factory=dict)

    def sequence_idle_ms(self) -> int:
        """``sequenceMaxIdleMSec`` when ``sequenceBatching: true``, else 0: TorchServe batches by
        sequence only when both are set (its Model reads the idle time first)."""
        return max(self.yaml_int("sequenceMaxIdleMSec") or 0, 0) if self.yaml.get("sequenceBatching") is True else 0

    def sequence_limits(self) -> tuple[int, int]:
        """``maxNumSequence`` and ``maxSequenceJobQueueSize`` as TorchServe's ModelConfig reads them:
        1 when not given, and at least 1."""
        return (max(self.yaml_int("maxNumSequence") or 1, 1), max(self.yaml_int("maxSequenceJobQueueSize") or 1, 1))

    def sequence_settings(self) -> SequenceSettings:
        """What TorchServe's describe answers of the model's sequences: ``sequenceBatching``, and the idle
        time, timeout and limits only where ``sequenceMaxIdleMSec`` > 0 (its Model reads them so, even
        without ``sequenceBatching``)."""
        stateful = self.yaml.get("sequenceBatching") is True
        idle_ms = self.yaml_int("sequenceMaxIdleMSec") or 0
        if idle_ms <= 0:
            return SequenceSettings(stateful=stateful)
        max_sequences, max_queued = self.sequence_limits()
        return SequenceSettings(stateful, idle_ms, max(self.yaml_int("sequenceTimeoutMSec") or 0, 0), max_sequences,
                                max_queued)

    def yaml_int(self, key: str) -> int | None:
        """An integer setting of model-config.yaml; other types are ignored, as TorchServe does."""
        value = self.yaml.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None


def archive_info(archive: Path) -> ArchiveInfo:
    """Read MAR-INF/MANIFEST.json (and the ``configFile`` it names) without unpacking; ``archive``
    may also be a folder holding them (torch-model-archiver's ``--archive-format no-archive``)."""
    try:
        if archive.is_dir():
            manifest, model, yaml_text = _manifest(_folder_reader(archive))
        elif archive.name.endswith(TGZ_SUFFIX):
            with open_tgz(archive) as bundle:
                manifest, model, yaml_text = _manifest(_tgz_reader(bundle, archive.name))
        else:
            with zipfile.ZipFile(archive) as bundle:
                manifest, model, yaml_text = _manifest(functools.partial(small_member, bundle, where=archive.name))
    except (zipfile.BadZipFile, tarfile.TarError, KeyError, ValueError, OSError, EOFError) as exc:
        # (EOFError: a .tar.gz cut short, as a copy into the store that was interrupted leaves it)
        raise ConfigError(f"{archive.name} is not a model archive with a MAR-INF/MANIFEST.json: {exc}") from exc
    if not isinstance(model, dict):
        raise ConfigError(f"{archive.name}: MAR-INF/MANIFEST.json has no 'model' object")
    info = ArchiveInfo(str(model.get("modelName") or archive_stem(archive)), str(model.get("modelVersion") or "1.0"),
                       str(model.get("handler") or ""), str(manifest.get("runtime") or "python"),
                       read_model_yaml(yaml_text, archive.name) if yaml_text else {})
    for key, value in (("modelName", info.name), ("modelVersion", info.version), ("handler", info.handler)):
        if not value.isprintable():  # a newline would forge log lines, a NUL names no file
            raise ConfigError(f"{archive.name}: MANIFEST.json's {key} has control characters: {value!r}")
    handler_file = PurePosixPath(info.handler.partition(":")[0].replace("\\", "/"))
    if handler_file.is_absolute() or ".." in handler_file.parts:
        raise ConfigError(f"{archive.name}: MANIFEST.json's handler {info.handler!r} leaves the archive; it must "
                          "name a file inside it or a built-in handler")
    return info


MAX_MANIFEST_BYTES = 1 << 20  # MANIFEST.json and model-config.yaml: read whole, so bounded


def small_member(bundle: zipfile.ZipFile, name: str, where: str) -> bytes:
    """A small file of an archive, refused by its declared size before anything is inflated
    (zipfile never inflates past the declared size)."""
    size = bundle.getinfo(name).file_size
    if size > MAX_MANIFEST_BYTES:
        raise ConfigError(f"{where}: {name} is {size} bytes, over the limit of {MAX_MANIFEST_BYTES}")
    return bundle.read(name)


def _manifest(member: Callable[[str], bytes]) -> tuple[Any, Any, str]:
    """(MANIFEST.json, its ``model`` object, the text of the model-config.yaml it names or "")."""
    manifest = json.loads(member("MAR-INF/MANIFEST.json"))
    model = manifest.get("model", {}) if isinstance(manifest, dict) else {}
    config_file = model.get("configFile") if isinstance(model, dict) else None
    return manifest, model, member(str(config_file)).decode() if config_file else ""


def archive_stem(archive: Path) -> str:
    """The archive's name without ``.mar`` or ``.tar.gz`` (TorchServe's default model name)."""
    return archive.name[:-len(TGZ_SUFFIX)] if archive.name.endswith(TGZ_SUFFIX) else archive.stem


def _tgz_reader(bundle: tarfile.TarFile, where: str) -> Callable[[str], bytes]:
    """``small_member`` for a ``.tar.gz`` archive (a regular file of it, by its unpacked name)."""
    members = {tgz_member_name(member.name): member for member in tgz_members(bundle, where) if member.isfile()}

    def read(name: str) -> bytes:
        member = members[name]
        if member.size > MAX_MANIFEST_BYTES:
            raise ConfigError(f"{where}: {name} is {member.size} bytes, over the limit of {MAX_MANIFEST_BYTES}")
        extracted = bundle.extractfile(member)
        if extracted is None:
            raise KeyError(name)
        return extracted.read()
    return read


def _folder_reader(folder: Path) -> Callable[[str], bytes]:
    """``small_member`` for an archive's unpacked folder: a small file inside it."""
    def read(name: str) -> bytes:
        path = (folder / name).resolve()
        if not path.is_relative_to(folder.resolve()):
            raise KeyError(f"{name} leaves the folder")
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ConfigError(f"{folder.name}: {name} is {path.stat().st_size} bytes, over the limit of "
                              f"{MAX_MANIFEST_BYTES}")
        return path.read_bytes()
    return read


def read_model_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML comes with inferd[torchserve]
        raise ConfigError(f"{where} has a model-config.yaml; reading it needs PyYAML (pip install pyyaml)") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: model-config.yaml does not parse: {exc}") from None
    except RecursionError:  # lists or mappings nested thousands deep
        raise ConfigError(f"{where}: model-config.yaml nests too deeply to read") from None
    return loaded if isinstance(loaded, dict) else {}


def archive_identity(archive: Path) -> tuple[str, str]:
    """(modelName, modelVersion) from the archive's MAR-INF/MANIFEST.json, read without unpacking."""
    info = archive_info(archive)
    return info.name, info.version


def sequence_batching(info: ArchiveInfo) -> SequenceBatching | None:
    """The sequence batcher an archive's model-config.yaml asks for (``sequenceBatching: true`` with
    ``sequenceMaxIdleMSec``; its ``maxNumSequence`` and ``maxSequenceJobQueueSize``), else None. A
    batch takes the oldest ready request of up to batchSize sequences, as TorchServe's job groups
    give theirs (``oldest``, every live sequence a candidate: no backlog, maxNumSequence refuses)."""
    idle_ms = info.sequence_idle_ms()
    if idle_ms <= 0:
        return None
    max_sequences, max_queued = info.sequence_limits()
    lifetime_ms = max(info.yaml_int("sequenceTimeoutMSec") or 0, 0)
    return SequenceBatching(max_sequence_idle_us=idle_ms * 1000, implicit_start=True, max_sequences=max_sequences,
                            max_queued_per_sequence=max_queued, max_sequence_lifetime_us=lifetime_ms * 1000,
                            strategy="oldest",
                            max_candidate_sequences=max_sequences or INT32_MAX)


def with_archive_sequences(config: ModelConfig, version_dir: Path) -> ModelConfig:
    """A model repository's archive (``model.mar``, or the ``default_model_filename`` it names) whose
    model-config.yaml asks for sequence batching gets it, as under ``inferd torchserve``, unless its
    configuration names its own; dynamic batching, which would mix sequences, gives way to it (with
    a warning)."""
    archive = version_dir / (config.default_model_filename or "model.mar")
    if (config.sequence_batching is not None or config.backend not in (None, "", "torchserve")
            or archive.suffix != ".mar" or not archive.is_file()):
        return config
    sequences = sequence_batching(archive_info(archive))
    if sequences is None:
        return config
    if config.dynamic_batching is not None:
        log.warning("%s: model-config.yaml asks for sequenceBatching, so the configuration's dynamic batching "
                    "is not applied", archive)
    return replace(config, sequence_batching=sequences, dynamic_batching=None)


def archive_config(workers: int, batch_size: int, max_batch_delay_ms: float, handler: str = "",
                   response_timeout_s: float = 120.0, gpus: tuple[int, ...] | None = None,
                   sequences: SequenceBatching | None = None) -> ModelConfig:
    """TorchServe's registration parameters (workers, batch_size, max_batch_delay, handler,
    response_timeout) as config; batch_size > 1 turns on dynamic batching. ``gpus`` (model-config.yaml's
    ``deviceType: gpu`` and ``deviceIds``) runs the handler's workers as threads on those GPUs, where
    the handler gets ``gpu_id`` (never a silent CPU: without CUDA the load fails saying so).
    ``sequences`` (``sequence_batching``: what model-config.yaml asks for) makes it stateful: each
    sequence's requests run one at a time on the worker that holds its state, and a batch holds
    one request of each of up to batch_size sequences."""
    if workers < 1 or batch_size < 1 or max_batch_delay_ms < 0:
        raise InvalidInput(f"initial_workers and batch_size must be >= 1 and max_batch_delay >= 0, got "
                           f"{workers}, {batch_size}, {max_batch_delay_ms}")
    batching = DynamicBatching(max_queue_delay_ms=max_batch_delay_ms) if batch_size > 1 else None
    if sequences is not None:
        batching = None
    if gpus is not None:
        group = InstanceGroup(count=workers, kind="gpu", gpus=gpus or (0,), response_timeout_s=response_timeout_s)
    else:
        group = InstanceGroup(count=workers, response_timeout_s=response_timeout_s)
    return ModelConfig(backend="torchserve", max_batch_size=batch_size, dynamic_batching=batching,
                       sequence_batching=sequences, instance_group=group, handler=handler)


def remove_downloaded(path: Path) -> None:
    """Unregistering a model that was downloaded removes its archive from the store (TorchServe)."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove %s from the model store: %s", path, exc)


def store_archives(model_store: Path, models: tuple[str, ...]) -> list[tuple[str | None, str]]:
    """``--models all`` or ``NAME=URL``/``URL`` items (a file of the store or a URL) as (name or
    None, url); split at the first ``=``, as TorchServe's ModelServer splits them."""
    if models == ("all",):
        return [(None, path.name) for path in sorted(model_store.iterdir()) if not path.name.startswith(".")
                and (path.suffix == ".mar" or path.name.endswith(TGZ_SUFFIX))]
    chosen: list[tuple[str | None, str]] = []
    for item in models:
        name, equals, url = item.partition("=")
        chosen.append((name or None, url) if equals else (None, item))
    return chosen
