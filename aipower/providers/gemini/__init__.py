"""Google Gemini wire: generateContent and streamGenerateContent?alt=sse. Providers layer.

API reference: https://ai.google.dev/api/generate-content . request.py builds bodies, response.py holds the
field mappers shared by whole answers and stream chunks (stream.py). The mapping table is docs/providers/gemini.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import orjson

from aipower.catalog import Target
from aipower.errors import UpstreamError
from aipower.messages import ChatRequest, ChatResponse, Finish, StreamEvent, UsageReport
from aipower.providers.base import Adapter, UpstreamRequest, classify, retry_after_seconds
from aipower.providers.gemini import response as wire
from aipower.providers.gemini.request import build_body
from aipower.providers.gemini.stream import chunk_events
from aipower.sse import SseEvent

API_VERSION = "v1beta"


class Gemini(Adapter):
    def build_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        method = "streamGenerateContent?alt=sse" if request.stream else "generateContent"
        # The key travels in a header, never in the URL: URLs end up in logs.
        headers = {"x-goog-api-key": target.api_key, "Content-Type": "application/json"}
        return UpstreamRequest(
            url=f"{target.base_url}/{API_VERSION}/models/{target.model.upstream}:{method}",
            headers=headers,
            body=orjson.dumps(build_body(request)),
        )

    def parse_response(self, body: bytes) -> ChatResponse:
        try:
            return wire.response(orjson.loads(body))
        except (orjson.JSONDecodeError, wire.Unreadable):
            raise self.unreadable("a response that is not a generateContent answer") from None

    async def parse_stream(self, events: AsyncIterator[SseEvent]) -> AsyncIterator[StreamEvent]:
        calls: dict[int, int] = {}
        started: set[int] = set()
        finished: set[int] = set()
        last_usage = None
        seed: str | None = None
        async for event in events:
            try:
                chunk = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                raise self.unreadable("a stream chunk that is not JSON") from None
            error = wire.error_object(chunk)
            if error is not None:
                raise self._stream_error(error)
            if not isinstance(chunk, dict):
                raise self.unreadable("a stream chunk that is not a JSON object")
            if seed is None:  # every chunk repeats the responseId; the first one's serves the whole stream
                seed = wire.call_id_seed(chunk)
            try:
                stream_events = chunk_events(chunk, calls, seed)
            except wire.Unreadable:
                raise self.unreadable("a stream chunk that is not a generateContent answer") from None
            for stream_event in stream_events:
                if isinstance(stream_event, Finish):
                    finished.add(stream_event.index)
                elif not isinstance(stream_event, UsageReport):
                    started.add(stream_event.index)
                yield stream_event
            if finished:  # usageMetadata before a finishReason is a running count (no candidatesTokenCount yet)
                last_usage = wire.usage(chunk.get("usageMetadata")) or last_usage
        if not finished or not started <= finished:  # cut short: no UsageReport, so the gateway estimates
            raise self.unreadable("a stream that ended before the message did")
        if last_usage is not None:
            yield UsageReport(last_usage)

    def parse_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        try:
            error = wire.error_object(orjson.loads(body))
        except orjson.JSONDecodeError:
            error = None
        if error is None:
            reason = body[:200].decode("utf-8", "replace") if body else "no details given"
            return classify(self.provider, status, reason, retry_after_seconds(headers))
        retry = retry_after_seconds(headers)
        if retry is None:
            retry = wire.retry_delay(error)
        return classify(self.provider, 401 if wire.key_rejected(error) else status, wire.error_reason(error), retry)

    def _stream_error(self, error: wire.Json) -> UpstreamError:
        code = error.get("code")
        status = code if isinstance(code, int) and 400 <= code <= 599 else 500
        return classify(self.provider, status, wire.error_reason(error), wire.retry_delay(error))
