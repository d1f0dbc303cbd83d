"""aipower/storage/users.py on both database backends."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from aipower.storage import users as user_store


def unique_email() -> str:
    return f"user-{secrets.token_hex(6)}@example.com"


def utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)  # SQLite hands back naive UTC


async def test_create_then_find(engine: AsyncEngine) -> None:
    email = unique_email()
    before = dt.datetime.now(dt.UTC)
    created = await user_store.create(engine, email)
    assert created.email == email
    assert created.id > 0
    found = await user_store.find(engine, email)
    assert (found.id, found.email) == (created.id, email)
    assert abs(utc(found.created_at) - before) < dt.timedelta(minutes=1)


async def test_emails_are_normalised(engine: AsyncEngine) -> None:
    email = unique_email()
    created = await user_store.create(engine, f"  {email.upper()} ")
    assert created.email == email
    assert (await user_store.find(engine, email.upper())).id == created.id


async def test_ids_are_distinct(engine: AsyncEngine) -> None:
    first = await user_store.create(engine, unique_email())
    second = await user_store.create(engine, unique_email())
    assert first.id != second.id


@pytest.mark.parametrize("variant", [str, str.upper])
async def test_a_duplicate_email_is_refused(engine: AsyncEngine, variant: Callable[[str], str]) -> None:
    email = unique_email()
    await user_store.create(engine, email)
    with pytest.raises(user_store.UserExists, match="already exists"):
        await user_store.create(engine, variant(email))


async def test_an_unknown_email_is_not_found_and_says_how_to_create_it(engine: AsyncEngine) -> None:
    email = unique_email()
    with pytest.raises(user_store.UserNotFound) as raised:
        await user_store.find(engine, email)
    assert f"aipower users create {email}" in str(raised.value)
