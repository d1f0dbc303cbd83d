"""Client IP resolution: the peer, or the right-most untrusted X-Forwarded-For hop behind trusted proxies."""

from __future__ import annotations

import pytest

from aipower.api.client_ip import client_ip, parse_networks

TRUSTED = parse_networks(["127.0.0.1", "10.0.0.0/8"])


@pytest.mark.parametrize(
    ("peer", "xff", "trusted", "expected"),
    [
        ("198.51.100.9", None, TRUSTED, "198.51.100.9"),
        ("198.51.100.9", "1.2.3.4", TRUSTED, "198.51.100.9"),  # an untrusted peer cannot pick its address
        ("127.0.0.1", "203.0.113.5", TRUSTED, "203.0.113.5"),
        ("127.0.0.1", "6.6.6.6, 203.0.113.5", TRUSTED, "203.0.113.5"),  # the caller's own entry is ignored
        ("127.0.0.1", "203.0.113.5, 10.1.2.3", TRUSTED, "203.0.113.5"),  # through two proxies
        ("127.0.0.1", None, TRUSTED, "127.0.0.1"),
        ("127.0.0.1", "203.0.113.5", (), "127.0.0.1"),  # no trusted proxies configured
        ("127.0.0.1", "garbage", TRUSTED, "garbage"),
    ],
)
def test_client_ip(peer: str, xff: str | None, trusted: tuple[object, ...], expected: str) -> None:
    assert client_ip(peer, xff, trusted) == expected  # type: ignore[arg-type]
