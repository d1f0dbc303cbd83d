"""User accounts: create and find by email. Storage layer."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from aipower.storage.tables import users


@dataclass(frozen=True, slots=True)
class User:
    id: int
    email: str
    created_at: dt.datetime


class UserExists(ValueError):
    pass


class UserNotFound(LookupError):
    pass


def normalize_email(email: str) -> str:
    return email.strip().lower()


async def create(engine: AsyncEngine, email: str, trial_calls: int = 0) -> User:
    """A new user with `trial_calls` free calls (the catalog's billing.trial_calls for real sign-ups)."""
    email = normalize_email(email)
    now = dt.datetime.now(dt.UTC)
    values = {"email": email, "created_at": now, "trial_calls_left": trial_calls}
    try:
        async with engine.begin() as conn:
            result = await conn.execute(insert(users).values(**values).returning(users.c.id))
            user_id = result.scalar_one()
    except IntegrityError as exc:
        raise UserExists(f"a user with email {email} already exists") from exc
    return User(id=user_id, email=email, created_at=now)


async def find(engine: AsyncEngine, email: str) -> User:
    email = normalize_email(email)
    async with engine.connect() as conn:
        row = (await conn.execute(select(users).where(users.c.email == email))).first()
    if row is None:
        raise UserNotFound(f"no user with email {email}; create one with `aipower users create {email}`")
    return User(id=row.id, email=row.email, created_at=row.created_at)


async def set_limits(engine: AsyncEngine, email: str, rpm: int | None, tpm: int | None) -> None:
    """Per-user rate limits across all of the user's keys (None = the default, 0 = unlimited)."""
    user = await find(engine, email)
    async with engine.begin() as conn:
        await conn.execute(update(users).where(users.c.id == user.id).values(rpm=rpm, tpm=tpm))
