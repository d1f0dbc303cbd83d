"""ProviderClient: adapter by wire -> transport -> parse; implements gateway.protocols.Upstream. Providers layer."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import replace

import orjson

from aipower import sse
from aipower.catalog import Catalog, Target
from aipower.errors import InvalidRequest, UpstreamError
from aipower.messages import ChatRequest, ChatResponse, StreamEvent
from aipower.providers import WIRE_FORMATS
from aipower.providers.base import Adapter, UpstreamRequest
from aipower.providers.stream_fold import fold
from aipower.providers.transport import Transport


class ProviderClient:
    def __init__(self, catalog: Catalog, transport: Transport) -> None:
        self._transport = transport
        self._adapters: dict[str, Adapter] = {
            pid: WIRE_FORMATS[p.wire](p) for pid, p in catalog.providers.items() if p.wire in WIRE_FORMATS
        }

    async def complete(self, target: Target, request: ChatRequest) -> ChatResponse:
        adapter = self._adapters[target.provider.id]
        if adapter.streams_only(request, target):  # e.g. Qwen's thinking: streamed upstream, one answer back
            return await fold(self.stream(target, replace(request, stream=True, include_usage=True)))
        raw = await self._transport.send(_build(adapter, request, target), target.provider.name)
        if raw.status >= 400:
            raise _redacted(adapter.parse_error(raw.status, raw.body, raw.headers), target)
        return adapter.parse_response(raw.body)

    async def stream(self, target: Target, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        adapter = self._adapters[target.provider.id]
        source = target.provider.name
        handle = await self._transport.open(_build(adapter, request, target), source)
        try:
            if handle.status >= 400:
                raise _redacted(adapter.parse_error(handle.status, await handle.read(), handle.headers), target)
            async for event in adapter.parse_stream(sse.decode(handle.chunks(source))):
                yield event
        except UpstreamError as error:  # an error event in the stream may echo the key too
            raise _redacted(error, target) from None
        finally:
            handle.close()


def _build(adapter: Adapter, request: ChatRequest, target: Target) -> UpstreamRequest:
    """The upstream request; a value no JSON encoder for a provider takes (an integer past 64 bits, which the
    request's parser accepts anywhere, tool schemas and extra fields included) is the caller's 400."""
    try:
        return adapter.build_request(request, target)
    except orjson.JSONEncodeError:
        raise InvalidRequest(
            "The request has a number providers cannot take: integers must fit in 64 bits.", code="invalid_value"
        ) from None


def _redacted(error: UpstreamError, target: Target) -> UpstreamError:
    """The provider key must never reach a caller, even if the upstream echoes it."""
    if target.api_key and target.api_key in error.message:
        error.message = error.message.replace(target.api_key, "[redacted]")
    return error
