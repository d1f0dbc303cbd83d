"""The server protocol `aipower serve` runs: a response's head and body in one send, and nothing held back longer."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from aipower.cli.http_protocol import HeadWithBody, HeadWithBodyProtocol
from tests.servers import serve


class Recorder(asyncio.Transport):
    """What a transport was asked to send, one entry per system call it would make."""

    def __init__(self) -> None:
        super().__init__(None)
        self.sends: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.sends.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.sends.append(b"".join(bytes(d) for d in list_of_data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


async def test_a_head_and_the_body_after_it_go_out_in_one_send() -> None:
    sent = Recorder()
    transport = HeadWithBody(sent, asyncio.get_running_loop())
    transport.write(HEAD)
    assert sent.sends == []
    transport.write(b"{}")
    assert sent.sends == [HEAD + b"{}"]
    await asyncio.sleep(0)  # the end-of-pass flush finds nothing left to send
    transport.write(b"more")
    assert sent.sends == [HEAD + b"{}", b"more"]


async def test_a_head_with_no_write_after_it_goes_out_at_the_end_of_the_loop_pass() -> None:
    sent = Recorder()
    transport = HeadWithBody(sent, asyncio.get_running_loop())
    transport.write(HEAD)
    await asyncio.sleep(0)
    assert sent.sends == [HEAD]


async def test_close_sends_the_held_head_first() -> None:
    sent = Recorder()
    transport = HeadWithBody(sent, asyncio.get_running_loop())
    transport.write(HEAD)
    transport.close()
    assert sent.sends == [HEAD] and sent.closed


async def _slow_stream() -> AsyncIterator[bytes]:
    await asyncio.sleep(1.5)
    yield b"data: late\n\n"


async def _json(request: Request) -> Response:
    return JSONResponse({"n": int(request.query_params.get("n", "0"))})


async def _stream(request: Request) -> Response:
    return StreamingResponse(_slow_stream(), media_type="text/event-stream")


APP = Starlette(routes=[Route("/json", _json, methods=["GET", "HEAD"]), Route("/stream", _stream)])


def serving() -> contextlib.AbstractContextManager[str]:
    """The test app on uvloop with the protocol `aipower serve` uses, in a thread."""
    return serve(APP, loop="uvloop", http=HeadWithBodyProtocol)


def test_responses_on_one_connection_arrive_whole_and_in_order() -> None:
    with serving() as url, httpx.Client(base_url=url, timeout=5) as client:
        assert [client.get("/json", params={"n": n}).json() for n in range(20)] == [{"n": n} for n in range(20)]
        started = time.monotonic()
        head = client.head("/json")  # uvicorn writes no body for HEAD: the head alone must still go out, at once
        assert head.status_code == 200 and head.headers["content-type"] == "application/json"
        assert time.monotonic() - started < 1.0  # not at the keep-alive timeout's close (5 s)


def test_a_stream_gets_its_head_before_its_first_chunk_is_ready() -> None:
    with serving() as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /stream HTTP/1.1\r\nhost: test\r\n\r\n")
            head = sock.recv(65536)
            waited = time.monotonic() - started
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"text/event-stream" in head
            assert b"data: late" not in head
            assert waited < 1.0  # the first chunk comes 1.5 s later; the head did not wait for it
            rest = b""
            while b"data: late" not in rest:
                rest += sock.recv(65536)


def test_a_caller_that_half_closes_after_a_head_request_still_gets_the_head() -> None:
    """`nc -N`, some health checks: the request, then the caller shuts its sending side. uvicorn answers and then
    closes the connection at that end of file; the held head must go out before the close, not be dropped."""
    with serving() as url:
        port = int(url.rsplit(":", 1)[1])
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"HEAD /json HTTP/1.1\r\nhost: test\r\n\r\n")
                sock.shutdown(socket.SHUT_WR)
                received = b""
                while chunk := sock.recv(65536):
                    received += chunk
            assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b"\r\n\r\n")
