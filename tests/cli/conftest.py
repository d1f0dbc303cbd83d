"""CLI helpers: invoke the click group in-process against a fresh database, isolated from the runner's env."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text

from aipower.cli import cli
from aipower.settings import ENV
from aipower.storage import db

Invoke = Callable[..., Result]


def isolated_env(database_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """AIPOWER_DATABASE_URL set; every other aipower setting and provider variable of this process unset."""
    env: dict[str, str | None] = {var: None for var in ENV.values()}
    env.update({k: None for k in os.environ if k.endswith(("_API_KEY", "_BASE_URL"))})
    env["AIPOWER_DATABASE_URL"] = database_url
    env.update(extra or {})
    return env


@pytest.fixture
def invoke(database_url: str) -> Invoke:
    """Run `aipower ARGS` in-process (click's CliRunner, stdout and stderr kept apart)."""

    def run(args: Sequence[str], env: Mapping[str, str] | None = None) -> Result:
        return CliRunner().invoke(cli, list(args), env=isolated_env(database_url, env))

    return run


@pytest.fixture
def email() -> str:
    return f"cli-{secrets.token_hex(4)}@example.com"


def query(database_url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    """Rows of a read-only query, as dicts."""

    async def run() -> list[dict[str, Any]]:
        engine = db.make_engine(database_url)
        try:
            async with engine.connect() as conn:
                result = await conn.execute(text(sql), params)
                return [dict(row._mapping) for row in result]
        finally:
            await engine.dispose()

    return asyncio.run(run())
