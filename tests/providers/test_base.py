"""aipower/providers/base.py: the upstream-status rule, reason scrubbing and Retry-After parsing."""

from __future__ import annotations

import pytest

from aipower.catalog import Catalog, ProviderSpec, load
from aipower.providers.base import classify, retry_after_seconds, scrub


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load()


@pytest.fixture
def qwen(catalog: Catalog) -> ProviderSpec:
    return catalog.providers["qwen"]


@pytest.mark.parametrize(
    ("upstream_status", "status", "code", "retryable"),
    [
        (400, 400, "upstream_invalid_request", False),
        (409, 400, "upstream_invalid_request", False),
        (413, 400, "upstream_invalid_request", False),
        (422, 400, "upstream_invalid_request", False),
        (401, 502, "upstream_auth_failed", False),
        (403, 502, "upstream_auth_failed", False),
        (404, 502, "upstream_error", False),
        (429, 429, "upstream_rate_limited", True),
        (500, 502, "upstream_error", True),
        (502, 502, "upstream_error", True),
        (504, 502, "upstream_error", True),
        (501, 502, "upstream_error", False),
        (503, 503, "upstream_unavailable", True),
        (529, 503, "upstream_unavailable", True),
    ],
)
def test_classify_status_table(
    qwen: ProviderSpec, upstream_status: int, status: int, code: str, retryable: bool
) -> None:
    error = classify(qwen, upstream_status, "why", retry_after=None)
    assert (error.status, error.code, error.retryable) == (status, code, retryable)
    assert qwen.name in error.message


def test_auth_failure_names_every_key_variable_and_not_the_reason(qwen: ProviderSpec) -> None:
    error = classify(qwen, 401, "Incorrect API key provided: sk-abcdef123456", None)
    assert "QWEN_API_KEY or DASHSCOPE_API_KEY" in error.message
    assert "sk-abcdef" not in error.message


def test_rate_limit_keeps_retry_after(qwen: ProviderSpec) -> None:
    error = classify(qwen, 429, "slow down", retry_after=7)
    assert error.retry_after == 7
    assert "slow down" in error.message


@pytest.mark.parametrize(
    ("text", "leaked"),
    [
        ("Incorrect API key provided: sk-proj-abcDEF_123-xyz.", "sk-proj-abcDEF_123-xyz"),
        ("header was Bearer abc.def.ghi rejected", "abc.def.ghi"),
        ("key=AIzaSyA1234567890abcdefg is invalid", "AIzaSyA1234567890abcdefg"),
    ],
)
def test_scrub_removes_credentials(text: str, leaked: str) -> None:
    cleaned = scrub(text)
    assert leaked not in cleaned
    assert "[redacted]" in cleaned


def test_scrub_makes_one_bounded_line() -> None:
    assert scrub("line one\n  line\ttwo ") == "line one line two"
    long = scrub("x" * 1000)
    assert len(long) == 300 and long.endswith("...")
    assert scrub("y" * 300) == "y" * 300


def test_classify_scrubs_the_reason(qwen: ProviderSpec) -> None:
    error = classify(qwen, 400, "bad request for key sk-live-0123456789", None)
    assert "sk-live-0123456789" not in error.message
    assert "[redacted]" in error.message


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "12"}, 12),
        ({"Retry-After": "3"}, 3),
        ({"retry-after": "1.2"}, 2),  # fractional seconds round up
        ({"retry-after": "0"}, 0),
        ({"retry-after": "-5"}, 0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),  # HTTP dates are not trusted
    ],
)
def test_retry_after_seconds(headers: dict[str, str], expected: int | None) -> None:
    assert retry_after_seconds(headers) == expected
