"""RemoteRepository against a real S3-compatible server (moto's server mode): what a sync
downloads, keeps and removes, and that unchanged files are never fetched again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("s3fs", reason="s3:// repositories need the s3 extra (s3fs)")
pytest.importorskip("moto.server", reason="the S3 tests run against moto's server (moto[server])")

from inferd.errors import ConfigError
from inferd.repository.layout import scan
from inferd.repository.remote import RemoteRepository, is_remote
from tests import s3
from tests.conftest import ROOT

MLP = ROOT / "examples/models/mlp_onnx"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with s3.moto_server() as url:
        yield url


@pytest.fixture()
def bucket(endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    for key, value in s3.environment(endpoint).items():
        monkeypatch.setenv(key, value)
    name = f"models-{request.node.name.replace('_', '-')}"[:63]
    s3.client(endpoint).create_bucket(Bucket=name)
    return name


def test_remote_urls_are_recognised() -> None:
    assert is_remote("s3://b/p") and is_remote("gs://b") and is_remote("az://c/p")
    assert not is_remote("/mnt/models") and not is_remote("models") and not is_remote("http://x/y")


def test_bad_urls_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must not hold"):
        RemoteRepository("s3://bucket/a/../b", tmp_path)
    with pytest.raises(ConfigError, match="scheme"):
        RemoteRepository("s3:///prefix", tmp_path)


def test_sync_mirrors_the_prefix_and_downloads_only_what_changed(endpoint: str, bucket: str,
                                                                tmp_path: Path) -> None:
    client = s3.client(endpoint)
    s3.upload(client, bucket, "repo/mlp", MLP)
    client.put_object(Bucket=bucket, Key="elsewhere/other/1/model.onnx", Body=b"not ours")
    repo = RemoteRepository(f"s3://{bucket}/repo", tmp_path)
    first = repo.sync()
    assert sorted(first.downloaded) == ["mlp/1/model.onnx", "mlp/config.toml"]
    assert repo.mirror == tmp_path / "s3" / bucket / "repo"
    assert (repo.mirror / "mlp/1/model.onnx").read_bytes() == (MLP / "1/model.onnx").read_bytes()
    assert [(m.name, sorted(m.versions)) for m in scan(repo.mirror)] == [("mlp", [1])]
    stamp = (repo.mirror / "mlp/1/model.onnx").stat().st_mtime_ns

    again = RemoteRepository(f"s3://{bucket}/repo/", tmp_path).sync()  # a restart: the manifest remembers
    assert again.downloaded == [] and again.removed == [] and again.unchanged == 2
    assert (repo.mirror / "mlp/1/model.onnx").stat().st_mtime_ns == stamp

    client.put_object(Bucket=bucket, Key="repo/mlp/2/model.onnx", Body=(MLP / "1/model.onnx").read_bytes())
    client.put_object(Bucket=bucket, Key="repo/mlp/config.toml", Body=b"max_batch_size = 4\n")
    changed = repo.sync()
    assert sorted(changed.downloaded) == ["mlp/2/model.onnx", "mlp/config.toml"] and changed.unchanged == 1
    assert (repo.mirror / "mlp/config.toml").read_text() == "max_batch_size = 4\n"

    client.delete_object(Bucket=bucket, Key="repo/mlp/1/model.onnx")
    gone = repo.sync()
    assert gone.removed == ["mlp/1/model.onnx"] and gone.downloaded == []
    assert not (repo.mirror / "mlp/1").exists()  # the emptied version folder goes too
    assert [(m.name, sorted(m.versions)) for m in scan(repo.mirror)] == [("mlp", [2])]


def test_a_damaged_local_copy_is_fetched_again(endpoint: str, bucket: str, tmp_path: Path) -> None:
    s3.upload(s3.client(endpoint), bucket, "repo/mlp", MLP)
    repo = RemoteRepository(f"s3://{bucket}/repo", tmp_path)
    repo.sync()
    (repo.mirror / "mlp/1/model.onnx").write_bytes(b"truncated")
    (repo.mirror / "mlp/stray.txt").write_text("not in the bucket")
    report = repo.sync()
    assert report.downloaded == ["mlp/1/model.onnx"] and report.removed == ["mlp/stray.txt"]
    assert (repo.mirror / "mlp/1/model.onnx").read_bytes() == (MLP / "1/model.onnx").read_bytes()


def test_a_missing_bucket_is_named(endpoint: str, bucket: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such bucket"):
        RemoteRepository("s3://no-such-bucket-here/repo", tmp_path).sync()


def test_folder_objects_and_an_object_named_as_a_folder_are_skipped(endpoint: str, bucket: str,
                                                                    tmp_path: Path) -> None:
    """The S3 console's "Create folder" leaves zero-byte objects named ``m/`` and ``m/1/``; they were
    downloaded as files, and the model's own files then failed the sync (FileExistsError: at start
    a traceback, while polling the end of every later sync)."""
    client = s3.client(endpoint)
    for key in ("repo/mlp/", "repo/mlp/1/"):
        client.put_object(Bucket=bucket, Key=key, Body=b"")
    s3.upload(client, bucket, "repo/mlp", MLP)
    client.put_object(Bucket=bucket, Key="repo/other/1", Body=b"a file where a version folder is")
    client.put_object(Bucket=bucket, Key="repo/other/1/model.onnx", Body=(MLP / "1/model.onnx").read_bytes())
    repo = RemoteRepository(f"s3://{bucket}/repo", tmp_path)
    report = repo.sync()
    assert sorted(report.downloaded) == ["mlp/1/model.onnx", "mlp/config.toml", "other/1/model.onnx"]
    assert [(m.name, sorted(m.versions)) for m in scan(repo.mirror)] == [("mlp", [1]), ("other", [1])]
    assert repo.sync().unchanged == 3


def test_an_object_replaced_by_a_folder_of_the_same_name_syncs(endpoint: str, bucket: str, tmp_path: Path) -> None:
    """``repo/m/2`` was a file, then the folder of version 2: the sync downloaded before it removed
    what was gone, so the old file stood where the folder goes (FileExistsError, every sync)."""
    client = s3.client(endpoint)
    s3.upload(client, bucket, "repo/mlp", MLP)
    client.put_object(Bucket=bucket, Key="repo/mlp/2", Body=b"a stray file")
    repo = RemoteRepository(f"s3://{bucket}/repo", tmp_path)
    repo.sync()
    client.delete_object(Bucket=bucket, Key="repo/mlp/2")
    client.put_object(Bucket=bucket, Key="repo/mlp/2/model.onnx", Body=(MLP / "1/model.onnx").read_bytes())
    report = repo.sync()
    assert report.removed == ["mlp/2"] and report.downloaded == ["mlp/2/model.onnx"]
    assert [(m.name, sorted(m.versions)) for m in scan(repo.mirror)] == [("mlp", [1, 2])]
