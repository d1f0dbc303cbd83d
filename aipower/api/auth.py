"""Bearer key -> Caller, with a short-lived cache of known keys. API layer."""

from __future__ import annotations

import time
from collections.abc import Mapping

from aipower.errors import AuthenticationFailed
from aipower.gateway import keys as key_format
from aipower.gateway.protocols import Caller, KeyStore

_MAX_CACHED = 10_000


class Authenticator:
    """Resolves API keys. Found keys are cached for `ttl` seconds, so a revocation takes effect within ttl."""

    def __init__(self, store: KeyStore, ttl: float) -> None:
        self._store = store
        self._ttl = ttl
        self._cache: dict[str, tuple[Caller, float]] = {}

    async def authenticate(self, headers: Mapping[str, str]) -> Caller:
        key = _bearer(headers.get("authorization"))
        digest = key_format.digest(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            caller = cached[0]
        else:
            found = await self._store.find(digest)
            if found is None:
                raise AuthenticationFailed(
                    "Incorrect API key provided. Check it for typos, or ask the operator for a new one "
                    "(`aipower keys create EMAIL`).",
                    code="invalid_api_key",
                )
            caller = found
            self._remember(digest, caller, now)
        if caller.revoked:
            raise AuthenticationFailed(
                "This API key has been revoked. Use another key, or ask the operator for a new one.",
                code="revoked_api_key",
            )
        return caller

    def _remember(self, digest: str, caller: Caller, now: float) -> None:
        if self._ttl <= 0:
            return
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[digest] = (caller, now + self._ttl)


def _bearer(header: str | None) -> str:
    if not header:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it in the Authorization header: "
            "'Authorization: Bearer sk-aipower-...'.",
            code="missing_api_key",
        )
    scheme, _, key = header.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise AuthenticationFailed(
            "Malformed Authorization header: expected 'Bearer <your API key>'.", code="malformed_authorization"
        )
    if not key_format.is_well_formed(key):
        raise AuthenticationFailed(
            f"Malformed API key: aipower keys start with '{key_format.KEY_PREFIX}'.", code="malformed_api_key"
        )
    return key
