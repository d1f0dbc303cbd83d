"""Shared fixtures: fresh databases on both backends, a fake upstream, a running gateway with a key."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from aipower import catalog as catalog_file
from aipower.app import create_app
from aipower.settings import Settings
from aipower.storage import accounts, db
from aipower.storage import keys as key_store
from aipower.storage import users as user_store
from tests.databases import fresh_database
from tests.fakes.upstream import FakeUpstream
from tests.servers import serve

BACKENDS = ["sqlite", "postgresql"]


@dataclass(frozen=True)
class Gateway:
    base_url: str
    api_key: str
    key_id: str
    database_url: str
    settings: Settings


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fresh_database(request.param, tmp_path_factory.mktemp(request.param)) as url:
        yield url


@pytest.fixture(scope="session")
def fake_upstream_server() -> Iterator[tuple[FakeUpstream, str]]:
    fake = FakeUpstream()
    with serve(fake.app()) as url:
        yield fake, url


@pytest.fixture
def upstream(fake_upstream_server: tuple[FakeUpstream, str]) -> FakeUpstream:
    fake, _ = fake_upstream_server
    fake.reset()
    return fake


def provider_env(upstream_url: str, skip: frozenset[str] = frozenset()) -> dict[str, str]:
    """Every provider pointed at the fake upstream, each with its own recognisable key."""
    env: dict[str, str] = {}
    for pid, provider in catalog_file.load().providers.items():
        if pid in skip:
            continue
        env[provider.key_env[0]] = f"sk-fake-{pid}-secret"
        env[provider.base_url_env] = f"{upstream_url}/{pid}"
    return env


def make_settings(database_url: str, upstream_url: str, **overrides: object) -> Settings:
    base = Settings(
        database_url=database_url,
        key_cache_seconds=0,
        first_byte_timeout=5,
        stream_idle_timeout=5,
        max_body_bytes=1024 * 1024,
        # The shared gateway serves hundreds of calls a minute from one key and one address: limits are off
        # unless a test turns them on (tests/api/test_rate_limits.py).
        default_rpm=0,
        default_tpm=0,
        auth_failures_per_minute=0,
        # Many tests script upstream failures on the shared gateway: its breakers must not open between tests
        # (tests/api/test_failover.py builds gateways with real thresholds).
        breaker_failures=1_000_000,
        provider_env=provider_env(upstream_url, skip=frozenset({"minimax"})),
    )
    return base.with_overrides(**overrides)


def create_key(
    database_url: str, email: str, top_up: Decimal | None = Decimal(1000), trial_calls: int = 0
) -> tuple[str, str]:
    """A key for `email` (created if needed); by default the user has topped up $1000, enough for any model."""

    async def run() -> tuple[str, str]:
        engine = db.make_engine(database_url)
        try:
            try:
                user = await user_store.create(engine, email, trial_calls)
                if top_up is not None:
                    await accounts.top_up(engine, user.id, top_up, catalog_file.load().billing, "test funds")
            except user_store.UserExists:
                user = await user_store.find(engine, email)
            secret, record = await key_store.create(engine, user.id, "test")
            return secret, record.id
        finally:
            await engine.dispose()

    return asyncio.run(run())


@pytest.fixture(scope="session")
def gateway(database_url: str, fake_upstream_server: tuple[FakeUpstream, str]) -> Iterator[Gateway]:
    _, upstream_url = fake_upstream_server
    settings = make_settings(database_url, upstream_url)
    secret, key_id = create_key(database_url, "caller@example.com")
    with serve(create_app(settings)) as url:
        yield Gateway(f"{url}/v1", secret, key_id, database_url, settings)


@pytest.fixture
def tmp_catalog(tmp_path: Path) -> Path:
    return tmp_path / "catalog.toml"
