"""uvicorn's httptools protocol, sending a response's head and its first body write in one system call.

uvicorn writes the status line and headers as soon as the app sends `http.response.start`, and the body when it
sends `http.response.body`: two sends, two TCP segments, for a response that is ready at once (a completion, an
error). Each send on a socket is a system call, with the kernel's work on both ends (about 20 us of the gateway's
CPU a send here, a tenth of a request's): docs/performance.md. Here the head waits for the next write on the same
connection and both go out together (`writelines`: one `writev`). It never waits longer than the current pass of
the event loop: a stream whose first chunk is not ready yet gets its head at the end of that pass, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HEAD = b"HTTP/1.1 "  # what uvicorn's response head starts with (uvicorn's own STATUS_LINE)
_HEAD_END = b"\r\n\r\n"
Data = bytes | bytearray | memoryview


class HeadWithBodyProtocol(HttpToolsProtocol):
    """`uvicorn.run(http=HeadWithBodyProtocol)`: uvicorn's protocol on a transport that holds a response head back
    until the body's first write (or the end of the loop's pass)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadWithBody(transport, self.loop))

    def eof_received(self) -> None:
        """The caller shut its sending side: the loop closes the transport as this returns, so what is held goes
        out now (a HEAD response's head, say), not at the end of the pass."""
        if isinstance(self.transport, HeadWithBody):
            self.transport.flush()
        super().eof_received()


class HeadWithBody(asyncio.Transport):
    """A transport that sends a written response head together with the write that follows it. Everything else is
    the wrapped transport's; nothing is reordered, and close() sends what is held first."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(None)
        self._transport = transport
        self._loop = loop
        self._held: Data | None = None

    def write(self, data: Data) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.writelines((held, data))
        elif data[:9] == _HEAD and data[-4:] == _HEAD_END:
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Send the held head, if any."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def writelines(self, list_of_data: Iterable[Data]) -> None:
        self.flush()
        self._transport.writelines(list_of_data)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.flush()
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + (len(self._held) if self._held is not None else 0)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()
