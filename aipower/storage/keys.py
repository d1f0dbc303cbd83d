"""API keys: stored as SHA-256 digests; create, find by digest, list, revoke. Implements gateway KeyStore."""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from aipower.errors import UpstreamUnavailable
from aipower.gateway import keys as key_format
from aipower.gateway.protocols import Caller, Limits
from aipower.storage.tables import api_keys, users

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    user_id: int
    name: str
    prefix: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None


class KeyNotFound(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class KeyRestriction:
    expires_at: dt.datetime | None = None
    allowed_models: frozenset[str] | None = None
    spend_limit_nanos: int | None = None


async def create(engine: AsyncEngine, user_id: int, name: str) -> tuple[str, KeyRecord]:
    """A new key: the secret (shown once) and its stored record."""
    secret = key_format.new_key()
    record = KeyRecord(
        id=key_format.new_key_id(),
        user_id=user_id,
        name=name,
        prefix=key_format.display_prefix(secret),
        created_at=dt.datetime.now(dt.UTC),
        last_used_at=None,
        revoked_at=None,
    )
    async with engine.begin() as conn:
        await conn.execute(
            insert(api_keys).values(
                id=record.id,
                user_id=user_id,
                name=name,
                digest=key_format.digest(secret),
                prefix=record.prefix,
                created_at=record.created_at,
            )
        )
    return secret, record


async def list_for_user(engine: AsyncEngine, user_id: int) -> list[KeyRecord]:
    query = select(api_keys).where(api_keys.c.user_id == user_id).order_by(api_keys.c.created_at)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [KeyRecord(r.id, r.user_id, r.name, r.prefix, r.created_at, r.last_used_at, r.revoked_at) for r in rows]


async def revoke(engine: AsyncEngine, key_id: str) -> None:
    now = dt.datetime.now(dt.UTC)
    async with engine.begin() as conn:
        result = await conn.execute(
            update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)).values(revoked_at=now)
        )
        if result.rowcount == 0:
            exists = (await conn.execute(select(api_keys.c.id).where(api_keys.c.id == key_id))).first()
            if exists is None:
                raise KeyNotFound(f"no key with id {key_id}")


class SqlKeyStore:
    """KeyStore on the api_keys table."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        k, u = api_keys.c, users.c
        self._query = select(
            k.id,
            k.user_id,
            k.revoked_at,
            k.expires_at,
            k.allowed_models,
            k.rpm,
            k.tpm,
            u.rpm.label("user_rpm"),
            u.tpm.label("user_tpm"),
            u.lifetime_topup_nanos,  # routing's free-tier check, without another query per request
            k.spend_limit_nanos,  # these two: which spare holds a call may use (storage.ledger_spares)
            u.daily_cap_nanos,
        ).join_from(api_keys, users, users.c.id == k.user_id)

    async def find(self, digest: str) -> Caller | None:
        """The key's caller, None if unknown; 503 `auth_unavailable` (which SDKs retry) if the database cannot say."""
        try:
            async with self._engine.connect() as conn:
                row = (await conn.execute(self._query.where(api_keys.c.digest == digest))).first()
        except (SQLAlchemyError, OSError):
            logger.warning("keys: the key lookup failed", exc_info=True)  # no values: engines hide parameters
            raise UpstreamUnavailable(
                "The gateway cannot check API keys right now (its database did not answer); try again shortly.",
                code="auth_unavailable",
            ) from None
        if row is None:
            return None
        return Caller(
            key_id=row.id,
            user_id=row.user_id,
            revoked=row.revoked_at is not None,
            expires_at=_utc(row.expires_at),
            allowed_models=frozenset(json.loads(row.allowed_models)) if row.allowed_models else None,
            limits=Limits(row.rpm, row.tpm, row.user_rpm, row.user_tpm),
            lifetime_topup_nanos=row.lifetime_topup_nanos,
            spend_limit_nanos=row.spend_limit_nanos,
            daily_cap_nanos=row.daily_cap_nanos,
        )


DEMO_EMAIL = "demo@aipower.invalid"


async def sync_demo_key(engine: AsyncEngine, secret: str) -> None:
    """Make the configured demo key ("" for none) the only live key on the demo account, at every start: a demo key
    turned off or changed is revoked (it would otherwise go on working as an ordinary key on that account), and the
    configured one is created, or live again if it was revoked. Idempotent and safe to race."""
    digest = key_format.digest(secret) if secret else None
    demo_user = select(users.c.id).where(users.c.email == DEMO_EMAIL).scalar_subquery()
    others = api_keys.c.digest != digest if digest else api_keys.c.digest.is_not(None)
    async with engine.begin() as conn:
        await conn.execute(
            update(api_keys)
            .where(api_keys.c.user_id == demo_user, api_keys.c.revoked_at.is_(None), others)
            .values(revoked_at=dt.datetime.now(dt.UTC))
        )
        if digest:
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.user_id == demo_user, api_keys.c.digest == digest)
                .values(revoked_at=None)
            )
    if secret:
        await _ensure_demo_key(engine, secret)


async def _ensure_demo_key(engine: AsyncEngine, secret: str) -> None:
    """The public demo key and the account its calls are recorded against (idempotent, safe to race)."""
    digest = key_format.digest(secret)
    async with engine.connect() as conn:
        if (await conn.execute(select(api_keys.c.id).where(api_keys.c.digest == digest))).first() is not None:
            return
    try:
        async with engine.begin() as conn:
            user_id = (await conn.execute(select(users.c.id).where(users.c.email == DEMO_EMAIL))).scalar()
            if user_id is None:
                created = await conn.execute(
                    insert(users).values(email=DEMO_EMAIL, created_at=dt.datetime.now(dt.UTC)).returning(users.c.id)
                )
                user_id = created.scalar_one()
            await conn.execute(
                insert(api_keys).values(
                    id=key_format.new_key_id(),
                    user_id=user_id,
                    name="public demo",
                    digest=digest,
                    prefix=key_format.display_prefix(secret),
                    created_at=dt.datetime.now(dt.UTC),
                )
            )
    except IntegrityError:
        return  # another process created it first


async def set_limits(engine: AsyncEngine, key_id: str, rpm: int | None, tpm: int | None) -> None:
    """Per-key rate limits (None = the default, 0 = unlimited)."""
    async with engine.begin() as conn:
        result = await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(rpm=rpm, tpm=tpm))
        if result.rowcount == 0:
            raise KeyNotFound(f"no key with id {key_id}")


async def restrict(engine: AsyncEngine, key_id: str, restriction: KeyRestriction) -> None:
    """Set a key's expiry, allowed models and spend limit (None clears each)."""
    values = {
        "expires_at": restriction.expires_at,
        "allowed_models": json.dumps(sorted(restriction.allowed_models)) if restriction.allowed_models else None,
        "spend_limit_nanos": restriction.spend_limit_nanos,
    }
    async with engine.begin() as conn:
        result = await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(**values))
        if result.rowcount == 0:
            raise KeyNotFound(f"no key with id {key_id}")


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes: they were stored as UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value
