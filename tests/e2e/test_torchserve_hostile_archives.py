"""``inferd torchserve`` given ``.tar.gz`` archives (``--archive-format tgz``) made to escape the
folder they unpack into, to hold what is no file, or to cost memory and time out of proportion to
their size, and one cut short: each registration is refused saying why, nothing lands outside, and
the server goes on serving a sound archive."""

from __future__ import annotations

import gzip
import json
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from inferd.errors import ConfigError
from inferd.repository.archives import archive_info
from inferd.runtimes.torchserve import MAX_ENTRIES, MAX_TAR_HEADER_BYTES
from tests.e2e.test_torchserve_cli import torchserve

HANDLER = b'''
def handle(data, context):
    if data is None:
        return None
    return ["sound"] * len(data)
'''


def _entry(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "", size: int | None = None
           ) -> bytes:
    """One tar entry: its header (``size``: the size it says, if not its data's) and its data."""
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname = len(data) if size is None else size, kind, link
    return info.tobuf(format=tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % 512)


def _sound(top: str) -> bytes:
    """The entries of a working archive: its manifest and a function handler."""
    manifest = {"runtime": "python", "model": {"modelName": top, "handler": "handler.py", "modelVersion": "1.0"},
                "archiverVersion": "0.12.0"}
    return (_entry(f"{top}/MAR-INF/MANIFEST.json", json.dumps(manifest).encode())
            + _entry(f"{top}/handler.py", HANDLER))


def _write(store: Path, top: str, entries: bytes, level: int = 6) -> None:
    (store / f"{top}.tar.gz").write_bytes(gzip.compress(entries + b"\0" * 1024, compresslevel=level))


def _many_entries(top: str) -> Iterator[bytes]:
    yield _sound(top)
    yield _entry(f"{top}/empty") * (MAX_ENTRIES + 1)


HOSTILE: dict[str, Callable[[Path], bytes]] = {
    # a path that climbs out of the unpacked folder to a file of the test's own
    "climbs": lambda outside: _sound("climbs") + _entry("climbs/" + "../" * 40 + str(outside / "escaped.txt")[1:],
                                                        b"written outside"),
    # a link out, then a file through it
    "symlink": lambda outside: (_sound("symlink") + _entry("symlink/out", kind=tarfile.SYMTYPE, link=str(outside))
                                + _entry("symlink/out/escaped.txt", b"written outside")),
    "hardlink": lambda outside: (_sound("hardlink")
                                 + _entry("hardlink/passwd", kind=tarfile.LNKTYPE, link="/etc/passwd")),
    "fifo": lambda outside: _sound("fifo") + _entry("fifo/pipe", kind=tarfile.FIFOTYPE),
    # an entry that says it is 1 TB (its data is not there)
    "huge": lambda outside: _sound("huge") + _entry("huge/big", size=1 << 40),
}
REFUSED = {"climbs": "would unpack outside the archive", "symlink": "is a link or a device",
           "hardlink": "is a link or a device", "fifo": "is a link or a device", "huge": "unpacks to over the limit"}


