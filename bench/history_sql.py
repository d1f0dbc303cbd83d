"""Filling a gateway database with history: users, keys, settled holds, ledger and request-log rows, by SQL.

SQLite: a recursive CTE per table in one transaction on the database file (sqlite3, no ORM). PostgreSQL:
generate_series. Either way the tables' secondary indexes are dropped first and rebuilt after the rows are in
(a sorted build is much faster than 10 million random inserts into a B-tree), then the planner's statistics are
refreshed. SQLite fills through a rollback journal and returns to WAL, so no multi-GB WAL is left to checkpoint.
Rows span the last 365 days; 1% of the history belongs to the bench user (id 1) and its key.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass

import asyncpg

TABLES = ("users", "api_keys", "holds", "ledger", "request_log")
_DAY_SECONDS = 86_400.0


@dataclass(frozen=True, slots=True)
class History:
    rows: int  # request_log rows, and as many ledger rows and settled holds (one of each per call)
    users: int
    keys: int


def _sqlite_statements(h: History, bench_key: str) -> list[str]:
    step = 365.0 / max(h.rows, 1)  # days between calls
    when = f"strftime('%Y-%m-%d %H:%M:%f', julianday('now') - 365 + i * {step!r}) || '000'"
    user = f"CASE WHEN i % 100 = 0 THEN 1 ELSE 2 + i % {h.users} END"
    key = f"CASE WHEN i % 100 = 0 THEN '{bench_key}' ELSE printf('hk%030d', i % {h.keys}) END"
    count = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {}) SELECT {} FROM n"
    return [
        "INSERT INTO users (email, created_at, balance_nanos, lifetime_topup_nanos, trial_calls_left, "
        "spend_day_nanos) "
        + count.format(h.users, f"printf('history-%d@example.com', i), {when}, 10000000000000, 10000000000000, 0, 0"),
        "INSERT INTO api_keys (id, user_id, name, digest, prefix, created_at, spent_nanos) "
        + count.format(
            h.keys,
            f"printf('hk%030d', i - 1), 2 + (i - 1) % {h.users}, 'history', printf('%064d', i), 'sk-hist', {when}, 0",
        ),
        "INSERT INTO holds (id, user_id, key_id, request_id, amount_nanos, mode, spend_day, created_at, "
        "settled_at, charged_nanos) "
        + count.format(
            h.rows,
            f"printf('hh%d', i), {user}, {key}, printf('req-h%d', i), 50000, 'balance', "
            f"substr({when}, 1, 10), {when}, {when}, 12000",
        ),
        "INSERT INTO ledger (user_id, amount_nanos, reason, request_id, note, created_at) "
        + count.format(h.rows, f"{user}, -12000, 'usage', printf('req-h%d', i), NULL, {when}"),
        "INSERT INTO request_log (request_id, key_id, user_id, model, provider, stream, status, error_code, "
        "input_tokens, output_tokens, cached_tokens, reasoning_tokens, latency_ms, attempts, created_at, "
        "cost_nanos, charged_nanos, billing_mode, estimated) "
        + count.format(
            h.rows,
            f"printf('req-h%d', i), {key}, {user}, 'deepseek/deepseek-chat', 'deepseek', "
            f"i % 3 = 0, 200, NULL, 12, 20, 0, 0, 80 + i % 900, 1, {when}, 12000, 12000, 'balance', 0",
        ),
    ]


def fill_sqlite(path: str, history: History, bench_key_id: str) -> float:
    """Insert the history into the SQLite file at `path`; returns the seconds it took."""
    started = time.perf_counter()
    connection = sqlite3.connect(path, isolation_level=None, timeout=60)
    try:
        connection.execute("PRAGMA cache_size = -1000000")  # 1 GB of page cache for the index builds
        placeholders = ",".join("?" * len(TABLES))
        indexes = connection.execute(
            f"SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
            f"AND tbl_name IN ({placeholders})",
            TABLES,
        ).fetchall()
        # A rollback journal while filling: the rows go straight into the file, not into a WAL that the gateway
        # would then have to checkpoint (gigabytes) during its run. The gateway's database runs WAL again after.
        connection.execute("PRAGMA journal_mode = DELETE")
        connection.execute("BEGIN IMMEDIATE")
        for name, _ in indexes:
            connection.execute(f'DROP INDEX "{name}"')
        for statement in _sqlite_statements(history, bench_key_id):
            connection.execute(statement)
        for _, sql in indexes:
            connection.execute(sql)
        connection.execute("COMMIT")
        connection.execute("ANALYZE")
        connection.execute("PRAGMA journal_mode = WAL")
    finally:
        connection.close()
    return time.perf_counter() - started


def _postgres_statements(h: History, bench_key: str) -> list[str]:
    when = f"now() - interval '365 days' + i * interval '{365 * _DAY_SECONDS / max(h.rows, 1)!r} seconds'"
    user = f"CASE WHEN i % 100 = 0 THEN 1 ELSE 2 + i % {h.users} END"
    key = f"CASE WHEN i % 100 = 0 THEN '{bench_key}' ELSE 'hk' || lpad((i % {h.keys})::text, 30, '0') END"
    series = "SELECT {} FROM generate_series(1, {}) AS i"
    return [
        "INSERT INTO users (email, created_at, balance_nanos, lifetime_topup_nanos, trial_calls_left, "
        "spend_day_nanos) "
        + series.format(f"'history-' || i || '@example.com', {when}, 10000000000000, 10000000000000, 0, 0", h.users),
        "INSERT INTO api_keys (id, user_id, name, digest, prefix, created_at, spent_nanos) "
        + series.format(
            f"'hk' || lpad((i - 1)::text, 30, '0'), 2 + (i - 1) % {h.users}, 'history', lpad(i::text, 64, '0'), "
            f"'sk-hist', {when}, 0",
            h.keys,
        ),
        "INSERT INTO holds (id, user_id, key_id, request_id, amount_nanos, mode, spend_day, created_at, "
        "settled_at, charged_nanos) "
        + series.format(
            f"'hh' || i, {user}, {key}, 'req-h' || i, 50000, 'balance', to_char({when}, 'YYYY-MM-DD'), {when}, "
            f"{when}, 12000",
            h.rows,
        ),
        "INSERT INTO ledger (user_id, amount_nanos, reason, request_id, note, created_at) "
        + series.format(f"{user}, -12000, 'usage', 'req-h' || i, NULL, {when}", h.rows),
        "INSERT INTO request_log (request_id, key_id, user_id, model, provider, stream, status, error_code, "
        "input_tokens, output_tokens, cached_tokens, reasoning_tokens, latency_ms, attempts, created_at, "
        "cost_nanos, charged_nanos, billing_mode, estimated) "
        + series.format(
            f"'req-h' || i, {key}, {user}, 'deepseek/deepseek-chat', 'deepseek', i % 3 = 0, 200, NULL, 12, 20, "
            f"0, 0, 80 + i % 900, 1, {when}, 12000, 12000, 'balance', false",
            h.rows,
        ),
    ]


async def _fill_postgres(url: str, history: History, bench_key_id: str) -> None:
    connection = await asyncpg.connect(url, timeout=30)
    try:
        await connection.execute("SET maintenance_work_mem = '1GB'")
        indexes = await connection.fetch(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = 'public' "
            "AND i.tablename = ANY($1::text[]) AND NOT EXISTS (SELECT 1 FROM pg_constraint c "
            "WHERE c.conname = i.indexname)",
            list(TABLES),
        )
        async with connection.transaction():
            for index in indexes:
                await connection.execute(f'DROP INDEX "{index["indexname"]}"')
            for statement in _postgres_statements(history, bench_key_id):
                await connection.execute(statement, timeout=3600)
            for index in indexes:
                await connection.execute(index["indexdef"], timeout=3600)
        await connection.execute("ANALYZE", timeout=3600)
        # the ledger's id sequences moved on with the inserts (identity/serial columns), nothing to fix
    finally:
        await connection.close()


def fill_postgres(url: str, history: History, bench_key_id: str) -> float:
    started = time.perf_counter()
    asyncio.run(_fill_postgres(url, history, bench_key_id))
    return time.perf_counter() - started


def row_counts_sqlite(path: str) -> dict[str, int]:
    connection = sqlite3.connect(path, timeout=60)
    try:
        return {t: int(connection.execute(f"SELECT max(rowid) FROM {t}").fetchone()[0] or 0) for t in TABLES}
    finally:
        connection.close()
