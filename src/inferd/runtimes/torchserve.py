"""TorchServe model archives (``.mar``): unpack, read ``MAR-INF/MANIFEST.json``, load the handler.

An archive is a zip file. It unpacks into a private folder (never outside it: entries that would
escape are refused), and its handler — a built-in name or a file inside the archive — is
initialised as TorchServe would.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

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


def read_manifest(model_dir: Path) -> dict[str, Any]:
    """An unpacked archive's ``MAR-INF/MANIFEST.json``, which must hold a ``model`` object."""
    path = model_dir / "MAR-INF" / "MANIFEST.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"archive has no readable MAR-INF/MANIFEST.json: {exc}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("model"), dict):
        raise ConfigError("MAR-INF/MANIFEST.json has no 'model' object")
    return manifest


def read_model_yaml(model_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The archive's model-config.yaml (the manifest's ``configFile``), as the handler's
    ``context.model_yaml_config`` shows it; {} when the archive has none."""
    config_file = manifest["model"].get("configFile")
    if not config_file:
        return {}
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML comes with inferd[torchserve]
        raise ConfigError("the archive has a model-config.yaml; reading it needs PyYAML (pip install pyyaml)") from None
    try:
        loaded = yaml.safe_load((model_dir / config_file).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"the archive's {config_file} cannot be read: {exc}") from None
    return loaded if isinstance(loaded, dict) else {}


def load(context: LoadContext) -> HandlerRuntime:
    gpu = int(context.device.split(":")[1]) if context.device.startswith("cuda") else None
    model_dir = unpack(context.artifact)
    manifest = read_manifest(model_dir)
    if context.config.handler:  # registration's handler= wins over the manifest's
        manifest["model"]["handler"] = context.config.handler
    return handler.build(context.name, model_dir, manifest, context.config.max_batch_size, gpu,
                         read_model_yaml(model_dir, manifest))


@atexit.register
def _clean_up() -> None:
    for folder in _UNPACKED:
        shutil.rmtree(folder, ignore_errors=True)
