"""An SSE response that stops the upstream as soon as the caller disconnects. API layer.

Starlette's StreamingResponse only notices a disconnect when it next sends (ASGI spec 2.4); a slow upstream
could then run on for minutes. Here a watcher on `receive` cancels the pump at once, and the frame iterator
(and through it the upstream response) is closed in `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(
        self, frames: AsyncGenerator[bytes, None], headers: Mapping[str, str], close: Callable[[], Awaitable[None]]
    ) -> None:
        """`close` runs last, however the response ends, even if `frames` never started (then its `finally` never
        runs): it settles the call."""
        self._frames = frames
        self._close = close
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no", **headers})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump: asyncio.Future[None] | None = None
        watch: asyncio.Future[None] | None = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            self.raw_headers = []  # sent: not kept for the stream's whole life (about 30 objects per held stream)
            pump = asyncio.ensure_future(self._pump(send))
            watch = asyncio.ensure_future(_wait_disconnect(receive))
            await asyncio.wait((pump, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            tasks = [task for task in (pump, watch) if task is not None]
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
            try:
                await self._frames.aclose()
            finally:
                await self._close()

    async def _pump(self, send: Send) -> None:
        async for frame in self._frames:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
