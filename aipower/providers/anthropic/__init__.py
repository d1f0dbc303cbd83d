"""Anthropic Messages wire (POST /v1/messages): request, response, stream and error translation. Providers layer.

https://docs.anthropic.com/en/api/messages ; the field-by-field decisions are in docs/providers/anthropic.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import orjson

from aipower.catalog import Target
from aipower.errors import UpstreamError
from aipower.messages import ChatRequest, ChatResponse, StreamEvent
from aipower.providers.anthropic.request import API_VERSION, build_body
from aipower.providers.anthropic.response import error_from_body, parse_message
from aipower.providers.anthropic.stream import parse_events
from aipower.providers.base import Adapter, UpstreamRequest, retry_after_seconds
from aipower.sse import SseEvent

__all__ = ["AnthropicMessages"]


class AnthropicMessages(Adapter):
    def build_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        headers = {
            "x-api-key": target.api_key,
            "anthropic-version": API_VERSION,
            "content-type": "application/json",
        }
        body = orjson.dumps(build_body(request, target.model))
        return UpstreamRequest(url=f"{target.base_url.rstrip('/')}/v1/messages", headers=headers, body=body)

    def parse_response(self, body: bytes) -> ChatResponse:
        try:
            return parse_message(orjson.loads(body))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise self.unreadable("a response that is not a message") from None

    def parse_stream(self, events: AsyncIterator[SseEvent]) -> AsyncIterator[StreamEvent]:
        return parse_events(self, events)

    def parse_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        return error_from_body(self.provider, status, body, retry_after_seconds(headers))
