"""TorchServe model archives (``.mar``): unpack, read ``MAR-INF/MANIFEST.json``, load the handler.

An archive is a zip file (or a ``.tar.gz``: ``--archive-format tgz``). It unpacks into a private
folder (never outside it: entries that would escape are refused), and its handler — a built-in
name or a file inside the archive — is initialised as TorchServe would.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Self

from inferd.errors import ConfigError
from inferd.runtimes import handler, ts_requirements
from inferd.runtimes.base import LoadContext
from inferd.runtimes.handler import HandlerRuntime

TGZ_SUFFIX = ".tar.gz"  # torch-model-archiver --archive-format tgz
_UNPACKED: list[Path] = []
MAX_MANIFEST_BYTES = 1 << 20
SHARED_UNPACK_ENV = "INFERD_UNPACK_DIR"  # set for process instances: their version's unpacked copy is shared
MAX_UNPACKED_BYTES = 16 * 1024**3
MAX_ENTRIES = 100_000
MAX_TAR_HEADER_BYTES = 1 << 20  # a .tar.gz entry's long name or PAX header: tarfile reads it whole


def unpack(archive: Path) -> Path:
    """The archive's files in a folder: once per archive content in the folder the server shares
    with its process instances (``INFERD_UNPACK_DIR``), else a fresh one removed at exit. An
    archive that is a folder already (``--archive-format no-archive``) is served from where it is,
    as TorchServe serves it."""
    if archive.is_dir():
        return archive
    shared = os.environ.get(SHARED_UNPACK_ENV)
    if not shared:
        # named as isolation.process names scratch folders: a start after a SIGKILL removes it
        target = Path(tempfile.mkdtemp(prefix=f"inferd-scratch-{os.getpid()}-{archive.stem}-"))
        _UNPACKED.append(target)
        _extract(archive, target)
        return target
    stat = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    root = Path(shared)
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{archive.stem}-{key}"
    with open(root / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other instances of the version wait, then reuse it
        if not (target / ".unpacked").exists():
            partial = root / f".{target.name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            _extract(archive, partial)
            (partial / ".unpacked").touch()
            shutil.rmtree(target, ignore_errors=True)
            partial.rename(target)
    return target


def _extract(archive: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    if archive.name.endswith(TGZ_SUFFIX):
        _extract_tgz(archive, target)
        return
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = bundle.infolist()
            if len(members) > MAX_ENTRIES:
                raise ConfigError(f"{archive.name} has {len(members)} entries, over the limit of {MAX_ENTRIES}")
            total = sum(member.file_size for member in members)  # zipfile inflates no more than declared
            if total > MAX_UNPACKED_BYTES:
                raise ConfigError(f"{archive.name} unpacks to {total} bytes, over the limit of {MAX_UNPACKED_BYTES}")
            for member in members:
                destination = (target / member.filename).resolve()
                if not destination.is_relative_to(target.resolve()):
                    raise ConfigError(f"{archive.name}: entry {member.filename!r} would unpack outside the archive")
            bundle.extractall(target)
    except zipfile.BadZipFile as exc:
        raise ConfigError(f"{archive.name} is not a model archive (zip): {exc}") from exc


def tgz_member_name(name: str) -> str:
    """Where a ``.tar.gz`` entry unpacks: its path less the first folder (``NAME/MAR-INF/...`` ->
    ``MAR-INF/...``), as TorchServe's ZipUtils.decompressTarGzipFile strips it."""
    return name.partition("/")[2]


_NAME_AND_PAX_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                       tarfile.SOLARIS_XHDTYPE)


