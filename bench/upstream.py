"""A fake OpenAI-compatible upstream on raw asyncio + httptools + uvloop, fast enough never to be the bottleneck.

Every POST (any path) gets a fixed chat.completion with usage; `"stream": true` gets 20 chat.completion.chunk
frames, a usage chunk and `data: [DONE]` (chunked transfer encoding, one write per frame). Connections are
kept alive. Run it alone with `python -m bench.upstream --port 9911`; it prints `listening <port>` when ready.

With `--chunk-interval 1 --hold 10` (the slow-streams scenario) a stream instead sends one content chunk a
second and ends (finish, usage, [DONE]) once `--hold` seconds have passed since the *latest* stream began, so
streams opened during a ramp all stay open together for at least `--hold` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from dataclasses import dataclass
from typing import cast

import httptools
import orjson
import uvloop

STREAM_CHUNKS = 20
_CREATED = 1_700_000_000
_USAGE = {"prompt_tokens": 12, "completion_tokens": STREAM_CHUNKS, "total_tokens": 12 + STREAM_CHUNKS}


def _completion_body() -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": _CREATED,
            "model": "deepseek-chat",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": _USAGE,
        }
    )


def _chunk(delta: dict[str, str], finish: str | None) -> dict[str, object]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": "deepseek-chat",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


def _stream_frames() -> tuple[bytes, ...]:
    """The SSE frames of one stream, each already framed as one HTTP/1.1 chunk."""
    events: list[bytes] = []
    for i in range(STREAM_CHUNKS):
        delta = {"role": "assistant", "content": "Hello"} if i == 0 else {"content": f" word{i}"}
        events.append(orjson.dumps(_chunk(delta, "stop" if i == STREAM_CHUNKS - 1 else None)))
    usage = {**_chunk({}, None), "choices": [], "usage": _USAGE}
    events.append(orjson.dumps(usage))
    events.append(b"[DONE]")
    frames = [b"data: " + event + b"\n\n" for event in events]
    return (*(b"%x\r\n%s\r\n" % (len(f), f) for f in frames), b"0\r\n\r\n")


def _json_response() -> bytes:
    body = _completion_body()
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(body)
    return head + b"\r\n" + body


_JSON_RESPONSE = _json_response()
_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_STREAM_FRAMES = _stream_frames()
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
_SLOW_LIMIT = 900.0  # seconds: a slow stream ends by then whatever else happens (every loop bounded)


@dataclass(slots=True)
class SlowStreams:
    """Shared by all connections in slow mode: when the latest stream began, and how many are open."""

    interval: float
    hold: float
    last_start: float = 0.0
    open: int = 0


class _SlowStream:
    """One slow stream: a content chunk every `interval` seconds until `hold` seconds after the latest start."""

    __slots__ = ("_began", "_count", "_protocol", "_slow", "_transport")

    def __init__(self, protocol: UpstreamProtocol, transport: asyncio.Transport, slow: SlowStreams) -> None:
        self._protocol, self._transport, self._slow = protocol, transport, slow
        self._began = slow.last_start = time.monotonic()
        self._count = 0
        slow.open += 1
        transport.write(_STREAM_HEAD)
        self._tick()

    def _tick(self) -> None:
        if self._transport.is_closing():
            self._slow.open -= 1
            return
        now = time.monotonic()
        if self._count > 0 and (now - self._slow.last_start >= self._slow.hold or now - self._began > _SLOW_LIMIT):
            for frame in _STREAM_FRAMES[STREAM_CHUNKS - 1 :]:  # the finish chunk, usage, [DONE], terminator
                self._transport.write(frame)
            self._slow.open -= 1
            self._protocol.finished()
            return
        self._transport.write(_STREAM_FRAMES[min(self._count, STREAM_CHUNKS - 2)])
        self._count += 1
        asyncio.get_running_loop().call_later(self._slow.interval, self._tick)


class UpstreamProtocol(asyncio.Protocol):
    """One keep-alive connection: parse requests with httptools, answer each from precomputed bytes."""

    __slots__ = ("_body", "_parser", "_slow", "_transport")

    def __init__(self, slow: SlowStreams | None = None) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._body: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._slow = slow

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_message_begin(self) -> None:
        self._body = []

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._parser.get_method() != b"POST":
            transport.write(_NOT_FOUND)
        elif _wants_stream(b"".join(self._body)):
            if self._slow is not None:
                _SlowStream(self, transport, self._slow)
                return  # it calls finished() when done
            transport.write(_STREAM_HEAD)
            for frame in _STREAM_FRAMES:
                transport.write(frame)
        else:
            transport.write(_JSON_RESPONSE)
        self.finished()

    def finished(self) -> None:
        if self._transport is not None and not self._parser.should_keep_alive():
            self._transport.close()


def _wants_stream(body: bytes) -> bool:
    if b'"stream"' not in body:
        return False
    try:
        return orjson.loads(body).get("stream") is True
    except orjson.JSONDecodeError:
        return False


async def serve(host: str, port: int, slow: SlowStreams | None = None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: UpstreamProtocol(slow), host, port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening {bound}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--chunk-interval", type=float, default=0.0, help="slow streams: seconds between chunks")
    parser.add_argument("--hold", type=float, default=10.0, help="slow streams: seconds after the latest start [10]")
    args = parser.parse_args(argv)
    slow = SlowStreams(args.chunk_interval, args.hold) if args.chunk_interval > 0 else None
    uvloop.run(serve(args.host, args.port, slow))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
