"""Model repositories in object storage: ``s3://bucket/prefix`` (and gs://, az://, ... through
fsspec) mirrored into a local cache folder, which the rest of inferd reads as any repository.

A sync lists the prefix, downloads only objects whose size or ETag changed since the last sync (a
manifest beside the mirror remembers them, so a restart downloads nothing that is unchanged),
removes local files whose objects are gone, and replaces each file atomically (a temporary name,
then a rename), so a poll never reads half a file and an unchanged file keeps its mtime (the
registry's fingerprint sees no change). Credentials and endpoints come from the filesystem
library's standard environment (``AWS_*``, ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``,
``AZURE_STORAGE_*``); fsspec and its backend are imported only when a remote repository is used.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from inferd.config import REMOTE_SCHEMES
from inferd.errors import ConfigError

log = logging.getLogger("inferd.repository")

EXTRAS = {"s3": "s3 (s3fs)", "gs": "gcs (gcsfs)", "gcs": "gcs (gcsfs)", "az": "azure (adlfs)",
          "abfs": "azure (adlfs)", "abfss": "azure (adlfs)"}
PART = ".inferd-part"  # suffix of a file being downloaded


@dataclass(slots=True)
class SyncReport:
    downloaded: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.downloaded or self.removed)


def is_remote(location: str) -> bool:
    return urlsplit(location).scheme in REMOTE_SCHEMES


def default_cache() -> Path:
    """``$INFERD_CACHE_DIR``, else ``$XDG_CACHE_HOME/inferd/repositories`` (~/.cache by default)."""
    if os.environ.get("INFERD_CACHE_DIR"):
        return Path(os.environ["INFERD_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "inferd" / "repositories"


class RemoteRepository:
    """One remote prefix and its mirror: ``<cache>/<scheme>/<bucket>/<prefix>``."""

    def __init__(self, url: str, cache: Path) -> None:
        parts = urlsplit(url)
        if parts.scheme not in REMOTE_SCHEMES or not parts.netloc:
            raise ConfigError(f"{url}: a remote repository is <scheme>://<bucket>[/<prefix>] with a scheme "
                              f"of {REMOTE_SCHEMES}")
        relative = PurePosixPath(parts.netloc, parts.path.strip("/"))
        if any(part in ("", ".", "..") for part in relative.parts):
            raise ConfigError(f"{url}: the bucket and prefix must not hold '.' or '..' parts")
        self.url = url.rstrip("/")
        self.scheme = parts.scheme
        self.mirror = cache / parts.scheme / Path(*relative.parts)
        self.manifest = self.mirror.with_name(self.mirror.name + ".inferd-sync.json")
        self._fs: Any = None
        self._root = ""

    def sync(self) -> SyncReport:
        """Bring the mirror up to date with the remote prefix (blocking: run it on a thread)."""
        fs = self._filesystem()
        try:
            fs.invalidate_cache()  # list the storage, never a listing remembered from the last sync
            listing = fs.find(self._root, detail=True)
        except Exception as exc:  # the backend's own errors, named for the user
            raise ConfigError(self._explain(exc)) from exc
        remote = self._objects(listing)
        known = self._read_manifest()
        report = SyncReport()
        self.mirror.mkdir(parents=True, exist_ok=True)
        # what is gone goes first: an object "m/x" replaced by "m/x/1/model.onnx" needs the folder
        report.removed = self._remove_others(set(remote))
        for relative, (key, token, size) in remote.items():
            local = self.mirror / relative
            if known.get(relative) == token and local.is_file() and local.stat().st_size == size:
                report.unchanged += 1
                continue
            self._download(key, local)
            report.downloaded.append(relative)
        self._write_manifest({relative: token for relative, (_, token, _) in remote.items()})
        if report.changed:
            log.info("%s: %d downloaded, %d removed, %d unchanged", self.url, len(report.downloaded),
                     len(report.removed), report.unchanged)
        if not remote:
            log.warning("%s holds no objects: the repository is empty", self.url)
        return report

    def _filesystem(self) -> Any:
        if self._fs is None:
            try:
                from fsspec.core import url_to_fs
            except ImportError as exc:  # pragma: no cover - fsspec comes with every remote extra
                raise ConfigError(f"{self.url}: remote repositories need fsspec: "
                                  f"pip install 'inferd[{EXTRAS[self.scheme].split()[0]}]'") from exc
            try:
                self._fs, self._root = url_to_fs(self.url)
            except ImportError as exc:
                raise ConfigError(f"{self.url}: {self.scheme}:// repositories need the "
                                  f"{EXTRAS[self.scheme]} extra: pip install "
                                  f"'inferd[{EXTRAS[self.scheme].split()[0]}]' ({exc})") from exc
        return self._fs

    def _objects(self, listing: dict[str, dict[str, Any]]) -> dict[str, tuple[str, str, int]]:
        """relative path -> (object key, change token, size) for each object a repository may hold."""
        found: dict[str, tuple[str, str, int]] = {}
        prefix = self._root.rstrip("/") + "/"
        for key, info in listing.items():
            if info.get("type", "file") != "file" or not key.startswith(prefix) or key.endswith("/"):
                continue  # a "folder" object (the S3 console's, zero bytes, named "m/1/") is no file
            parts = PurePosixPath(key[len(prefix):]).parts
            if not parts or any(p in (".", "..") for p in parts) or parts[-1].endswith(PART):
                log.warning("%s: object %s skipped (not a plain path)", self.url, key)
                continue
            size = int(info.get("size") or 0)
            tag = next((str(info[k]) for k in ("ETag", "etag", "md5Hash", "crc32c", "LastModified",
                                                  "last_modified", "mtime") if info.get(k)), "")
            found["/".join(parts)] = (key, f"{size}:{tag}", size)
        folders = {"/".join(parts[:i]) for parts in (PurePosixPath(r).parts for r in found)
                   for i in range(1, len(parts))}
        for relative in sorted(folders & set(found)):  # an object named as another's folder: the folder wins
            log.warning("%s: object %s skipped (other objects lie under %s/)", self.url, found.pop(relative)[0],
                        relative)
        return found

    def _download(self, key: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f"{local.name}.{os.getpid()}{PART}")  # replicas may share a cache
        try:
            self._fs.get_file(key, str(partial))
        except Exception as exc:
            partial.unlink(missing_ok=True)
            raise ConfigError(f"{self.url}: downloading {key} failed: {self._explain(exc)}") from exc
        os.replace(partial, local)

    def _remove_others(self, keep: set[str]) -> list[str]:
        """Delete mirrored files whose objects are gone (and folders left empty)."""
        removed = []
        for path in sorted(self.mirror.rglob("*"), reverse=True):
            relative = path.relative_to(self.mirror).as_posix()
            if path.name.endswith(PART):  # another process's download in flight
                continue
            if path.is_file() and relative not in keep:
                path.unlink()
                removed.append(relative)
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        return sorted(removed)

    def _read_manifest(self) -> dict[str, str]:
        try:
            data = json.loads(self.manifest.read_text())
        except (OSError, ValueError):
            return {}
        files = data.get("files") if isinstance(data, dict) and data.get("url") == self.url else None
        return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}

    def _write_manifest(self, files: dict[str, str]) -> None:
        partial = self.manifest.with_name(f"{self.manifest.name}.{os.getpid()}{PART}")
        partial.write_text(json.dumps({"url": self.url, "files": files}, indent=1, sort_keys=True))
        os.replace(partial, self.manifest)

    def _explain(self, exc: Exception) -> str:
        """The backend's error in words a user can act on (no such bucket, no credentials, ...)."""
        kind = type(exc).__name__
        if isinstance(exc, FileNotFoundError):
            return f"{self.url}: no such bucket or container ({exc})"
        if kind == "NoCredentialsError" or ("credential" in str(exc).lower() and not isinstance(exc, PermissionError)):
            return (f"{self.url}: no credentials found ({exc}); set them in the environment (AWS_ACCESS_KEY_ID "
                    "and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*)")
        if isinstance(exc, PermissionError):
            return f"{self.url}: access denied ({exc}); check the credentials and the bucket's policy"
        if "Connect" in kind or isinstance(exc, (ConnectionError, TimeoutError)):
            return f"{self.url}: the storage endpoint cannot be reached ({exc}); check AWS_ENDPOINT_URL or the network"
        return f"{self.url}: {kind}: {exc}"
