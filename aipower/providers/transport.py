"""The one pooled HTTP client to upstreams: send(), open() for streams, timeouts, cancellation. Providers layer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp

from aipower.errors import UpstreamError
from aipower.providers.base import UpstreamRequest


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    first_byte: float  # until response headers arrive (for non-streamed calls: the whole generation)
    idle: float  # between two body chunks


@dataclass(frozen=True, slots=True)
class RawResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


class StreamHandle:
    """An open upstream response: status and headers known, body still to read."""

    __slots__ = ("_idle", "_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse, idle: float) -> None:
        self._response = response
        self._idle = idle
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        async with asyncio.timeout(self._idle):
            return await self._response.read()

    async def chunks(self, source: str) -> AsyncIterator[bytes]:
        """The body as it arrives. The idle timeout fires between `idle` and 1.125 x `idle` after the last chunk:
        the deadline moves only when less than `idle` is left (moving a timer on every chunk was 5% of the CPU
        of relaying slow streams)."""
        loop = asyncio.get_running_loop()
        content = self._response.content
        idle, allowance = self._idle, self._idle * 1.125
        try:
            async with asyncio.timeout(allowance) as deadline:
                when = loop.time() + allowance
                while True:
                    chunk = await content.readany()
                    if not chunk:
                        return
                    now = loop.time()
                    if when - now < idle:
                        when = now + allowance
                        deadline.reschedule(when)
                    yield chunk
        except TimeoutError:
            raise _failure(source, f"sent nothing for {self._idle:g}s mid-stream", 502) from None
        except aiohttp.ClientError:
            raise _failure(source, "closed the connection mid-stream", 502) from None

    def close(self) -> None:
        """Drop the connection (not back to the pool): used when the caller goes away mid-stream."""
        self._response.close()


class Transport:
    def __init__(self, timeouts: Timeouts, max_connections: int) -> None:
        self._timeouts = timeouts
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300, keepalive_timeout=30)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeouts.connect)
        # No cookie jar: one client serves every caller, so a cookie a provider sets on one caller's answer would
        # ride along on everyone's later requests (and matching cookies costs every request some CPU).
        jar = aiohttp.DummyCookieJar()
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, cookie_jar=jar)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, request: UpstreamRequest, source: str) -> RawResponse:
        handle = await self.open(request, source)
        try:
            body = await handle.read()
        except TimeoutError:
            raise _failure(source, "did not finish its response in time", 503, retryable=True) from None
        except aiohttp.ClientError:
            raise _failure(source, "closed the connection before the response ended", 502) from None
        finally:
            handle.close()
        return RawResponse(handle.status, handle.headers, body)

    async def open(self, request: UpstreamRequest, source: str) -> StreamHandle:
        assert self._session is not None, "Transport.start() runs in the app lifespan"
        try:
            async with asyncio.timeout(self._timeouts.first_byte):
                response = await self._session.post(request.url, data=request.body, headers=request.headers)
        except aiohttp.ConnectionTimeoutError:  # a TimeoutError too: tell the connect timeout apart
            raise _failure(source, f"could not be connected to within {self._timeouts.connect:g}s", 503, True) from None
        except TimeoutError:
            raise _failure(source, f"did not answer within {self._timeouts.first_byte:g}s", 503, True) from None
        except aiohttp.ClientConnectionError:
            raise _failure(source, "could not be reached", 503, retryable=True) from None
        except aiohttp.ClientError:
            raise _failure(source, "sent a malformed HTTP response", 502) from None
        return StreamHandle(response, self._timeouts.idle)


def _failure(source: str, what: str, status: int, retryable: bool = False) -> UpstreamError:
    return UpstreamError(
        f"{source} {what}.",
        status=status,
        type="service_unavailable" if status == 503 else "upstream_error",
        code="upstream_unavailable" if status == 503 else "upstream_error",
        retryable=retryable,
    )
