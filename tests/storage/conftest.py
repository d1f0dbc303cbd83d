"""Fixtures shared by the storage tests that run against real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_service import new_prefix, prefix_cleanup, require_redis


@pytest.fixture
def prefix() -> Iterator[str]:
    """A fresh Redis key prefix for one test; its keys are deleted afterwards."""
    require_redis()
    with prefix_cleanup(new_prefix()) as value:
        yield value
