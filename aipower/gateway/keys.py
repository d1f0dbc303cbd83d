"""API key format: generation, digest for lookup, shape check. Pure. Domain layer."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "sk-aipower-"
_SECRET_CHARS = 43  # token_urlsafe(32): 256 bits


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    """SHA-256 hex of the key: keys are high-entropy, so a fast digest is safe to store and index."""
    return hashlib.sha256(key.encode()).hexdigest()


def is_well_formed(key: str) -> bool:
    body = key[len(KEY_PREFIX) :]
    return key.startswith(KEY_PREFIX) and 0 < len(body) <= 200 and body.isascii() and body.isprintable()


def display_prefix(key: str) -> str:
    """What may be shown of a key after creation: its first characters."""
    return key[: len(KEY_PREFIX) + 6] + "..."


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)
