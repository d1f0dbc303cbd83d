"""aipower/storage/responses.py on both database backends: save, find, chain, delete, always per user."""

from __future__ import annotations

import datetime as dt
import secrets

from sqlalchemy.ext.asyncio import AsyncEngine

from aipower.gateway.protocols import StoredResponse
from aipower.storage import users as user_store
from aipower.storage.responses import SqlResponseStore

T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


async def new_user(engine: AsyncEngine) -> int:
    return (await user_store.create(engine, f"resp-{secrets.token_hex(6)}@example.com")).id


def record(user_id: int, previous: str | None = None, usage: bytes | None = b'{"total_tokens":3}') -> StoredResponse:
    return StoredResponse(
        id="resp_" + secrets.token_hex(24),
        user_id=user_id,
        key_id="key1",
        model="deepseek/deepseek-chat",
        status="completed",
        created_at=T0,
        previous_response_id=previous,
        input_items_json=b'[{"id":"msg_1","type":"message","role":"user","content":[]}]',
        output_items_json=b"[]",
        usage_json=usage,
        details_json=b'{"metadata":{"a":"\xc3\xa9"}}',
    )


async def test_saved_response_comes_back_identical(engine: AsyncEngine) -> None:
    store = SqlResponseStore(engine)
    user = await new_user(engine)
    saved, no_usage = record(user), record(user, usage=None)
    await store.save(saved)
    await store.save(no_usage)
    assert await store.find(user, saved.id) == saved
    assert await store.find(user, no_usage.id) == no_usage


async def test_another_user_sees_nothing(engine: AsyncEngine) -> None:
    store = SqlResponseStore(engine)
    owner, other = await new_user(engine), await new_user(engine)
    saved = record(owner)
    await store.save(saved)
    assert await store.find(other, saved.id) is None
    assert await store.chain(other, saved.id) == []
    assert await store.delete(other, saved.id) is False
    assert await store.find(owner, saved.id) == saved


async def test_chain_is_oldest_first_and_stops_at_a_deleted_ancestor(engine: AsyncEngine) -> None:
    store = SqlResponseStore(engine)
    user = await new_user(engine)
    first = record(user)
    second = record(user, first.id)
    third = record(user, second.id)
    for saved in (first, second, third):
        await store.save(saved)
    assert [r.id for r in await store.chain(user, third.id)] == [first.id, second.id, third.id]
    assert await store.delete(user, first.id) is True
    assert await store.delete(user, first.id) is False
    assert [r.id for r in await store.chain(user, third.id)] == [second.id, third.id]
    assert await store.chain(user, first.id) == []
