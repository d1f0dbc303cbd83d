"""A fake OpenAI-compatible upstream: records every request, replays scripted replies (JSON, raw, SSE).

Speaks the Chat Completions wire (https://platform.openai.com/docs/api-reference/chat). With nothing scripted
it answers like a real provider: a completion, or a stream with a usage chunk when asked for one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass(frozen=True)
class JsonReply:
    body: Any
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RawReply:
    body: bytes
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    media_type: str = "application/json"


@dataclass(frozen=True)
class SseReply:
    """Frames (dicts become `data: {json}`; bytes are sent verbatim); `hang` keeps the stream open afterwards,
    sending an SSE comment every 50 ms unless `silent`."""

    frames: tuple[Any, ...]
    hang: bool = False
    done: bool = True
    silent: bool = False


@dataclass(frozen=True)
class SlowReply:
    """Wait `seconds` before answering (for timeouts)."""

    seconds: float
    then: Any = None


Reply = JsonReply | RawReply | SseReply | SlowReply


class FakeUpstream:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self.stream_closed = threading.Event()
        self.received = threading.Event()  # set when a request arrives
        self.stream_closed_at: float | None = None

    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self.requests.clear()
        self.stream_closed.clear()
        self.received.clear()
        self.stream_closed_at = None

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST"])])

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        recorded = Recorded(request.method, request.url.path, dict(request.headers), body)
        with self._lock:
            self.requests.append(recorded)
            self.received.set()
            reply = self._script.popleft() if self._script else None
        return await self._reply(reply, recorded)

    async def _reply(self, reply: Reply | None, recorded: Recorded) -> Response:
        match reply:
            case None:
                return self._default(recorded)
            case SlowReply(seconds=seconds, then=then):
                await asyncio.sleep(seconds)
                return await self._reply(then, recorded)
            case JsonReply(body=body, status=status, headers=headers):
                return Response(orjson.dumps(body), status, dict(headers), media_type="application/json")
            case RawReply(body=body, status=status, headers=headers, media_type=media_type):
                return Response(body, status, dict(headers), media_type=media_type)
            case SseReply():
                return StreamingResponse(self._frames(reply), media_type="text/event-stream")

    def _default(self, recorded: Recorded) -> Response:
        request = recorded.json
        model = request.get("model", "unknown")
        if request.get("stream"):
            usage = bool((request.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(
                self._frames(SseReply(stream_chunks(model, ["Hel", "lo"], usage))), media_type="text/event-stream"
            )
        return Response(orjson.dumps(completion(model, "Hello from the fake upstream.")), media_type="application/json")

    async def _frames(self, reply: SseReply) -> AsyncIterator[bytes]:
        try:
            for frame in reply.frames:
                yield frame if isinstance(frame, bytes) else b"data: " + orjson.dumps(frame) + b"\n\n"
            if reply.hang:
                while True:
                    if not reply.silent:
                        yield b": keep-alive\n\n"
                    await asyncio.sleep(0.05)
            if reply.done:
                yield b"data: [DONE]\n\n"
        finally:
            self.stream_closed_at = time.monotonic()
            self.stream_closed.set()


def completion(
    model: str,
    text: str,
    *,
    prompt_tokens: int = 12,
    completion_tokens: int = 7,
    tool_calls: list[dict[str, Any]] | None = None,
    finish_reason: str = "stop",
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
        finish_reason = "tool_calls"
    return {
        "id": "chatcmpl-upstream-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def stream_chunks(model: str, pieces: list[str], usage: bool, finish_reason: str = "stop") -> tuple[Any, ...]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-upstream-1",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    frames: list[Any] = [chunk({"role": "assistant", "content": ""})]
    frames += [chunk({"content": p}) for p in pieces]
    frames.append(chunk({}, finish_reason))
    if usage:
        frames.append(
            {
                "id": "chatcmpl-upstream-1",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": model,
                "choices": [],
                "usage": {"prompt_tokens": 9, "completion_tokens": len(pieces), "total_tokens": 9 + len(pieces)},
            }
        )
    return tuple(frames)
