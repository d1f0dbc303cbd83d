"""aipower/storage/keys.py on both database backends: create, list, revoke, find by digest; no secret stored."""

from __future__ import annotations

import datetime as dt
import secrets

import pytest
from sqlalchemy import make_url, select
from sqlalchemy.ext.asyncio import AsyncEngine

from aipower.errors import UpstreamUnavailable
from aipower.gateway import keys as key_format
from aipower.gateway.protocols import Caller
from aipower.storage import db
from aipower.storage import keys as key_store
from aipower.storage import users as user_store
from aipower.storage.tables import api_keys
from tests.databases import POSTGRES


@pytest.fixture
async def user_id(engine: AsyncEngine) -> int:
    return (await user_store.create(engine, f"keys-{secrets.token_hex(6)}@example.com")).id


async def test_create_returns_a_well_formed_secret_and_its_record(engine: AsyncEngine, user_id: int) -> None:
    secret, record = await key_store.create(engine, user_id, "laptop")
    assert key_format.is_well_formed(secret)
    assert record.user_id == user_id
    assert record.name == "laptop"
    assert record.prefix == key_format.display_prefix(secret)
    assert record.id.startswith("key_")
    assert (record.last_used_at, record.revoked_at) == (None, None)


async def test_find_by_digest(engine: AsyncEngine, user_id: int) -> None:
    secret, record = await key_store.create(engine, user_id, "ci")
    store = key_store.SqlKeyStore(engine)
    caller = await store.find(key_format.digest(secret))
    assert caller is not None
    assert (caller.key_id, caller.user_id, caller.revoked) == (record.id, user_id, False)
    assert isinstance(caller, Caller)


async def test_find_needs_the_digest_not_the_key(engine: AsyncEngine, user_id: int) -> None:
    secret, _ = await key_store.create(engine, user_id, "ci")
    store = key_store.SqlKeyStore(engine)
    assert await store.find(secret) is None
    assert await store.find(key_format.digest(secret + "x")) is None
    assert await store.find(key_format.digest(key_format.new_key())) is None


async def test_the_stored_row_never_contains_the_secret(engine: AsyncEngine, user_id: int) -> None:
    secret, record = await key_store.create(engine, user_id, "server")
    async with engine.connect() as conn:
        row = (await conn.execute(select(api_keys).where(api_keys.c.id == record.id))).one()
    body = secret[len(key_format.KEY_PREFIX) :]
    for value in row:
        assert secret not in str(value)
        assert body not in str(value)
        assert body[:12] not in str(value)  # not even a long piece of it
    assert row.digest == key_format.digest(secret)


async def test_list_for_user_in_creation_order(engine: AsyncEngine, user_id: int) -> None:
    other = (await user_store.create(engine, f"other-{secrets.token_hex(6)}@example.com")).id
    _, first = await key_store.create(engine, user_id, "first")
    _, second = await key_store.create(engine, user_id, "second")
    await key_store.create(engine, other, "not mine")
    listed = await key_store.list_for_user(engine, user_id)
    assert [(k.id, k.name, k.prefix) for k in listed] == [
        (first.id, "first", first.prefix),
        (second.id, "second", second.prefix),
    ]
    assert await key_store.list_for_user(engine, 10**9) == []


async def test_revoke_marks_the_key_and_find_reports_it(engine: AsyncEngine, user_id: int) -> None:
    secret, record = await key_store.create(engine, user_id, "old")
    _, kept = await key_store.create(engine, user_id, "kept")
    before = dt.datetime.now(dt.UTC)
    await key_store.revoke(engine, record.id)
    caller = await key_store.SqlKeyStore(engine).find(key_format.digest(secret))
    assert caller is not None and caller.revoked is True
    listed = {k.id: k for k in await key_store.list_for_user(engine, user_id)}
    revoked_at = listed[record.id].revoked_at
    assert revoked_at is not None
    assert abs(revoked_at.replace(tzinfo=dt.UTC) - before) < dt.timedelta(minutes=1)
    assert listed[kept.id].revoked_at is None


async def test_revoking_twice_keeps_the_first_time(engine: AsyncEngine, user_id: int) -> None:
    _, record = await key_store.create(engine, user_id, "twice")
    await key_store.revoke(engine, record.id)
    [first] = await key_store.list_for_user(engine, user_id)
    await key_store.revoke(engine, record.id)
    [second] = await key_store.list_for_user(engine, user_id)
    assert first.revoked_at is not None
    assert second.revoked_at == first.revoked_at


async def test_revoking_an_unknown_key_raises(engine: AsyncEngine) -> None:
    with pytest.raises(key_store.KeyNotFound, match="key_doesnotexist"):
        await key_store.revoke(engine, "key_doesnotexist")


async def test_a_key_lookup_the_database_cannot_answer_is_a_retryable_503() -> None:
    """Not a 500 (and not a 401, which would tell a caller with a good key that it is wrong)."""
    missing = make_url(POSTGRES).set(database="aipower_no_such_database_" + secrets.token_hex(4))
    engine = db.make_engine(missing.render_as_string(hide_password=False))
    try:
        with pytest.raises(UpstreamUnavailable) as caught:
            await key_store.SqlKeyStore(engine).find(key_format.digest("sk-aipower-some-key"))
    finally:
        await engine.dispose()
    assert (caught.value.status, caught.value.code) == (503, "auth_unavailable")
