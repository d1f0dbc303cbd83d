"""PostgreSQL and Redis for the bench: a fresh database and a private Redis key prefix, both removed afterwards.

`python -m bench --backend postgres --redis` uses them for one run; `python -m bench backends` runs the default
table on the embedded defaults (SQLite, in-process limits) and on PostgreSQL + Redis with 1 and 2 processes in
one session and prints the per-process ratio (issue 8's target: at least 70% of the embedded figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
from dataclasses import dataclass

import asyncpg
import redis

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
_DELETE_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Backend:
    """Environment for `aipower serve` naming the database and the limiter (empty: the embedded defaults)."""

    label: str
    env: dict[str, str]


async def _admin(statement: str, admin_url: str) -> None:
    connection = await asyncpg.connect(admin_url, timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def postgres_database(stack: contextlib.ExitStack, admin_url: str = POSTGRES_ADMIN) -> str:
    """CREATE DATABASE aipower_bench_<random>; dropped (WITH FORCE) when `stack` closes. Returns its URL."""
    name = f"aipower_bench_{secrets.token_hex(4)}"
    asyncio.run(_admin(f"CREATE DATABASE {name}", admin_url))
    stack.callback(lambda: asyncio.run(_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", admin_url)))
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def redis_prefix(stack: contextlib.ExitStack, url: str = REDIS_URL) -> str:
    """A private key prefix (bench-<random>:); every key under it is deleted when `stack` closes."""
    prefix = f"bench-{secrets.token_hex(4)}:"
    client = redis.Redis.from_url(url, socket_timeout=10)
    client.ping()
    stack.callback(_delete_prefix, client, prefix)
    return prefix


def _delete_prefix(client: redis.Redis, prefix: str) -> None:
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=_DELETE_BATCH):
            batch.append(key)
            if len(batch) >= _DELETE_BATCH:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
        left = sum(1 for _ in client.scan_iter(match=f"{prefix}*", count=_DELETE_BATCH))
        if left:
            print(f"warning: {left} Redis keys under {prefix} were left behind", file=sys.stderr)
    finally:
        client.close()


def backend(stack: contextlib.ExitStack, database: str, use_redis: bool) -> Backend:
    """The environment for one of: sqlite (the default, a file in the run's temp dir) or postgres; +redis."""
    env: dict[str, str] = {}
    label = "SQLite"
    if database == "postgres":
        env["AIPOWER_DATABASE_URL"] = postgres_database(stack)
        label = "PostgreSQL"
    if use_redis:
        env |= {"AIPOWER_REDIS_URL": REDIS_URL, "AIPOWER_REDIS_PREFIX": redis_prefix(stack)}
        label += " + Redis"
    return Backend(label, env)
