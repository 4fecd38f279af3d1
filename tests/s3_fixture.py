"""A local S3-protocol server for tests and benchmarks: moto's standalone server on 127.0.0.1.

`s3_server()` starts `python -m moto.server` on a free port (by process id, stopped the same way)
and yields its endpoint URL. `s3_environment(endpoint)` is the environment that points s3fs /
botocore at it, the way a deployment points them at S3: `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY` (fake, distinctive values, so tests can check they never show up), and
no profile files of the machine's user.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.local_service import free_port, local_service

#: Fake credentials: distinctive, so that a test can search every error text and log record for them.
ACCESS_KEY_ID = "AKIAHPSTESTKEYID4242"
SECRET_ACCESS_KEY = "hpsTestSecret/DoNotLog+9f3c2a71e5"


def moto_available() -> bool:
    """True when moto's server (`pip install 'moto[server]'`) and s3fs are importable."""
    return all(importlib.util.find_spec(m) is not None for m in ("moto", "flask", "s3fs"))


@contextlib.contextmanager
def s3_server(start_timeout_s: float = 30.0) -> Iterator[str]:
    """Start moto's S3 server on 127.0.0.1 and a fresh port; yield its endpoint URL; stop it."""
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with local_service(argv, port, "moto server", start_timeout_s):
        yield f"http://127.0.0.1:{port}"


def s3_environment(endpoint: str) -> dict[str, str]:
    """Environment variables that point s3fs / botocore at `endpoint` with the fake credentials."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_PROXY": "127.0.0.1,localhost",
    }


def upload_dir(local: str | os.PathLike[str], url: str) -> None:
    """Copy the files of directory `local` to `url` (`s3://bucket/prefix`), creating the bucket."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, skip_instance_cache=True)
    bucket = path.split("/", 1)[0]
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    for file in sorted(Path(local).iterdir()):
        fs.put_file(str(file), f"{path.rstrip('/')}/{file.name}")