def _status_and_message(response: requests.Response) -> tuple[int, str]:
    return response.status_code, str(response.json().get("message", ""))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    folder = tmp_path / "store"
    folder.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    _write(folder, "sound", _sound("sound"))
    for top, entries in HOSTILE.items():
        _write(folder, top, entries(outside))
    _write(folder, "many", b"".join(_many_entries("many")), level=9)
    whole = gzip.compress(_sound("cut") + _entry("cut/more", b"x" * 100_000) + b"\0" * 1024)
    (folder / "cut.tar.gz").write_bytes(whole[:len(whole) // 2])  # a copy interrupted half way
    # the entry limit reached, and then the gzip stream cut: refused as its entries are counted,
    # before the rest is read (getmembers read on and failed on the cut, or kept millions of entries)
    many = gzip.compress(b"".join(_many_entries("countfirst")) + _entry("countfirst/more", b"y" * 4096) * 8, 9)
    (folder / "countfirst.tar.gz").write_bytes(many[:-64])
    return folder


def test_hostile_tgz_archives_are_refused_saying_why_and_nothing_lands_outside(store: Path, tmp_path: Path) -> None:
    with torchserve(tmp_path, {"model_store": str(store), "disable_token_authorization": "true",
                               "enable_model_api": "true"}) as urls:
        management = urls["management"]

        def register(top: str) -> requests.Response:
            return requests.post(f"{management}/models?url={top}.tar.gz&initial_workers=1&synchronous=true",
                                 timeout=120)

        for top, words in REFUSED.items():
            status, message = _status_and_message(register(top))
            assert status >= 400 and words in message, (top, status, message)
        started = time.monotonic()
        status, message = _status_and_message(register("many"))
        assert status >= 400 and f"has over {MAX_ENTRIES} entries" in message, (status, message)
        assert time.monotonic() - started < 60
        status, message = _status_and_message(register("countfirst"))
        assert status >= 400 and f"has over {MAX_ENTRIES} entries" in message, (status, message)
        status, message = _status_and_message(register("cut"))
        assert status >= 400 and "cut.tar.gz is not a model archive" in message, (status, message)
        assert list((tmp_path / "outside").iterdir()) == []
        assert register("sound").status_code == 200
        answer = requests.post(f"{urls['inference']}/predictions/sound", data=b"1", timeout=30)
        assert (answer.status_code, answer.text) == (200, "sound")
        listed = requests.get(f"{management}/models", timeout=30).json()["models"]
        assert [model["modelName"] for model in listed] == ["sound"]


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                                  tarfile.XGLTYPE])
def test_a_long_name_or_pax_header_past_the_limit_is_refused_before_it_is_read(tmp_path: Path, kind: bytes) -> None:
    """tarfile reads a long-name (GNU) or extended (PAX) header's data whole, into memory (a 300 KB
    archive whose long name said 300 MB took 360 MB): its declared size is refused first."""
    header = _entry("././@LongLink", kind=kind, size=MAX_TAR_HEADER_BYTES + 1)
    (tmp_path / "long.tar.gz").write_bytes(gzip.compress(_sound("long") + header + b"a" * (MAX_TAR_HEADER_BYTES + 1)))
    with pytest.raises(ConfigError, match=f"long.tar.gz is not a model archive.*header of {MAX_TAR_HEADER_BYTES + 1} "
                                          f"bytes, over the limit of {MAX_TAR_HEADER_BYTES}"):
        archive_info(tmp_path / "long.tar.gz")


def _old_gnu_sparse(blocks: int) -> bytes:
    """A GNU sparse entry whose map goes on for ``blocks`` extension blocks (21 regions each)."""
    info = tarfile.TarInfo("sparse/s")
    info.type = tarfile.GNUTYPE_SPARSE
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header[482] = 1  # the map goes on in the next block
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    extension = bytearray(512)
    for region in range(21):
        extension[region * 24:region * 24 + 24] = b"%011o\0" % 1 * 2
    extension[504] = 1
    return bytes(header) + bytes(extension) * blocks


def _pax_sparse(numbers: int) -> bytes:
    """A GNU PAX 1.0 sparse entry whose map says it has a billion regions, then ``numbers`` numbers."""
    info = tarfile.TarInfo("sparse/s")
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "0"}
    return info.tobuf(format=tarfile.PAX_FORMAT) + b"%d\n" % 10**9 + b"1\n" * numbers


@pytest.mark.parametrize("entries", [_old_gnu_sparse(2000), _pax_sparse(100_000)], ids=["gnu", "pax"])
def test_a_sparse_file_is_refused_before_its_map_is_read(tmp_path: Path, entries: bytes) -> None:
    (tmp_path / "sparse.tar.gz").write_bytes(gzip.compress(_sound("sparse") + entries))
    with pytest.raises(ConfigError, match=r"sparse.tar.gz is not a model archive.*: a sparse file; an archive "
                                          r"holds plain files"):
        archive_info(tmp_path / "sparse.tar.gz")


def test_entries_past_the_limit_are_refused_before_the_rest_is_read(tmp_path: Path) -> None:
    """The archive's headers are counted as they are read: a cut after the limit is never reached."""
    entries = b"".join(_many_entries("countfirst")) + _entry("countfirst/more", b"y" * 4096) * 8
    whole = gzip.compress(entries, 9)
    (tmp_path / "countfirst.tar.gz").write_bytes(whole[:-64])
    with pytest.raises(ConfigError, match=f"countfirst.tar.gz has over {MAX_ENTRIES} entries, the limit"):
        archive_info(tmp_path / "countfirst.tar.gz")
