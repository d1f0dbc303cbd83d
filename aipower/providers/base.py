"""The adapter interface every wire format implements, and the shared upstream-status rule. Providers layer."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from aipower.catalog import ProviderSpec, Target
from aipower.errors import UpstreamError
from aipower.messages import ChatRequest, ChatResponse, StreamEvent
from aipower.sse import SseEvent

_MAX_REASON = 300
_SECRETISH = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|Bearer\s+\S+|AIza[0-9A-Za-z_\-]{10,})")


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    url: str
    headers: Mapping[str, str]
    body: bytes


class Adapter(ABC):
    """Pure translation between the internal model and one provider wire format."""

    def __init__(self, provider: ProviderSpec) -> None:
        self.provider = provider

    @abstractmethod
    def build_request(self, request: ChatRequest, target: Target) -> UpstreamRequest: ...

    @abstractmethod
    def parse_response(self, body: bytes) -> ChatResponse: ...

    @abstractmethod
    def parse_stream(self, events: AsyncIterator[SseEvent]) -> AsyncIterator[StreamEvent]: ...

    @abstractmethod
    def parse_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError: ...

    def streams_only(self, request: ChatRequest, target: Target) -> bool:
        """Whether this non-streamed request must be streamed upstream (and folded into one answer)."""
        return False

    def unreadable(self, what: str) -> UpstreamError:
        return UpstreamError(
            f"{self.provider.name} returned {what}.",
            status=502,
            type="upstream_error",
            code="upstream_bad_response",
            retryable=False,
        )


def classify(provider: ProviderSpec, status: int, reason: str, retry_after: int | None) -> UpstreamError:
    """The one rule from an upstream HTTP error status to what the caller sees."""
    name = provider.name
    reason = scrub(reason)
    if status in (400, 409, 413, 422):
        return UpstreamError(
            f"{name} rejected the request: {reason}",
            status=400,
            type="invalid_request_error",
            code="upstream_invalid_request",
            retryable=False,
        )
    if status in (401, 403):
        return UpstreamError(
            f"{name} rejected the gateway's credentials (HTTP {status}); the operator should check "
            f"{' or '.join(provider.key_env)}.",
            status=502,
            type="upstream_error",
            code="upstream_auth_failed",
            retryable=False,
        )
    if status == 429:
        return UpstreamError(
            f"{name} is rate limiting requests: {reason}",
            status=429,
            type="rate_limit_error",
            code="upstream_rate_limited",
            retryable=True,
            retry_after=retry_after,
        )
    if status in (503, 529):
        return UpstreamError(
            f"{name} is overloaded or unavailable (HTTP {status}): {reason}",
            status=503,
            type="service_unavailable",
            code="upstream_unavailable",
            retryable=True,
            retry_after=retry_after,
        )
    return UpstreamError(
        f"{name} answered HTTP {status}: {reason}",
        status=502,
        type="upstream_error",
        code="upstream_error",
        retryable=status in (500, 502, 504),
    )


def scrub(text: str) -> str:
    """An upstream reason made safe to show: no credentials, one line, bounded length."""
    text = _SECRETISH.sub("[redacted]", " ".join(text.split()))
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def retry_after_seconds(headers: Mapping[str, str]) -> int | None:
    value = headers.get("retry-after") or headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0, int(float(value) + 0.999))
    except ValueError:
        return None
