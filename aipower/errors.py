"""The one error tree: every failure a caller can see, with its HTTP status and OpenAI error envelope fields.

Kernel layer. Tree:
    GatewayError
      InvalidRequest            400 invalid_request_error
        RequestTooLarge         413 invalid_request_error / request_too_large
      AuthenticationFailed      401 authentication_error
      InsufficientCredit        402 insufficient_quota
      PermissionDenied          403 permission_error
      ModelNotFound             404 invalid_request_error / model_not_found
      RateLimited               429 rate_limit_error (retry_after)
      UpstreamError             any status; retryable drives failover
      UpstreamFailed            502 upstream_error
      UpstreamUnavailable       503 service_unavailable
        ProviderNotConfigured   503 service_unavailable / provider_not_configured
"""

from __future__ import annotations

from collections.abc import Mapping

from aipower.messages import Usage


class GatewayError(Exception):
    """Base of every error rendered to a caller; fields map 1:1 onto the OpenAI error envelope."""

    status: int = 500
    type: str = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.param = param
        self.retry_after = retry_after
        self.headers: Mapping[str, str] = {}  # extra response headers (e.g. x-ratelimit-*)

    def envelope(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class RequestTooLarge(InvalidRequest):
    status = 413
    default_code = "request_too_large"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class InsufficientCredit(GatewayError):
    status = 402
    type = "insufficient_quota"
    default_code = "insufficient_credits"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    default_code = "permission_denied"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    default_code = "model_not_found"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class UpstreamFailed(GatewayError):
    status = 502
    type = "upstream_error"
    default_code = "upstream_error"


class UpstreamUnavailable(GatewayError):
    status = 503
    type = "service_unavailable"
    default_code = "upstream_unavailable"


class LedgerUnavailable(GatewayError):
    """The ledger cannot take a hold now (its process lost its heartbeat to the database: storage.ledger_owners)."""

    status = 503
    type = "service_unavailable"
    default_code = "ledger_unavailable"


class ProviderNotConfigured(UpstreamUnavailable):
    default_code = "provider_not_configured"


class UpstreamError(GatewayError):
    """An upstream call failed; `status` is what the caller sees, `retryable` decides failover."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        type: str,
        code: str | None,
        retryable: bool,
        retry_after: int | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, code=code, param=param, retry_after=retry_after)
        self.status = status
        self.type = type
        self.retryable = retryable
        # What a stream that failed had already reported (e.g. Anthropic's message_start input_tokens): its input
        # counts are billed as they are, its output is estimated from what was relayed.
        self.usage_so_far: Usage | None = None
