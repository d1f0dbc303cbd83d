"""EventStreamResponse always ends with the session's close(), however the response ends: that settles the call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest
from starlette.types import Message

from aipower.api.event_stream import EventStreamResponse


class Session:
    """What the response needs of a stream session: frames, and a close() that must run exactly once."""

    def __init__(self) -> None:
        self.started = False
        self.closes = 0

    async def frames(self) -> AsyncGenerator[bytes, None]:
        self.started = True
        for n in range(3):
            yield b"data: %d\n\n" % n

    async def close(self) -> None:
        self.closes += 1


async def never_disconnects() -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def test_a_stream_sent_to_the_end_is_closed_once() -> None:
    session, sent = Session(), []

    async def send(message: Message) -> None:
        sent.append(message)

    await EventStreamResponse(session.frames(), {}, session.close)({"type": "http"}, never_disconnects, send)
    assert [m.get("body") for m in sent[1:]] == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b""]
    assert session.closes == 1


async def test_a_head_that_cannot_be_sent_still_closes_the_session() -> None:
    """The caller is gone before the head is out: the frames never start, and their `finally` never runs."""
    session = Session()

    async def send(message: Message) -> None:
        raise OSError("connection reset")

    with pytest.raises(OSError, match="reset"):
        await EventStreamResponse(session.frames(), {}, session.close)({"type": "http"}, never_disconnects, send)
    assert (session.started, session.closes) == (False, 1)


async def test_a_caller_that_resets_while_the_first_frame_waits_closes_the_session() -> None:
    """HTTP/2: the caller resets its stream while the first body write waits for the connection's window."""
    session, reset = Session(), asyncio.Event()

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            reset.set()
            await asyncio.Event().wait()  # the connection's window stays shut

    async def receive() -> Message:
        await reset.wait()
        return {"type": "http.disconnect"}

    await EventStreamResponse(session.frames(), {}, session.close)({"type": "http"}, receive, send)
    assert session.closes == 1
