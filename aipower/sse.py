"""Server-sent events: decode upstream bytes into events, encode frames for callers. Kernel layer.

Follows the WHATWG event-stream parsing rules (https://html.spec.whatwg.org/multipage/server-sent-events.html):
lines end in CRLF, LF or CR; `data` lines join with LF; a blank line dispatches; `:` lines are comments.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

DONE_FRAME = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class SseEvent:
    data: str
    event: str | None = None
    id: str | None = None


class SseDecoder:
    """Incremental decoder: feed byte chunks, get complete events."""

    __slots__ = ("_buffer", "_data", "_event", "_id")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        buffer = self._buffer + chunk
        if b"\r" in buffer:
            # A lone CR at the very end may be the first half of CRLF: keep it for the next chunk.
            keep_cr = buffer.endswith(b"\r")
            buffer = buffer[:-1] if keep_cr else buffer
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + (b"\r" if keep_cr else b"")
        *lines, self._buffer = buffer.split(b"\n")
        events: list[SseEvent] = []
        for raw in lines:
            event = self._line(raw.decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> SseEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        return None

    def _dispatch(self) -> SseEvent | None:
        if not self._data:
            self._event = None
            return None
        event = SseEvent(data="\n".join(self._data), event=self._event, id=self._id)
        self._data = []
        self._event = None
        return event


async def decode(chunks: AsyncIterator[bytes]) -> AsyncIterator[SseEvent]:
    """Turn a stream of byte chunks into SSE events."""
    decoder = SseDecoder()
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.feed(b"\n\n"):
        yield event


def encode(data: bytes) -> bytes:
    """One `data:` frame; `data` must be a single line (compact JSON is)."""
    return b"data: " + data + b"\n\n"
