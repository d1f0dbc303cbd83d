"""GET /v1/balance, /v1/usage and /v1/generation/{id}: what a caller has, spent and was charged. API layer."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import orjson
from starlette.requests import Request
from starlette.responses import Response

from aipower.api.auth import own_account
from aipower.api.context import ApiContext
from aipower.errors import InvalidRequest, ModelNotFound
from aipower.gateway.protocols import Balance, LogEntry, UsageRow
from aipower.money import credits_text, usd_text

_DEFAULT_DAYS = 30


async def get_balance(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    caller = own_account(await ctx.auth.caller(request), "/v1/balance")
    return _json(render_balance(await ctx.accounts.balance(caller.user_id), ctx.unlock_nanos))


async def get_usage(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    caller = own_account(await ctx.auth.caller(request), "/v1/usage")
    start, end = _window(request.query_params.get("from"), request.query_params.get("to"))
    group_by = _group_by(request.query_params.get("group_by", "model"))
    rows = await ctx.accounts.usage(caller.user_id, start, end, group_by)
    return _json(
        {
            "object": "list",
            "group_by": group_by,
            "from": start.isoformat(),
            "to": end.isoformat(),
            "data": [_usage_row(row, group_by) for row in rows],
            "total": _usage_row(_total(rows), None),
        }
    )


async def get_generation(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    caller = own_account(await ctx.auth.caller(request), "/v1/generation")
    generation_id = request.path_params["generation_id"]
    entry = await ctx.accounts.generation(caller.user_id, generation_id)
    if entry is None:
        raise ModelNotFound(
            f"No generation '{generation_id}' for this account (ids are the `id` of a completion).",
            code="generation_not_found",
            param="id",
        )
    return _json(render_generation(entry))


def render_balance(balance: Balance, unlock_nanos: int) -> dict[str, Any]:
    cap = balance.daily_cap_nanos
    return {
        "object": "balance",
        "balance_usd": _usd(balance.balance_nanos),
        "balance_credits": orjson.Fragment(credits_text(balance.balance_nanos).encode()),
        "held_usd": _usd(balance.held_nanos),
        "trial_calls_left": balance.trial_calls_left,
        "tier": "paid" if balance.lifetime_topup_nanos >= unlock_nanos else "free",
        "lifetime_topup_usd": _usd(balance.lifetime_topup_nanos),
        "today": {
            "spent_usd": _usd(balance.spent_today_nanos),
            "cap_usd": None if cap is None else _usd(cap),
            "remaining_usd": None if cap is None else _usd(max(0, cap - balance.spent_today_nanos)),
        },
    }


def render_generation(entry: LogEntry) -> dict[str, Any]:
    return {
        "id": entry.request_id,
        "object": "generation",
        "model": entry.model,
        "provider": entry.provider,
        "created": int(entry.created_at.timestamp()),
        "status": entry.status,
        "stream": entry.stream,
        "usage": {
            "prompt_tokens": entry.input_tokens,
            "completion_tokens": entry.output_tokens,
            "total_tokens": entry.input_tokens + entry.output_tokens,
            "cached_tokens": entry.cached_tokens,
            "reasoning_tokens": entry.reasoning_tokens,
            "estimated": entry.estimated,
        },
        "cost_usd": _usd(entry.charged_nanos),
        "list_cost_usd": _usd(entry.cost_nanos),
        "billing": entry.billing_mode,
        "latency_ms": entry.latency_ms,
    }


def _window(start: str | None, end: str | None) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    try:
        until = _date(end, "to") + dt.timedelta(days=1) if end else now
    except OverflowError:  # 9999-12-31: the day after has no date
        raise InvalidRequest("'to' must be a date before 9999-12-31.", param="to", code="invalid_value") from None
    try:
        since = _date(start, "from") if start else until - dt.timedelta(days=_DEFAULT_DAYS)
    except OverflowError:  # to=0001-01-01 and no 'from': 30 days before has no date
        raise InvalidRequest("'to' is too early a date.", param="to", code="invalid_value") from None
    if since >= until:
        raise InvalidRequest("'from' must be before 'to'.", param="from", code="invalid_value")
    return since, until


def _date(value: str, param: str) -> dt.datetime:
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"'{param}' must be a date like 2026-01-31.", param=param, code="invalid_value") from None
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def _group_by(value: str) -> Literal["model", "day"]:
    if value == "model":
        return "model"
    if value == "day":
        return "day"
    raise InvalidRequest("'group_by' must be 'model' or 'day'.", param="group_by", code="invalid_value")


def _total(rows: list[UsageRow]) -> UsageRow:
    return UsageRow(
        group="total",
        calls=sum(r.calls for r in rows),
        input_tokens=sum(r.input_tokens for r in rows),
        output_tokens=sum(r.output_tokens for r in rows),
        cost_nanos=sum(r.cost_nanos for r in rows),
    )


def _usage_row(row: UsageRow, group_by: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {} if group_by is None else {group_by: row.group}
    out.update(
        calls=row.calls,
        prompt_tokens=row.input_tokens,
        completion_tokens=row.output_tokens,
        total_tokens=row.input_tokens + row.output_tokens,
        cost_usd=_usd(row.cost_nanos),
    )
    return out


def _usd(nanos: int) -> orjson.Fragment:
    return orjson.Fragment(usd_text(nanos).encode())


def _json(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")
