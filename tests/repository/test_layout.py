"""Which folders are one model and which are repositories (KServe's /mnt/models layouts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferd.config import ServerSettings
from inferd.errors import ConfigError
from inferd.repository.layout import fingerprint, read_model_folder, single_model
from inferd.server import repository_roots


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize(("files", "single"), [
    (["model.onnx"], True),  # storageUri of one file
    (["model.onnx", "config.toml"], True),
    (["1/model.onnx"], True),  # a model folder with its versions
    (["1/model.onnx", "2/model.pt", "config.pbtxt"], True),
    (["1/saved_model.pb", "1/variables/variables.index"], True),
    (["mlp/1/model.onnx"], False),  # a repository
    (["mlp/1/model.onnx", "1/model.onnx"], False),  # a model beside: "1" is a model of the repository
    (["1/1/model.onnx"], False),  # a model named "1" with its version 1
    ([".hidden/model.onnx", "mlp/1/model.onnx"], False),
    ([], False),
])
def test_single_model_or_repository(tmp_path: Path, files: list[str], single: bool) -> None:
    for name in files:
        touch(tmp_path / name)
    assert single_model(tmp_path) is single


def test_an_artifact_at_the_top_is_version_1(tmp_path: Path) -> None:
    touch(tmp_path / "m/model.onnx")
    folder = read_model_folder(tmp_path / "m", "named")
    assert (folder.name, folder.versions) == ("named", {1: tmp_path / "m"})
    touch(tmp_path / "m/3/model.onnx")  # version folders win over the artifact at the top
    assert read_model_folder(tmp_path / "m").versions == {3: tmp_path / "m/3"}


def test_roots_from_settings(tmp_path: Path) -> None:
    touch(tmp_path / "one/1/model.onnx")
    touch(tmp_path / "repo/mlp/1/model.onnx")
    root, sources = repository_roots(ServerSettings(model_repository=tmp_path / "one", model_name="resnet"))
    assert root is None and [(s.name, s.base_path) for s in sources] == [("resnet", tmp_path / "one")]
    root, sources = repository_roots(ServerSettings(model_repository=tmp_path / "one"))
    assert [s.name for s in sources] == ["one"]  # no --model-name: the folder's name
    root, sources = repository_roots(ServerSettings(model_repository=tmp_path / "repo", model_name="resnet"))
    assert root == tmp_path / "repo" and sources == ()


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "a..b"])
def test_bad_model_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="--model-name must be a plain name"):
        ServerSettings(model_name=name)


def test_fingerprint_follows_linked_version_folders_and_survives_a_loop(tmp_path: Path) -> None:
    for store in ("a", "b"):
        (tmp_path / "store" / store).mkdir(parents=True)
        (tmp_path / "store" / store / "model.onnx").write_bytes(b"onnx " + store.encode())
    (tmp_path / "m").mkdir()
    (tmp_path / "m/1").symlink_to(tmp_path / "store/a")
    (tmp_path / "m/loop").symlink_to(tmp_path / "m")  # a link back up is no loop
    before = fingerprint(read_model_folder(tmp_path / "m"))
    assert any(entry[0] == "1/model.onnx" for entry in before)
    (tmp_path / "m/2").symlink_to(tmp_path / "store/b")  # a new version, by a link
    added = fingerprint(read_model_folder(tmp_path / "m"))
    assert added != before
    (tmp_path / "m/2").unlink()
    (tmp_path / "m/2").symlink_to(tmp_path / "store/a")  # the link swapped to another folder
    assert fingerprint(read_model_folder(tmp_path / "m")) != added
    (tmp_path / "store/a/model.onnx").write_bytes(b"changed, and longer")  # a file behind the link
    assert fingerprint(read_model_folder(tmp_path / "m")) not in (before, added)


def test_version_folders_fit_int64_and_a_version_named_twice_is_read_the_same_every_time(tmp_path: Path) -> None:
    """A version past int64 is skipped, as Triton and TF Serving skip it (served, it made TF
    Serving's gRPC status and metadata a 500: 'Value out of range'); of ``7``, ``07`` and
    ``007`` the folder without leading zeros is version 7 (it was whichever the listing gave last)."""
    for folder in ("9223372036854775807", "9223372036854775808", "99999999999999999999", "0", "007", "07", "7"):
        touch(tmp_path / "m" / folder / "model.onnx")
    folder = read_model_folder(tmp_path / "m")
    assert folder.versions == {7: tmp_path / "m" / "7", 2**63 - 1: tmp_path / "m" / "9223372036854775807"}


def test_a_scan_survives_model_folders_removed_while_it_lists_them(tmp_path: Path) -> None:
    """A folder listed by the repository's scan and gone before its own listing made the whole scan
    raise FileNotFoundError: the v2 repository index answered 500, a poll applied nothing."""
    import shutil
    import threading
    import time

    from inferd.repository.layout import scan

    touch(tmp_path / "m" / "1" / "model.onnx")
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            for i in range(4):
                (tmp_path / f"v{i}" / "1").mkdir(parents=True, exist_ok=True)
                shutil.rmtree(tmp_path / f"v{i}", ignore_errors=True)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        deadline, scans = time.monotonic() + 3, 0
        while time.monotonic() < deadline:
            assert "m" in [folder.name for folder in scan(tmp_path)]
            scans += 1
    finally:
        stop.set()
        thread.join()
    assert scans > 100
