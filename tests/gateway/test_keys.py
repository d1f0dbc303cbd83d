"""aipower/gateway/keys.py: the API key format, its digest, the shape check and the display prefix."""

from __future__ import annotations

import hashlib
import re

import pytest

from aipower.gateway.keys import KEY_PREFIX, digest, display_prefix, is_well_formed, new_key, new_key_id


def test_new_keys_have_the_prefix_and_256_bits_of_urlsafe_secret() -> None:
    keys = {new_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert re.fullmatch(r"sk-aipower-[A-Za-z0-9_\-]{43}", key), key
        assert is_well_formed(key)


def test_digest_is_sha256_hex() -> None:
    assert digest("sk-aipower-abc") == hashlib.sha256(b"sk-aipower-abc").hexdigest()
    assert digest("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert digest("sk-aipower-abc") != digest("sk-aipower-abd")
    assert re.fullmatch(r"[0-9a-f]{64}", digest(new_key()))


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("sk-aipower-abc", True),
        ("sk-aipower-" + "x" * 200, True),
        ("sk-aipower-" + "x" * 201, False),  # absurdly long
        ("sk-aipower-", False),  # nothing after the prefix
        ("sk-abc123", False),  # a provider's key, not ours
        ("SK-AIPOWER-abc", False),
        ("xx-aipower-abc", False),
        ("sk-aipower-abc def\n", False),  # control characters
        ("sk-aipower-clé", False),  # non-ASCII
        ("", False),
    ],
)
def test_is_well_formed(key: str, ok: bool) -> None:
    assert is_well_formed(key) is ok


def test_display_prefix_shows_only_the_first_characters() -> None:
    key = KEY_PREFIX + "abcdefSECRETPART"
    assert display_prefix(key) == "sk-aipower-abcdef..."
    assert "SECRET" not in display_prefix(key)
    assert len(display_prefix(new_key())) == len(KEY_PREFIX) + 6 + 3


def test_key_ids_are_unique_and_not_secret_shaped() -> None:
    ids = {new_key_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"key_[0-9a-f]{16}", i) for i in ids)
    assert not any(is_well_formed(i) for i in ids)
