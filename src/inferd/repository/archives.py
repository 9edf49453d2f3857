"""TorchServe's model store: which archives may load, what their manifest says, and the config
their registration parameters amount to."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from inferd.config import DynamicBatching, InstanceGroup, ModelConfig
from inferd.errors import ConfigError, InvalidInput, NotFound


def resolve_archive(model_store: Path | None, url: str) -> Path:
    """The archive named by ``url``, which must be a file name inside the model store: no remote
    URLs, no absolute paths, nothing that leaves the store."""
    if model_store is None:
        raise InvalidInput("no --model-store was given, so there is nothing to register from")
    if not url:
        raise InvalidInput("give url=<archive>.mar, the name of an archive in the model store")
    if "://" in url or url.split(":", 1)[0] in ("http", "https", "s3", "file", "ftp"):
        raise InvalidInput(f"url {url!r} is remote; inferd loads archives only from the model store")
    candidate = (model_store / url).resolve()
    if Path(url).is_absolute() or ".." in Path(url).parts or not candidate.is_relative_to(model_store.resolve()):
        raise InvalidInput(f"url {url!r} leaves the model store; give the archive's name inside it")
    if not candidate.is_file():
        raise NotFound(f"archive {url!r} is not in the model store {model_store}")
    return candidate


def archive_identity(archive: Path) -> tuple[str, str]:
    """(modelName, modelVersion) from the archive's MAR-INF/MANIFEST.json, read without unpacking."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            manifest = json.loads(bundle.read("MAR-INF/MANIFEST.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise ConfigError(f"{archive.name} is not a model archive with a MAR-INF/MANIFEST.json: {exc}") from exc
    model = manifest.get("model", {}) if isinstance(manifest, dict) else {}
    return str(model.get("modelName") or archive.stem), str(model.get("modelVersion") or "1.0")


def archive_config(workers: int, batch_size: int, max_batch_delay_ms: float) -> ModelConfig:
    """TorchServe's registration parameters (initial_workers, batch_size, max_batch_delay) as config."""
    if workers < 1 or batch_size < 1 or max_batch_delay_ms < 0:
        raise InvalidInput(f"initial_workers and batch_size must be >= 1 and max_batch_delay >= 0, got "
                           f"{workers}, {batch_size}, {max_batch_delay_ms}")
    batching = DynamicBatching(max_queue_delay_ms=max_batch_delay_ms) if batch_size > 1 else None
    return ModelConfig(backend="torchserve", max_batch_size=batch_size, dynamic_batching=batching,
                       instance_group=InstanceGroup(count=workers))


def store_archives(model_store: Path, models: tuple[str, ...]) -> list[tuple[str | None, Path]]:
    """``--models all`` or ``NAME=FILE.mar``/``FILE.mar`` items as (name or None, archive)."""
    if models == ("all",):
        return [(None, path) for path in sorted(model_store.glob("*.mar"))]
    chosen = []
    for item in models:
        name, _, file = item.rpartition("=")
        chosen.append((name or None, resolve_archive(model_store, file)))
    return chosen
