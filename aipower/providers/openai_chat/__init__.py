"""OpenAI Chat Completions wire: openai, deepseek, qwen, zhipu, moonshot, doubao, minimax. Providers layer.

Request/response shapes: https://platform.openai.com/docs/api-reference/chat ; streaming chunks:
https://platform.openai.com/docs/api-reference/chat-streaming . Per-provider differences are catalog quirks
(`Quirks`, resolved per model at load); what each one does to every field: docs/providers/openai-compatible.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import orjson

from aipower.catalog import Target
from aipower.errors import UpstreamError
from aipower.messages import ChatRequest, ChatResponse, StreamEvent
from aipower.providers.base import Adapter, UpstreamRequest, classify, retry_after_seconds
from aipower.providers.openai_chat.request import apply_quirks, check_request, render_body, thinks
from aipower.providers.openai_chat.response import (
    FAILED,
    Interrupted,
    Json,
    error_message,
    error_status,
    parse_choice,
    parse_usage,
)
from aipower.providers.openai_chat.stream import StreamState, chunk_events
from aipower.sse import SseEvent

__all__ = ["OpenAIChat", "render_body"]


class OpenAIChat(Adapter):
    def build_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        """The upstream call; InvalidRequest (400, `param` = the field) for what this model cannot do there."""
        quirks = target.model.quirks_at(self.provider)
        check_request(request, quirks, target.model.id)
        body = render_body(request, target.model.upstream, quirks)
        if request.max_tokens is not None:
            body[quirks.max_tokens_field] = request.max_tokens
        if request.stream:
            body["stream"] = True
            if quirks.stream_usage:
                body["stream_options"] = {"include_usage": True}
        apply_quirks(body, quirks, target.model.id)
        headers = {"Authorization": f"Bearer {target.api_key}", "Content-Type": "application/json"}
        return UpstreamRequest(url=f"{target.base_url}/chat/completions", headers=headers, body=orjson.dumps(body))

    def streams_only(self, request: ChatRequest, target: Target) -> bool:
        """Thinking the provider only streams (thinking_streams quirk): a non-streamed call is streamed upstream."""
        quirks = target.model.quirks_at(self.provider)
        return quirks.thinking_streams and not request.stream and thinks(request, quirks)

    def parse_response(self, body: bytes) -> ChatResponse:
        tags = self.provider.quirks.think_tags
        try:
            data = orjson.loads(body)
            choices = tuple(parse_choice(c, tags) for c in data["choices"])
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise self.unreadable("a response that is not a chat completion") from None
        except Interrupted as cut:
            raise self._interrupted(cut) from None
        return ChatResponse(
            choices=choices, usage=parse_usage(data.get("usage")), system_fingerprint=data.get("system_fingerprint")
        )

    async def parse_stream(self, events: AsyncIterator[SseEvent]) -> AsyncIterator[StreamEvent]:
        state = StreamState(self.provider.quirks.think_tags)
        empty = True
        async for event in events:
            empty = False
            if event.data == "[DONE]":
                break
            try:
                chunk = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                raise self.unreadable("a stream chunk that is not JSON") from None
            if not isinstance(chunk, dict):
                raise self.unreadable("a stream chunk that is not a JSON object")
            if chunk.get("error"):  # mapped as the same error before the stream would be (its status from its words)
                raise self._error_from(chunk, status=error_status(chunk))
            try:
                stream_events = chunk_events(chunk, state)
            except Interrupted as cut:
                raise self._interrupted(cut) from None
            for stream_event in stream_events:
                yield stream_event
        if empty:  # e.g. an HTML page or plain text with status 200: not one SSE event in it
            raise self.unreadable("an empty stream or one that is not server-sent events")
        if not state.complete:  # the body closed cleanly mid-answer: an error, as Anthropic's cut streams are
            raise self.unreadable("a stream that ended before the message did")

    def parse_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        reason = error_message(data) or (body[:200].decode("utf-8", "replace") if body else "no details given")
        return classify(self.provider, status, reason, retry_after_seconds(headers))

    def _error_from(self, chunk: Json, status: int) -> UpstreamError:
        return classify(self.provider, status, error_message(chunk) or "error event in stream", None)

    def _interrupted(self, cut: Interrupted) -> UpstreamError:
        return classify(self.provider, FAILED[cut.reason], f"generation stopped with {cut.reason}", None)
