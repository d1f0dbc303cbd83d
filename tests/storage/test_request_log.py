"""aipower/storage/request_log.py on both database backends: buffered rows, key last-used stamps, close()."""

from __future__ import annotations

import datetime as dt
import secrets

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from aipower.gateway.protocols import LogEntry
from aipower.storage import keys as key_store
from aipower.storage import users as user_store
from aipower.storage.request_log import BufferedRequestLog, count, entry_columns, entry_of, recent
from aipower.storage.tables import request_log

T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.fixture
async def key(engine: AsyncEngine) -> tuple[int, str]:
    user = await user_store.create(engine, f"log-{secrets.token_hex(6)}@example.com")
    _, record = await key_store.create(engine, user.id, "log")
    return user.id, record.id


def entry(key: tuple[int, str], request_id: str, at: dt.datetime, **changes: object) -> LogEntry:
    user_id, key_id = key
    values: dict[str, object] = {
        "request_id": request_id,
        "key_id": key_id,
        "user_id": user_id,
        "model": "deepseek/deepseek-chat",
        "provider": "deepseek",
        "stream": False,
        "status": 200,
        "error_code": None,
        "input_tokens": 10,
        "output_tokens": 20,
        "cached_tokens": 3,
        "reasoning_tokens": 4,
        "latency_ms": 123,
        "attempts": 1,
        "created_at": at,
    }
    values.update(changes)
    return LogEntry(**values)  # type: ignore[arg-type]


async def stored(engine: AsyncEngine, request_ids: list[str]) -> list[LogEntry]:
    query = select(*entry_columns()).where(request_log.c.request_id.in_(request_ids)).order_by(request_log.c.id)
    async with engine.connect() as conn:
        return [entry_of(row) for row in (await conn.execute(query)).all()]


def rid() -> str:
    return "req_" + secrets.token_hex(8)


async def last_used(engine: AsyncEngine, key: tuple[int, str]) -> dt.datetime | None:
    [record] = await key_store.list_for_user(engine, key[0])
    value = record.last_used_at
    return value.replace(tzinfo=dt.UTC) if value is not None and value.tzinfo is None else value


async def test_add_buffers_until_flush(engine: AsyncEngine, key: tuple[int, str]) -> None:
    log = BufferedRequestLog(engine)
    ids = [rid(), rid(), rid()]
    entries = [
        entry(key, ids[0], T0),
        entry(key, ids[1], T0 + dt.timedelta(seconds=5), status=503, error_code="upstream_unavailable", provider=None),
        entry(key, ids[2], T0 + dt.timedelta(seconds=2), stream=True, attempts=2),
    ]
    before = await count(engine)
    for e in entries:
        log.add(e)
    assert await stored(engine, ids) == []  # nothing written yet
    await log.flush()
    assert await stored(engine, ids) == entries  # every field round-trips, on both backends
    assert await count(engine) >= before + 3
    assert await last_used(engine, key) == T0 + dt.timedelta(seconds=5)  # the latest of the batch


async def test_flush_with_nothing_pending_writes_nothing(engine: AsyncEngine, key: tuple[int, str]) -> None:
    log = BufferedRequestLog(engine)
    await log.flush()
    assert await last_used(engine, key) is None


async def test_recent_is_newest_first(engine: AsyncEngine, key: tuple[int, str]) -> None:
    log = BufferedRequestLog(engine)
    ids = [rid() for _ in range(3)]
    for i, request_id in enumerate(ids):
        log.add(entry(key, request_id, T0 + dt.timedelta(seconds=i)))
    await log.flush()
    latest = [e.request_id for e in await recent(engine, limit=100) if e.request_id in ids]
    assert latest == list(reversed(ids))
    assert len(await recent(engine, limit=2)) == 2


async def test_close_flushes_what_is_left(engine: AsyncEngine, key: tuple[int, str]) -> None:
    log = BufferedRequestLog(engine, interval=3600)  # the writer task would not wake up by itself
    await log.start()
    request_id = rid()
    log.add(entry(key, request_id, T0))
    await log.close()
    assert [e.request_id for e in await stored(engine, [request_id])] == [request_id]
    assert await last_used(engine, key) == T0


async def test_close_without_start_flushes(engine: AsyncEngine, key: tuple[int, str]) -> None:
    log = BufferedRequestLog(engine)
    request_id = rid()
    log.add(entry(key, request_id, T0))
    await log.close()
    assert len(await stored(engine, [request_id])) == 1


async def test_a_full_batch_wakes_the_writer(engine: AsyncEngine, key: tuple[int, str]) -> None:
    log = BufferedRequestLog(engine, interval=3600, batch=2)
    await log.start()
    try:
        ids = [rid(), rid()]
        for request_id in ids:
            log.add(entry(key, request_id, T0))
        # The writer task flushes on the batch signal, not on its hour-long interval.
        for _ in range(200):
            if len(await stored(engine, ids)) == 2:
                break
        assert len(await stored(engine, ids)) == 2
    finally:
        await log.close()


async def test_a_callers_odd_model_name_is_logged_and_does_not_block_the_rows_after_it(
    engine: AsyncEngine, key: tuple[int, str]
) -> None:
    """The model a caller asked for is its own text: a NUL (which PostgreSQL text cannot hold) or 300 characters
    (the column holds 200) must neither be refused by the database nor keep the rows after it from being written."""
    log = BufferedRequestLog(engine)
    log.add(entry(key, "req-nul", T0, model="a\x00b", status=404, error_code="model_not_found"))
    log.add(entry(key, "req-long", T0, model="m" * 300, status=404, error_code="model_not_found"))
    await log.flush()
    log.add(entry(key, "req-after", T0))
    await log.flush()
    rows = {e.request_id: e.model for e in await recent(engine)}
    assert rows["req-nul"] == "ab"
    assert rows["req-long"] == "m" * 200
    assert rows["req-after"] == "deepseek/deepseek-chat"
