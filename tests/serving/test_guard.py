"""The HTTP guard front (guard.py): request checks, and the proxy against a small fake upstream."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import pytest

from hps.serving.triton.guard import GuardProxy, check_infer_request


def header(*inputs: dict) -> bytes:
    return json.dumps({"inputs": list(inputs)}).encode()


def test_check_infer_request():
    ok = {"name": "KEYS", "shape": [1, 3], "datatype": "INT64", "data": [[1, 2, 3]]}
    assert check_infer_request(header(ok)) is None
    assert check_infer_request(header({**ok, "shape": [], "data": 5})) is None              # a scalar
    assert check_infer_request(header({**ok, "shape": [1, 0], "data": []})) is None
    assert check_infer_request(b"{}") is None                                                 # Triton answers
    binary = {"name": "KEYS", "shape": [1, 3], "datatype": "INT64", "parameters": {"binary_data_size": 24}}
    assert check_infer_request(header(binary)) is None
    assert "at most 1,000 bytes" in check_infer_request(header({**ok, "shape": [1, 2**40], "data": [1]}), 1000)
    assert "at most" in check_infer_request(header({**binary, "shape": [2**62, 2**62]}))  # no overflow
    assert "at most 48 bytes" in check_infer_request(header(ok, {**ok, "name": "B"}, {**ok, "name": "C"}), 48)
    assert "holds 3 elements but 'data' has 2" in check_infer_request(header({**ok, "data": [1, 2]}))
    assert "but 'data' has more" in check_infer_request(header({**ok, "data": [[1, 2], [3, 4]]}))
    assert "non-negative integers" in check_infer_request(header({**ok, "shape": [1, -3]}))
    assert "non-negative integers" in check_infer_request(header({**ok, "shape": [1, 2.5]}))
    assert "non-negative integers" in check_infer_request(header({**ok, "shape": [True]}))
    assert "non-negative integers" in check_infer_request(header({**ok, "shape": "3"}))
    assert "unknown datatype" in check_infer_request(header({**ok, "datatype": "INT128"}))
    assert "malformed" in check_infer_request(b"{not json")
    assert "malformed" in check_infer_request(b"[" * 100_000)
    assert "JSON object" in check_infer_request(b"[1]")
    assert "'inputs' must be an array" in check_infer_request(b'{"inputs": 3}')


class FakeUpstream:
    """An HTTP/1.1 server on loopback answering every request with its method, path and body length."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        data = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, data = data.split(b"\r\n\r\n", 1)
                lines = head.decode().split("\r\n")
                headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
                length = int(headers.get("content-length", 0))
                while len(data) < length:
                    data += conn.recv(65536)
                body, data = data[:length], data[length:]
                reply = json.dumps({"request": lines[0], "body": len(body),
                                    "expect": headers.get("expect")}).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(reply)).encode() + b"\r\n\r\n" + reply)


@pytest.fixture
def proxy():
    upstream = FakeUpstream()
    loop = asyncio.new_event_loop()
    guard = GuardProxy("127.0.0.1", upstream.port, max_input_bytes=1000)
    server = loop.run_until_complete(asyncio.start_server(guard.handle, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield port
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    upstream.sock.close()


def exchange(sock: socket.socket, request: bytes) -> tuple[int, dict]:
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    if head.startswith(b"HTTP/1.1 100"):
        return exchange(sock, b"") if not body else _parse(body, sock)
    return _parse(data, sock)


def _parse(data: bytes, sock: socket.socket) -> tuple[int, dict]:
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ")[1]), json.loads(body)


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def test_proxy_forwards_checks_and_keeps_the_connection(proxy):
    good = header({"name": "KEYS", "shape": [2], "datatype": "INT64", "data": [1, 2]})
    bomb = header({"name": "KEYS", "shape": [1, 2**40], "datatype": "INT64", "data": [1]})
    with socket.create_connection(("127.0.0.1", proxy)) as sock:
        assert exchange(sock, b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n") == (
            200, {"request": "GET /v2/health/ready HTTP/1.1", "body": 0, "expect": None})
        assert exchange(sock, post("/v2/models/m/infer", good))[1]["body"] == len(good)
        status, answer = exchange(sock, post("/v2/models/m/versions/1/infer", bomb))
        assert status == 400 and "at most 1,000 bytes" in answer["error"]
        # the same connection still works; bodies of other paths are not inference requests
        assert exchange(sock, post("/v2/repository/index", b"{}"))[1]["body"] == 2
        # chunked request bodies are joined; Expect: 100-continue is answered here, not forwarded
        chunked = (b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                   b"Expect: 100-continue\r\n\r\n" + f"{len(good):x}\r\n".encode() + good + b"\r\n0\r\n\r\n")
        assert exchange(sock, chunked)[1] == {"request": "POST /v2/models/m/infer HTTP/1.1", "body": len(good),
                                              "expect": None}
    with socket.create_connection(("127.0.0.1", proxy)) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 400")


def test_proxy_without_upstream_answers_502():
    loop = asyncio.new_event_loop()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()

    async def run() -> bytes:
        server = await asyncio.start_server(GuardProxy("127.0.0.1", port).handle, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await reader.read(4096)
        writer.close()
        server.close()
        return data

    assert loop.run_until_complete(run()).startswith(b"HTTP/1.1 502")
    loop.close()


@pytest.mark.parametrize("datatype,data", [("BOOL", [1]), ("INT64", [1.5]), ("INT32", [True]), ("UINT8", [-1]),
                                           ("FP32", ["x"]), ("BYTES", [3]), ("INT64", [None])])
def test_data_elements_of_the_wrong_json_type_are_refused(datatype, data):
    """Triton 2.51 answers 500 ("attempt to access JSON non-boolean as boolean") for these: client mistakes."""
    header = json.dumps({"inputs": [{"name": "KEYS", "shape": [1], "datatype": datatype, "data": data}]})
    assert "not a " + datatype in check_infer_request(header.encode())


def test_data_elements_of_the_right_json_type_pass():
    for datatype, data in (("BOOL", [True]), ("INT64", [[1], [2]]), ("FP32", [1, 2.5]), ("BYTES", ["a"])):
        shape = [2, 1] if datatype == "INT64" else [len(data)]
        header = json.dumps({"inputs": [{"name": "X", "shape": shape, "datatype": datatype, "data": data}]})
        assert check_infer_request(header.encode()) is None
