"""The registry benchmark's HTTP/1.1 client reads every answer shape central may send."""

from __future__ import annotations

import importlib
import socket
import sys
import threading
from collections.abc import Iterator
from types import ModuleType

import pytest

from tests.support import REPO_ROOT


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    try:
        return importlib.import_module("registry")
    finally:
        sys.path.remove(str(REPO_ROOT / "bench"))


class _Server:
    """Loopback server answering each request with the next canned answer, in order."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.accepted = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.answers:
            conn, _ = self.sock.accept()
            self.accepted += 1
            with conn:
                conn.settimeout(10)
                while self.answers:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        piece = conn.recv(65536)
                        if not piece:
                            break
                        data += piece
                    if not data:
                        break
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = next(
                        (
                            int(line.split(b":")[1])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length:")
                        ),
                        0,
                    )
                    while len(body) < length:
                        body += conn.recv(65536)
                    self.requests.append(head + b"\r\n\r\n" + body)
                    answer = self.answers.pop(0)
                    conn.sendall(answer)
                    if b"Connection: close" in answer:
                        break

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def serve() -> Iterator[type[_Server]]:
    servers: list[_Server] = []

    def make(answers: list[bytes]) -> _Server:
        server = _Server(answers)
        servers.append(server)
        return server

    yield make  # type: ignore[misc]
    for server in servers:
        server.close()


def test_reads_lengths_chunks_and_bodiless_answers_on_one_connection(
    bench: ModuleType, serve: type[_Server]
) -> None:
    server = serve(
        [
            b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n",
            b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n',
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        ]
    )
    client = bench.Client(server.port, "tok")
    try:
        assert client.call("POST", "/a", b'{"k":1}', (201,)) == b"hello"
        assert client.call("GET", "/b") == b"abcdefg"
        assert client.call("GET", "/c", expect=(304,)) == b""
        assert client.call("GET", "/d") == b"ok"
    finally:
        client.close()
    assert server.accepted == 1
    first = server.requests[0]
    assert first.startswith(b"POST /a HTTP/1.1\r\n")
    assert b"Authorization: Bearer tok\r\n" in first
    assert b"Content-Type: application/json\r\nContent-Length: 7\r\n" in first
    assert first.endswith(b'\r\n\r\n{"k":1}')
    assert b"Content-Length" not in server.requests[1]


def test_an_unexpected_status_names_it_and_a_closed_connection_is_opened_again(
    bench: ModuleType, serve: type[_Server]
) -> None:
    server = serve(
        [
            b'HTTP/1.1 409 Conflict\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{"e":"dup"}',
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ]
    )
    client = bench.Client(server.port, "tok")
    try:
        with pytest.raises(bench.BenchError, match=r'POST /v: got 409: b\'{"e":"dup"}\''):
            client.call("POST", "/v", b"{}", (201,))
        assert client.call("GET", "/next") == b""
    finally:
        client.close()
    assert server.accepted == 2


def test_an_answer_that_is_not_http_is_refused(bench: ModuleType, serve: type[_Server]) -> None:
    server = serve([b"SSH-2.0-OpenSSH\r\n\r\n"])
    client = bench.Client(server.port, "tok")
    try:
        with pytest.raises(bench.BenchError, match=r"not an HTTP/1\.x status line"):
            client.call("GET", "/")
    finally:
        client.close()
