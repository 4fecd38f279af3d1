"""Sparse model files behind an fsspec URL (`s3://`, `gs://`, `hdfs://`, `https://`, ...).

HugeCTR read its sparse files from HDFS, S3 and GCS; so do we, through fsspec. A remote table
is never memory-mapped: `SparseModel` validates it from the objects' metadata (`info()`: size,
ETag or mtime) before reading a byte, then streams it in ranged reads.

Credentials come from where the filesystem's own library finds them (s3fs/botocore: the
`AWS_*` environment variables such as `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
`AWS_ENDPOINT_URL`, `~/.aws` profiles, instance roles; gcsfs: Google's application default
credentials; fsspec's `FSSPEC_<PROTOCOL>_<OPTION>` variables for any filesystem). ps.json has no
key for them, as in HugeCTR. Nothing here logs or raises a credential: messages name URLs
without their userinfo or query string, and error texts from the filesystem libraries are
scrubbed of them and of secret-looking environment values before they are shown (and not chained
as causes). An `s3://` / `gs://` URL with `user:password@` or a `?query` is refused (the drivers
would take it for part of the bucket name, and log it); in an `http(s)://` URL, `user:password@`
is sent as a basic-auth header and the URL fetched without it (fsspec's HTTP driver logs URLs).
One thing outside our reach: botocore's own DEBUG log (off unless a user turns DEBUG on for the
`botocore` logger) dumps request headers, whose AWS signature names the access key id (never the
secret key).

Only `fsspec` is imported here, and only when a URL is opened; the protocol's own package
(`s3fs`, `gcsfs`, `pyarrow` for HDFS) is imported by fsspec then. A missing one is a
`MissingDependencyError` naming what to install.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from hps.errors import MissingDependencyError, ModelFormatError, pip_install_hint

#: `scheme://` at the start of a path (RFC 3986 scheme characters).
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
#: `scheme://userinfo@` anywhere in a text (userinfo = anything up to '@' without '/', '?', '#').
_USERINFO_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^/?#@\s]*@")
#: the query / fragment of a URL (signed URLs carry their signature there).
_QUERY_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^\s?#'\"]*)[?#][^\s'\"]*")
#: environment variables whose values are secrets (by name) — scrubbed from error texts.
_SECRET_ENV_RE = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|ACCESS_KEY|ACCOUNT_KEY|CREDENTIAL|SAS|_KEY_ID|API_KEY",
                            re.IGNORECASE)

#: What to install for a protocol whose fsspec driver is missing: (package, how to install it).
_DRIVERS = {
    "s3": ("s3fs", pip_install_hint("remote")),
    "s3a": ("s3fs", pip_install_hint("remote")),
    "gs": ("gcsfs", "pip install gcsfs"),
    "gcs": ("gcsfs", "pip install gcsfs"),
    "hdfs": ("pyarrow", "pip install pyarrow, with a Hadoop client (Java and libhdfs, HADOOP_HOME / "
                        "CLASSPATH set) on this machine; or use webhdfs://, which needs neither"),
    "abfs": ("adlfs", "pip install adlfs"),
    "az": ("adlfs", "pip install adlfs"),
}

#: Schemes whose URLs carry no credentials or options (bucket names cannot hold '@').
_OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs"})

#: How long an opened filesystem (an S3 client, its credentials) serves further URLs of its host.
FS_REUSE_S = 300.0
#: Environment variables that configure the drivers: a change of any opens a new filesystem.
_ENV_PREFIXES = ("AWS_", "FSSPEC_", "GOOGLE_", "GCS", "AZURE_", "HADOOP_", "ARROW_", "KRB5")
_FS_CACHE: dict[tuple, tuple[Any, float]] = {}
_FS_LOCK = threading.Lock()

#: Ranged reads of one chunk are split into parts of at most this many bytes, fetched concurrently
#: (by filesystems that can: s3fs, gcsfs; others read them one after another).
READ_PART_BYTES = 16 << 20

#: `info()` fields that change when an object is rewritten, by filesystem (S3 ETag / VersionId,
#: GCS generation / md5, HDFS and local mtime).
_IDENTITY_FIELDS = ("ETag", "etag", "VersionId", "generation", "md5Hash", "crc32c", "LastModified",
                    "last_modified", "mtime", "modified", "updated")


def url_scheme(path: object) -> str | None:
    """The lower-case scheme of `path` if it is a `scheme://...` URL (str), else None."""
    if not isinstance(path, str):
        return None
    match = _SCHEME_RE.match(path)
    return match.group(1).lower() if match else None


def is_remote(path: object) -> bool:
    """True for a URL that fsspec opens (`s3://b/t`, `hdfs://h/p`); False for local paths and `file://`."""
    scheme = url_scheme(path)
    return scheme is not None and scheme not in ("file", "local")


def local_path(path: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """`path` with a leading `file://` removed (other paths as they are)."""
    if url_scheme(path) in ("file", "local"):
        return str(path).split("://", 1)[1]
    return path


def join(url: str, name: str) -> str:
    """`url` + "/" + `name`, with no doubled slash (`s3://b/t/` + `key` → `s3://b/t/key`)."""
    return url.rstrip("/") + "/" + name


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """`text` with every URL's userinfo (`user:password@`) replaced by `***@` and its query string
    (signed URLs' signatures) by `?***`; `secrets` and secret-looking environment values replaced by
    `***`."""
    text = _USERINFO_RE.sub(r"\1***@", text)
    text = _QUERY_RE.sub(r"\1?***", text)
    for value in sorted({*secrets, *_secret_values()}, key=len, reverse=True):
        if value:
            text = text.replace(value, "***")
    return text


def url_secrets(url: str) -> list[str]:
    """The parts of `url` that may be credentials: its userinfo, the password in it, its query."""
    match = re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://([^/?#]*)", url)
    out = []
    if match and "@" in match.group(1):
        userinfo = match.group(1).rsplit("@", 1)[0]
        out.append(userinfo)
        password = userinfo.partition(":")[2]
        if len(password) >= 3:
            out.append(password)
    query = re.search(r"[?#](.+)$", url)
    if query:
        out.append(query.group(1))
    return out


def _secret_values() -> list[str]:
    """Values of environment variables named like secrets (long enough to be one), longest first."""
    values = {v for k, v in os.environ.items() if _SECRET_ENV_RE.search(k) and len(v) >= 6}
    return sorted(values, key=len, reverse=True)


def describe_error(exc: BaseException, secrets: Sequence[str] = ()) -> str:
    """`"<ExceptionType>: <message>"`, redacted (see `redact`, with `secrets`)."""
    message = str(exc) or repr(exc)
    return redact(f"{type(exc).__name__}: {message}", secrets)


class RemoteFiles:
    """An fsspec filesystem opened for one sparse model directory URL.

    `where` is the URL as messages show it (no userinfo, no query). Every error raised is an
    `HpsError` whose text is redacted, raised without its cause chained (the cause's text may
    hold the URL's userinfo)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/") or url
        self._secrets = url_secrets(self.url)
        self.where = redact(self.url, self._secrets)
        self.scheme = url_scheme(url) or ""
        if self.scheme in _OBJECT_STORES and self._secrets:
            raise ModelFormatError(
                f"sparse model {self.where}: a {self.scheme}:// URL takes no user, password or ?query (they "
                f"would be read as part of the bucket or object name, and logged by the driver); give "
                f"credentials through the environment or a profile (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                f"AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS)")
        self.fs, self.root = _open_filesystem(self.url, self.where, self.scheme, self._secrets)

    def child(self, name: str) -> str:
        """The filesystem path of file `name` in the directory."""
        return join(self.root, name)

    def child_where(self, name: str) -> str:
        """The redacted URL of file `name` in the directory, for messages."""
        return join(self.where, name)

    def info(self, name: str) -> dict | None:
        """fsspec's `info()` of file `name` (keys `size`, `type`, and e.g. `ETag`), or None when
        it does not exist."""
        try:
            self.fs.invalidate_cache(self.child(name))  # a listing cached by fsspec may be stale
            info = self.fs.info(self.child(name))
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - any driver error becomes one that names the URL
            raise ModelFormatError(f"cannot read sparse model file {self.child_where(name)}: "
                                   f"{describe_error(exc, self._secrets)}") from None
        if info.get("type") == "directory":
            return None
        return info

    def names(self) -> list[str] | None:
        """Names of the entries in the directory (sorted), or None when nothing is there."""
        try:
            self.fs.invalidate_cache(self.root)  # the filesystem is shared: its cached listing may be stale
            entries = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001
            raise ModelFormatError(f"cannot list sparse model directory {self.where}: "
                                   f"{describe_error(exc, self._secrets)}") from None
        names = sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)
        return names or None

    def read_ranges(self, name: str, starts: Sequence[int], stops: Sequence[int]) -> list[np.ndarray]:
        """The bytes `[starts[i], stops[i])` of file `name`: see `read_files`."""
        return self.read_files([(name, start, stop) for start, stop in zip(starts, stops)])

    def read_files(self, ranges: Sequence[tuple[str, int, int]]) -> list[np.ndarray]:
        """For each `(name, start, stop)`, the bytes `[start, stop)` of file `name` as a writable
        `(stop - start,) uint8` array. The ranges are split into parts of at most `READ_PART_BYTES`,
        all fetched concurrently where the filesystem can (s3fs, gcsfs: one batch of requests). A
        range the file no longer holds whole raises `ModelFormatError` ("shrank")."""
        out = [np.empty(stop - start, dtype=np.uint8) for _, start, stop in ranges]
        paths: list[str] = []
        part_starts: list[int] = []
        part_stops: list[int] = []
        owners: list[int] = []
        for i, (name, start, stop) in enumerate(ranges):
            for part in range(start, stop, READ_PART_BYTES):
                paths.append(self.child(name))
                part_starts.append(part)
                part_stops.append(min(stop, part + READ_PART_BYTES))
                owners.append(i)
        names = sorted({name for name, _, _ in ranges})
        shown = ", ".join(self.child_where(name) for name in names)
        try:
            parts = self.fs.cat_ranges(paths, part_starts, part_stops, on_error="raise")
        except Exception as exc:  # noqa: BLE001
            raise ModelFormatError(f"cannot read sparse model file {shown}: "
                                   f"{describe_error(exc, self._secrets)}") from None
        for owner, data, start, stop in zip(owners, parts, part_starts, part_stops):
            where = self.child_where(ranges[owner][0])
            if isinstance(data, BaseException):
                raise ModelFormatError(f"cannot read sparse model file {where}: "
                                       f"{describe_error(data, self._secrets)}")
            if len(data) != stop - start:
                raise ModelFormatError(
                    f"sparse model file {where} shrank while being read: bytes [{start}, {stop}) asked, "
                    f"{len(data)} read")
            offset = start - ranges[owner][1]
            out[owner][offset:offset + len(data)] = np.frombuffer(data, dtype=np.uint8)
        return out


def identity(info: dict) -> dict:
    """What identifies this version of an object from its `info()`: its size and the fields among
    ETag / VersionId / generation / md5 / mtime that the filesystem gives, as JSON-ready values."""
    out: dict[str, Any] = {"size": int(info.get("size") or 0)}
    for field in _IDENTITY_FIELDS:
        value = info.get(field)
        if value is not None:
            out[field] = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return out


def _http_basic_auth(url: str, scheme: str) -> tuple[str, dict]:
    """For an http(s) URL with `user:password@`: the URL without them, and fsspec options that send
    them as HTTP basic auth (fsspec's HTTP driver logs the URLs it fetches at DEBUG)."""
    if scheme not in ("http", "https"):
        return url, {}
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#]*)@(.*)$", url, re.DOTALL)
    if not match:
        return url, {}
    import base64
    from urllib.parse import unquote

    user, _, password = match.group(2).partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode("ascii")
    return match.group(1) + match.group(3), {"client_kwargs": {"headers": {"Authorization": f"Basic {token}"}}}


def _open_filesystem(url: str, where: str, scheme: str, secrets: Sequence[str]) -> tuple[Any, str]:
    """`(filesystem, path inside it)` for `url`, credentials picked up by the driver itself.

    Filesystems are shared by URLs of the same scheme and host (bucket) for `FS_REUSE_S` seconds,
    while the environment variables that configure them (`AWS_*`, `FSSPEC_*`, ...) stay the same:
    a new S3 client costs about 0.3 s. (fsspec's own instance cache is keyed by options only, so
    it would keep credentials and endpoints that the environment no longer names.)"""
    try:
        import fsspec
    except ImportError:
        raise MissingDependencyError(
            f"sparse model {where} is a URL, and reading URLs needs fsspec: {pip_install_hint('remote')}") from None
    try:
        netloc = url.split("://", 1)[1].split("/", 1)[0]
        url, options = _http_basic_auth(url, scheme)
        key = (os.getpid(), scheme, netloc,  # async filesystems are not fork-safe: one per process
               tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES))))
        now = time.monotonic()
        with _FS_LOCK:
            cached = _FS_CACHE.get(key)
        if cached is not None and now - cached[1] < FS_REUSE_S:
            fs = cached[0]
            path = type(fs)._strip_protocol(url)
        else:
            fs, path = fsspec.core.url_to_fs(url, skip_instance_cache=True, **options)
            with _FS_LOCK:
                for stale in [k for k, (_, t) in _FS_CACHE.items() if now - t >= FS_REUSE_S]:
                    del _FS_CACHE[stale]
                _FS_CACHE[key] = (fs, now)
    except ImportError as exc:
        package, how = _DRIVERS.get(scheme, (None, None))
        if package is None:
            raise MissingDependencyError(
                f"sparse model {where}: fsspec's {scheme}:// filesystem needs a package that is not "
                f"installed ({describe_error(exc, secrets)})") from None
        raise MissingDependencyError(
            f"sparse model {where}: reading {scheme}:// needs {package}, which is not installed: {how}") from None
    except ValueError as exc:
        if "Protocol not known" in str(exc):
            raise ModelFormatError(
                f"sparse model {where}: no fsspec filesystem knows the scheme {scheme}:// (s3://, gs://, "
                f"hdfs://, webhdfs://, https://, abfs:// ... or a local path)") from None
        raise ModelFormatError(f"sparse model {where}: {describe_error(exc, secrets)}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. a driver that connects in its constructor (HDFS)
        raise ModelFormatError(f"cannot open sparse model {where}: {describe_error(exc, secrets)}") from None
    return fs, str(path).rstrip("/") or str(path)


def download(url: str, directory: str | os.PathLike[str], what: str) -> str:
    """Copy the file at `url` into `directory` under its own name; returns the local path.
    A missing file or a failed read is a `ModelFormatError` naming the (redacted) URL."""
    secrets = url_secrets(url)
    where = redact(url, secrets)
    scheme = url_scheme(url) or ""
    fs, path = _open_filesystem(url, where, scheme, secrets)
    local = os.path.join(os.fspath(directory), path.rstrip("/").rsplit("/", 1)[-1] or "file")
    try:
        fs.get_file(path, local)
    except FileNotFoundError:
        raise ModelFormatError(f"convert: {what} {where} does not exist") from None
    except Exception as exc:  # noqa: BLE001
        raise ModelFormatError(f"convert: cannot read {what} {where}: {describe_error(exc, secrets)}") from None
    return local


def refuse_existing(remote: RemoteFiles | str, overwrite: bool) -> list[str]:
    """The names under the directory `remote` (a URL or opened); `ModelFormatError` when there are
    some and not `overwrite`."""
    remote = RemoteFiles(remote) if isinstance(remote, str) else remote
    existing = remote.names() or []
    if existing and not overwrite:
        raise ModelFormatError(f"{remote.where} already exists (it holds {existing}); pass overwrite=True "
                               f"(hps convert --overwrite) to replace it")
    return existing


def upload_table(local_dir: str | os.PathLike[str], url: str, overwrite: bool) -> None:
    """Copy the sparse model directory `local_dir` to `url`.

    An object store has no atomic rename, so the order keeps readers from a mixed table: `key`
    (the file a reader opens first) is removed first and written last, so a reader during the
    copy finds it missing and fails instead of pairing old keys with new vectors. A `url` that
    holds anything is refused unless `overwrite`; then the files the new table lacks are removed
    (before `key` is written)."""
    remote = RemoteFiles(url)
    existing = refuse_existing(remote, overwrite)
    names = sorted(os.listdir(local_dir), key=lambda n: n == "key")  # `key` last
    try:
        for stale in sorted(set(existing) - set(names[:-1]), key=lambda n: n != "key"):  # `key` first
            remote.fs.rm_file(remote.child(stale))
        for name in names:
            remote.fs.put_file(os.path.join(os.fspath(local_dir), name), remote.child(name))
    except Exception as exc:  # noqa: BLE001
        raise ModelFormatError(f"cannot write sparse model {remote.where}: {describe_error(exc, remote._secrets)}; "
                               f"it is left without its 'key' file (unreadable), write it again") from None
