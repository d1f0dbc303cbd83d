"""Stored /v1/responses answers, always scoped to their user. Implements gateway ResponseStore. Storage layer."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from aipower.gateway.protocols import StoredResponse
from aipower.storage.tables import responses

MAX_CHAIN = 1000  # previous_response_id hops followed; a longer conversation starts at its newest 1000 turns
t = responses.c


class SqlResponseStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def save(self, response: StoredResponse) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(insert(responses).values(**_row(response)))

    async def find(self, user_id: int, response_id: str) -> StoredResponse | None:
        if "\x00" in response_id:  # no id holds one, and PostgreSQL refuses it in a query: simply not found
            return None
        async with self._engine.connect() as conn:
            return await _find(conn, user_id, response_id)

    async def chain(self, user_id: int, response_id: str) -> list[StoredResponse]:
        found: list[StoredResponse] = []
        if "\x00" in response_id:
            return found
        next_id: str | None = response_id
        async with self._engine.connect() as conn:
            while next_id is not None and len(found) < MAX_CHAIN:
                response = await _find(conn, user_id, next_id)
                if response is None:
                    break  # an ancestor was deleted: the conversation starts after it
                found.append(response)
                next_id = response.previous_response_id
        found.reverse()
        return found

    async def delete(self, user_id: int, response_id: str) -> bool:
        if "\x00" in response_id:
            return False
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(responses).where(t.id == response_id, t.user_id == user_id))
        return bool(result.rowcount)


async def _find(conn: AsyncConnection, user_id: int, response_id: str) -> StoredResponse | None:
    query = select(responses).where(t.id == response_id, t.user_id == user_id)
    row = (await conn.execute(query)).first()
    return None if row is None else _record(row)


def _row(r: StoredResponse) -> dict[str, Any]:
    return {
        "id": r.id,
        "user_id": r.user_id,
        "key_id": r.key_id,
        "model": r.model,
        "status": r.status,
        "created_at": r.created_at,
        "previous_response_id": r.previous_response_id,
        "input_items": r.input_items_json.decode(),
        "output_items": r.output_items_json.decode(),
        "usage": None if r.usage_json is None else r.usage_json.decode(),
        "details": r.details_json.decode(),
    }


def _record(row: Any) -> StoredResponse:
    created = row.created_at
    return StoredResponse(
        id=row.id,
        user_id=row.user_id,
        key_id=row.key_id,
        model=row.model,
        status=row.status,
        created_at=created if created.tzinfo else created.replace(tzinfo=dt.UTC),  # SQLite drops the zone
        previous_response_id=row.previous_response_id,
        input_items_json=row.input_items.encode(),
        output_items_json=row.output_items.encode(),
        usage_json=None if row.usage is None else row.usage.encode(),
        details_json=row.details.encode(),
    )
