"""An HTTP front that keeps hostile or broken inference requests away from a tritonserver that cannot
limit its inputs itself.

Triton's HTTP frontend sizes the buffer of a JSON input from the shape the client declares, before it
reads the data: one request declaring `"shape": [1, 1099511627776]` with a single element makes the
tritonserver bundled in nvidia-pytriton 0.7.0 (Triton 2.51) allocate 4 TiB, die of std::bad_alloc and
take every model down. Triton 2.59 added `--http-max-input-size` (64 MiB by default) and 2.68 closed the
overflows left in that check; hps passes the option to a server that has it and runs this front for one
that does not (`TritonServer`, input_guard "auto").

The front listens where clients connect, forwards every request to tritonserver's HTTP port on
loopback, and first checks each inference request (POST .../infer): body size, the declared size of
each input (Π shape × datatype size) against `max_input_bytes`, and that JSON `data` holds as many
elements as the shape says. A request that fails gets HTTP 400 with Triton's error body
({"error": "..."}) and never reaches the server. gzip / deflate bodies are inflated here, within the
same limit. Only the standard library is used: it runs as `python guard.py --listen ... --upstream ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import signal
import sys
import zlib
from typing import Any

#: bytes per element of each Triton datatype (BYTES: at least one per element)
DTYPE_BYTES = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2, "UINT32": 4,
               "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8, "BYTES": 1}
#: Triton 2.59+'s default --http-max-input-size
DEFAULT_MAX_INPUT_BYTES = 64 * 1024 * 1024
MAX_HEAD_BYTES = 64 * 1024
INFER_PATH = re.compile(r"^/v2/models/[^/?]+(/versions/[^/?]+)?/infer(\?.*)?$")


def check_infer_request(header: bytes, max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES) -> str | None:
    """Why an inference request's JSON header is refused, or None when it may go to Triton.

    header: the JSON part of the body (all of it, or the first Inference-Header-Content-Length bytes).
    Checks each input's shape (non-negative integers), datatype, declared bytes (alone and in total,
    at most `max_input_bytes`) and, for JSON `data`, that it holds Π shape elements. Binary and
    shared-memory inputs are sized by Triton itself against the bytes actually sent."""
    try:
        request = json.loads(header)
    except (ValueError, RecursionError) as exc:
        return f"malformed inference request JSON: {str(exc)[:200]}"
    if not isinstance(request, dict):
        return "the inference request must be a JSON object"
    inputs = request.get("inputs", [])
    if not isinstance(inputs, list):
        return "'inputs' must be an array"
    total = 0
    for i, item in enumerate(inputs):
        if not isinstance(item, dict):
            return f"input #{i} must be a JSON object"
        name = item.get("name", f"#{i}")
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            return f"input {name!r}: 'shape' must be an array of non-negative integers, got {_short(shape)}"
        datatype = item.get("datatype")
        size = DTYPE_BYTES.get(datatype) if isinstance(datatype, str) else None
        if size is None:
            return f"input {name!r}: unknown datatype {_short(datatype)}"
        count = math.prod(shape)
        total += count * size
        if total > max_input_bytes:
            return (f"input {name!r}: shape {_short(shape)} of {datatype} declares {count * size:,} bytes; "
                    f"this server takes at most {max_input_bytes:,} bytes of input per request")
        params = item.get("parameters")
        if isinstance(params, dict) and ("binary_data_size" in params or "shared_memory_region" in params):
            continue
        if "data" in item:
            found, bad = _count_elements(item["data"], count, _LEAF_TYPES[datatype])
            if bad is not None:
                return f"input {name!r}: 'data' holds {_short(bad[0])}, not a {datatype} value"
            if found != count:
                return (f"input {name!r}: shape {_short(shape)} holds {count:,} elements but 'data' has "
                        f"{'more' if found > count else f'{found:,}'}")
    return None


def _is_bool(x: Any) -> bool:
    return type(x) is bool


def _is_int(x: Any) -> bool:
    return type(x) is int


def _is_uint(x: Any) -> bool:
    return type(x) is int and x >= 0


def _is_number(x: Any) -> bool:
    return type(x) in (int, float)


def _is_str(x: Any) -> bool:
    return type(x) is str


#: What a JSON `data` element of each datatype must be (Triton answers 500 where its parser disagrees).
_LEAF_TYPES = {dtype: (_is_bool if dtype == "BOOL" else _is_str if dtype == "BYTES"
                       else _is_number if dtype in ("FP16", "BF16", "FP32", "FP64")
                       else _is_uint if dtype.startswith("UINT") else _is_int)
               for dtype in DTYPE_BYTES}


def _count_elements(data: Any, expected: int, leaf_ok: Any) -> tuple[int, tuple | None]:
    """Leaf elements of nested JSON arrays (a scalar counts 1), stopping early past `expected`, and
    `(leaf,)` for the first leaf that `leaf_ok` refuses (None when all pass)."""
    if not isinstance(data, list):
        return 1, (None if leaf_ok(data) else (data,))
    count, stack = 0, [data]
    while stack:
        items = stack.pop()
        nested = [x for x in items if isinstance(x, list)]
        count += len(items) - len(nested)
        for x in items:
            if not isinstance(x, list) and not leaf_ok(x):
                return count, (x,)
        stack.extend(nested)
        if count > expected:
            return count, None
    return count, None


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- the proxy ----------------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status, self.message, self.close = status, message, close


class _Head:
    """A parsed HTTP/1.x request or response head."""

    def __init__(self, raw: bytes):
        lines = raw.decode("latin-1").split("\r\n")
        self.start = lines[0]
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if not line:
                continue
            if ":" not in line:
                raise _Refused(400, f"malformed HTTP header line {line[:80]!r}", close=True)
            key, value = line.split(":", 1)
            self.headers.append((key.strip(), value.strip()))

    def get(self, key: str) -> str | None:
        key = key.lower()
        for k, v in self.headers:
            if k.lower() == key:
                return v
        return None

    def without(self, *keys: str) -> list[tuple[str, str]]:
        drop = {k.lower() for k in keys}
        return [(k, v) for k, v in self.headers if k.lower() not in drop]


def _serialize(start: str, headers: list[tuple[str, str]]) -> bytes:
    return (start + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode("latin-1")


def _error_response(status: int, message: str, close: bool) -> bytes:
    body = json.dumps({"error": message}).encode()
    reason = {400: "Bad Request", 413: "Payload Too Large", 431: "Request Header Fields Too Large",
              502: "Bad Gateway"}.get(status, "Error")
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if close:
        headers.append(("Connection", "close"))
    return _serialize(f"HTTP/1.1 {status} {reason}", headers) + body


async def _read_chunked(reader: asyncio.StreamReader, limit: int) -> bytes:
    parts, size = [], 0
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            n = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _Refused(400, "malformed chunked body", close=True) from None
        if n == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        size += n
        if size > limit:
            raise _Refused(400, f"request body larger than {limit:,} bytes", close=True)
        parts.append(await reader.readexactly(n))
        await reader.readexactly(2)


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding.lower())
    if wbits is None:
        raise _Refused(400, f"unsupported Content-Encoding {encoding!r}")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise _Refused(400, f"malformed {encoding} body: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise _Refused(400, f"{encoding} body inflates past {limit:,} bytes")
    return out


class GuardProxy:
    """Forwards HTTP/1.1 requests from clients to tritonserver's HTTP port, refusing inference requests
    that `check_infer_request` refuses (HTTP 400) and bodies over `max_body_bytes`."""

    def __init__(self, upstream_host: str, upstream_port: int, max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES):
        self.upstream = (upstream_host, upstream_port)
        self.max_input_bytes = max_input_bytes
        # JSON text of the largest allowed input (about 25 characters per FP64 value) plus headroom
        self.max_body_bytes = max_input_bytes * 4 + MAX_HEAD_BYTES

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    writer.write(_error_response(431, f"request head larger than {MAX_HEAD_BYTES} bytes", True))
                    await writer.drain()
                    return
                try:
                    head = _Head(raw)
                    method, target, version = self._request_line(head)
                    body = await self._read_body(head, reader, writer)
                    if method == "POST" and INFER_PATH.match(target):
                        body = self._check(head, body)
                except _Refused as refused:
                    writer.write(_error_response(refused.status, refused.message, refused.close))
                    await writer.drain()
                    if refused.close:
                        return
                    continue
                close = (head.get("Connection") or "").lower() == "close" or version == "HTTP/1.0"
                if upstream is None:
                    try:
                        upstream = await asyncio.open_connection(*self.upstream, limit=MAX_HEAD_BYTES)
                    except OSError as exc:
                        writer.write(_error_response(502, f"tritonserver at {self.upstream} unreachable: {exc}", True))
                        await writer.drain()
                        return
                headers = head.without("Content-Length", "Transfer-Encoding", "Content-Encoding", "Expect")
                if body or method in ("POST", "PUT"):
                    headers.append(("Content-Length", str(len(body))))
                upstream[1].write(_serialize(head.start, headers) + body)
                await upstream[1].drain()
                keep = await self._relay_response(upstream[0], writer, method)
                if close or not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        except Exception as exc:  # anything else ends this connection only, never the front
            print(f"hps guard: connection closed after {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return
        finally:
            for w in ((upstream[1],) if upstream else ()) + (writer,):
                w.close()

    @staticmethod
    def _request_line(head: _Head) -> tuple[str, str, str]:
        parts = head.start.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _Refused(400, f"malformed HTTP request line {head.start[:80]!r}", close=True)
        return parts[0], parts[1], parts[2]

    async def _read_body(self, head: _Head, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        length = head.get("Content-Length")
        chunked = "chunked" in (head.get("Transfer-Encoding") or "").lower()
        if length is None and not chunked:
            return b""
        if (head.get("Expect") or "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        if chunked:
            return await _read_chunked(reader, self.max_body_bytes)
        try:
            n = int(length)
        except ValueError:
            raise _Refused(400, f"malformed Content-Length {length[:40]!r}", close=True) from None
        if n < 0:
            raise _Refused(400, f"malformed Content-Length {length[:40]!r}", close=True)
        if n > self.max_body_bytes:
            raise _Refused(400, f"request body of {n:,} bytes is larger than this server takes "
                                f"({self.max_body_bytes:,})", close=True)
        return await reader.readexactly(n)

    def _check(self, head: _Head, body: bytes) -> bytes:
        encoding = head.get("Content-Encoding")
        if encoding and encoding.lower() != "identity":
            body = _inflate(body, encoding, self.max_body_bytes)
        header_length = head.get("Inference-Header-Content-Length")
        if header_length is not None:
            try:
                n = int(header_length)
            except ValueError:
                raise _Refused(400, f"malformed Inference-Header-Content-Length {header_length[:40]!r}") from None
            if not 0 <= n <= len(body):
                raise _Refused(400, f"Inference-Header-Content-Length {n} is outside the body of {len(body)} bytes")
            header = body[:n]
        else:
            header = body
        problem = check_infer_request(header, self.max_input_bytes)
        if problem is not None:
            raise _Refused(400, problem)
        return body

    async def _relay_response(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str) -> bool:
        """Copy one response from tritonserver to the client; False when the connection must close."""
        raw = await reader.readuntil(b"\r\n\r\n")
        head = _Head(raw)
        writer.write(raw)
        status = int(head.start.split(" ")[1]) if len(head.start.split(" ")) > 1 else 0
        keep = (head.get("Connection") or "").lower() != "close"
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            await writer.drain()
            return keep
        length = head.get("Content-Length")
        if length is not None:
            remaining = int(length)
            while remaining:
                chunk = await reader.read(min(remaining, 1 << 20))
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", remaining)
                writer.write(chunk)
                remaining -= len(chunk)
        elif "chunked" in (head.get("Transfer-Encoding") or "").lower():
            while True:
                line = await reader.readuntil(b"\r\n")
                writer.write(line)
                n = int(line.split(b";", 1)[0].strip(), 16)
                if n == 0:
                    while True:
                        trailer = await reader.readuntil(b"\r\n")
                        writer.write(trailer)
                        if trailer == b"\r\n":
                            break
                    break
                writer.write(await reader.readexactly(n + 2))
                await writer.drain()
        else:
            while chunk := await reader.read(1 << 20):
                writer.write(chunk)
            keep = False
        await writer.drain()
        return keep


async def _serve(listen_host: str, listen_port: int, proxy: GuardProxy) -> None:
    server = await asyncio.start_server(proxy.handle, listen_host, listen_port, limit=MAX_HEAD_BYTES,
                                        reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()

    async def watch_parent() -> None:  # never outlive the process that started us
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        stop.set()

    watcher = asyncio.create_task(watch_parent())
    print(f"hps guard: listening on {listen_host}:{listen_port}, forwarding to "
          f"{proxy.upstream[0]}:{proxy.upstream[1]}", flush=True)
    async with server:
        await stop.wait()
    watcher.cancel()


def main(argv: list[str] | None = None) -> int:
    """`python guard.py --listen HOST:PORT --upstream HOST:PORT [--max-input-bytes N]`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--max-input-bytes", type=int, default=DEFAULT_MAX_INPUT_BYTES)
    args = parser.parse_args(argv)
    listen_host, listen_port = args.listen.rsplit(":", 1)
    up_host, up_port = args.upstream.rsplit(":", 1)
    proxy = GuardProxy(up_host, int(up_port), args.max_input_bytes)
    try:
        import uvloop  # optional: a faster event loop when installed
        run = uvloop.run
    except ImportError:
        run = asyncio.run
    try:
        run(_serve(listen_host, int(listen_port), proxy))
    except OSError as exc:
        print(f"hps guard: cannot listen on {args.listen}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
