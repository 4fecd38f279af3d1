"""A server process the tests start on 127.0.0.1 and stop by process id (tansu, moto's S3 server)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_service(argv: list[str], port: int, name: str, start_timeout_s: float = 30.0) -> Iterator[subprocess.Popen]:
    """Run `argv`, a server that listens on 127.0.0.1:`port`; yield its process once it accepts connections;
    then terminate it (kill after 5 s) and remove its log. Raises `RuntimeError` with the log's tail if it
    exits or does not listen within `start_timeout_s`."""
    log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {Path(log.name).read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not listen on {port} within {start_timeout_s} s")
                time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        os.unlink(log.name)
