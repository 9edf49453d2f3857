"""TorchServe model archives (``.mar``): unpack, read ``MAR-INF/MANIFEST.json``, load the handler.

An archive is a zip file. It unpacks into a private folder (never outside it: entries that would
escape are refused), and its handler — a built-in name or a file inside the archive — is
initialised as TorchServe would.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import zipfile
from pathlib import Path

from inferd.errors import ConfigError
from inferd.runtimes import handler
from inferd.runtimes.base import LoadContext
from inferd.runtimes.handler import HandlerRuntime

_UNPACKED: list[Path] = []


def unpack(archive: Path) -> Path:
    """The archive's files in a fresh folder (removed when the process exits)."""
    target = Path(tempfile.mkdtemp(prefix=f"inferd-{archive.stem}-"))
    _UNPACKED.append(target)
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.namelist():
                destination = (target / member).resolve()
                if not destination.is_relative_to(target.resolve()):
                    raise ConfigError(f"{archive.name}: entry {member!r} would unpack outside the archive")
            bundle.extractall(target)
    except zipfile.BadZipFile as exc:
        raise ConfigError(f"{archive.name} is not a model archive (zip): {exc}") from exc
    return target


def load(context: LoadContext) -> HandlerRuntime:
    gpu = int(context.device.split(":")[1]) if context.device.startswith("cuda") else None
    return handler.build(context.name, unpack(context.artifact), context.config.max_batch_size, gpu)


@atexit.register
def _clean_up() -> None:
    for folder in _UNPACKED:
        shutil.rmtree(folder, ignore_errors=True)
