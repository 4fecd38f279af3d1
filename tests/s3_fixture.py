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
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

#: Fake credentials: distinctive, so that a test can search every error text and log record for them.
ACCESS_KEY_ID = "AKIAHPSTESTKEYID4242"
SECRET_ACCESS_KEY = "hpsTestSecret/DoNotLog+9f3c2a71e5"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def moto_available() -> bool:
    """True when moto's server (`pip install 'moto[server]'`) and s3fs are importable."""
    return all(importlib.util.find_spec(m) is not None for m in ("moto", "flask", "s3fs"))


@contextlib.contextmanager
def s3_server(start_timeout_s: float = 30.0) -> Iterator[str]:
    """Start moto's S3 server on 127.0.0.1 and a fresh port; yield its endpoint URL; stop it."""
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {proc.returncode}: {Path(log.name).read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not listen on {port} within {start_timeout_s} s")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        os.unlink(log.name)


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
