"""Fixtures for the HTTP API tests: SDK and raw clients for the shared gateway, and one-off gateways."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
import openai
import pytest

from aipower.app import create_app
from tests.conftest import Gateway, make_settings
from tests.fakes.upstream import FakeUpstream
from tests.servers import serve


@pytest.fixture
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.api_key, max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def http(gateway: Gateway) -> Iterator[httpx.Client]:
    """A raw client for bodies the SDK would never send; authenticated unless a test overrides the header."""
    headers = {"Authorization": f"Bearer {gateway.api_key}"}
    with httpx.Client(base_url=gateway.base_url, headers=headers, timeout=10) as raw:
        yield raw


@pytest.fixture
def upstream_url(fake_upstream_server: tuple[FakeUpstream, str]) -> str:
    return fake_upstream_server[1]


@contextlib.contextmanager
def dedicated_client(gateway: Gateway, upstream_url: str, **overrides: object) -> Iterator[openai.OpenAI]:
    """An SDK client for a separate gateway on the same database, built with changed settings."""
    settings = make_settings(gateway.database_url, upstream_url, **overrides)
    with (
        serve(create_app(settings)) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key=gateway.api_key, max_retries=0) as sdk,
    ):
        yield sdk