class _BoundedTarInfo(tarfile.TarInfo):
    """A header whose long name or PAX data says it is over ``MAX_TAR_HEADER_BYTES`` is refused
    before tarfile reads that data whole into memory (a few KB of gzip can say gigabytes), and a
    sparse file before its map is read: tarfile reads a map as long as it says (old GNU: 700 KB of
    gzip took 31 s and 620 MB; PAX 1.0: 200 KB took 97 s and 820 MB). An archive holds plain files."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        info = super().frombuf(buf, encoding, errors)
        if info.type in _NAME_AND_PAX_TYPES and info.size > MAX_TAR_HEADER_BYTES:
            # a TarError that is no HeaderError: TarFile.next raises it as it is
            raise tarfile.TarError(f"a long name or PAX header of {info.size} bytes, over the limit of "
                                   f"{MAX_TAR_HEADER_BYTES}")
        return info

    # tarfile's readers of the sparse maps (old GNU, then GNU's PAX formats 0.0, 0.1 and 1.0)
    def _proc_sparse(self, *_: object) -> None:
        _refuse_sparse()

    def _proc_gnusparse_00(self, *_: object) -> None:
        _refuse_sparse()

    def _proc_gnusparse_01(self, *_: object) -> None:
        _refuse_sparse()

    def _proc_gnusparse_10(self, *_: object) -> None:
        _refuse_sparse()


def _refuse_sparse() -> None:
    raise tarfile.TarError("a sparse file; an archive holds plain files")


def open_tgz(archive: Path) -> tarfile.TarFile:
    """A ``.tar.gz`` archive, for reading, its long-name and PAX headers bounded."""
    return tarfile.open(archive, "r:gz", tarinfo=_BoundedTarInfo)


def tgz_members(bundle: tarfile.TarFile, where: str) -> list[tarfile.TarInfo]:
    """The ``.tar.gz`` archive's entries, refused past ``MAX_ENTRIES`` or ``MAX_UNPACKED_BYTES`` as
    their headers are read: a few MB of gzip hold millions of empty entries (``getmembers`` kept
    500,000 of them, 240 MB, before anything was counted), or an entry that says it is 1 TB."""
    members: list[tarfile.TarInfo] = []
    total = 0
    for member in bundle:  # one header at a time; the next is read past this entry's data
        members.append(member)
        if len(members) > MAX_ENTRIES:
            raise ConfigError(f"{where} has over {MAX_ENTRIES} entries, the limit")
        total += member.size
        if total > MAX_UNPACKED_BYTES:
            raise ConfigError(f"{where} unpacks to over the limit of {MAX_UNPACKED_BYTES} bytes")
    return members


def _extract_tgz(archive: Path, target: Path) -> None:
    """A ``.tar.gz`` archive's files and folders, each less its first folder (as TorchServe unpacks
    one); links and devices are refused, as are entries that would land outside ``target``."""
    try:
        with open_tgz(archive) as bundle:
            for member in tgz_members(bundle, archive.name):
                _extract_tgz_member(bundle, member, archive.name, target)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ConfigError(f"{archive.name} is not a model archive (tar.gz): {exc}") from exc


def _extract_tgz_member(bundle: tarfile.TarFile, member: tarfile.TarInfo, where: str, target: Path) -> None:
    name = tgz_member_name(member.name)
    if not name:
        return  # the top folder itself
    destination = (target / name).resolve()
    if not destination.is_relative_to(target.resolve()):
        raise ConfigError(f"{where}: entry {member.name!r} would unpack outside the archive")
    if member.isdir():
        destination.mkdir(parents=True, exist_ok=True)
    elif member.isfile():
        destination.parent.mkdir(parents=True, exist_ok=True)
        source = bundle.extractfile(member)
        if source is None:
            raise ConfigError(f"{where}: entry {member.name!r} cannot be read")
        with source, open(destination, "wb") as out:
            shutil.copyfileobj(source, out)
    else:
        raise ConfigError(f"{where}: entry {member.name!r} is a link or a device; an archive holds files")


def read_manifest(model_dir: Path) -> dict[str, Any]:
    """An unpacked archive's ``MAR-INF/MANIFEST.json``, which must hold a ``model`` object."""
    path = model_dir / "MAR-INF" / "MANIFEST.json"
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ConfigError(f"MAR-INF/MANIFEST.json is over the limit of {MAX_MANIFEST_BYTES} bytes")
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
    except RecursionError:
        raise ConfigError(f"the archive's {config_file} nests too deeply to read") from None
    return loaded if isinstance(loaded, dict) else {}


def load(context: LoadContext) -> HandlerRuntime:
    gpu = int(context.device.split(":")[1]) if context.device.startswith("cuda") else None
    if gpu is not None:  # TorchServe's handlers fall back to the CPU by themselves: not here
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"model '{context.name}' asks for {context.device} (model-config.yaml deviceType: "
                              "gpu), but torch sees no CUDA device")
    model_dir = unpack(context.artifact)
    manifest = read_manifest(model_dir)
    if context.config.handler:  # registration's handler= wins over the manifest's
        manifest["model"]["handler"] = context.config.handler
    if ts_requirements.wanted(manifest):
        ts_requirements.install(context.name, model_dir, manifest, _packages_folder(context.artifact, model_dir))
    return handler.build(context.name, model_dir, manifest, context.config.max_batch_size, gpu,
                         read_model_yaml(model_dir, manifest))


def _packages_folder(archive: Path, model_dir: Path) -> Path:
    """Where an archive's requirements are installed: its unpacked copy, or for a ``no-archive``
    folder (served where it is) a scratch folder removed at exit, so the operator's stays as it was."""
    if not archive.is_dir():
        return model_dir
    target = Path(tempfile.mkdtemp(prefix=f"inferd-scratch-{os.getpid()}-{archive.name}-packages-"))
    _UNPACKED.append(target)
    return target


@atexit.register
def _clean_up() -> None:
    for folder in _UNPACKED:
        shutil.rmtree(folder, ignore_errors=True)
