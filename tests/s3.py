"""A real S3-compatible server for the suite: moto's server mode as a subprocess on a free port,
and the standard AWS environment that points clients (boto3, s3fs, ``inferd serve``) at it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.conftest import free_port


def environment(endpoint: str) -> dict[str, str]:
    """Credentials and endpoint as a user sets them (moto accepts any key)."""
    return {"AWS_ACCESS_KEY_ID": "inferd-test", "AWS_SECRET_ACCESS_KEY": "inferd-secret",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_EC2_METADATA_DISABLED": "true"}


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Start ``python -m moto.server``; yield its endpoint URL; stop it."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto's server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(20)


def client(endpoint: str) -> Any:
    import boto3

    env = environment(endpoint)
    return boto3.client("s3", endpoint_url=endpoint, region_name=env["AWS_DEFAULT_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def upload(s3: Any, bucket: str, prefix: str, folder: Path) -> None:
    """Every file under ``folder`` as ``prefix/<relative path>``."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            s3.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder).as_posix()}",
                          Body=path.read_bytes())


def delete_prefix(s3: Any, bucket: str, prefix: str) -> None:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    for item in listed:
        s3.delete_object(Bucket=bucket, Key=item["Key"])


def with_environment(endpoint: str) -> dict[str, str]:
    return {**os.environ, **environment(endpoint)}
