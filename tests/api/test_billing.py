"""Billing through the running gateway with the official SDK: trial calls, tiers, 402s, caps, key limits, cost."""

from __future__ import annotations

import datetime as dt
import secrets
import time
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from aipower.storage import keys as key_store
from aipower.storage.tables import holds, request_log, users
from tests.billing_helpers import balance_of, billed_calls, grant, ledger_rows, on, top_up, user_id, verify
from tests.conftest import Gateway, create_key
from tests.fakes.upstream import FakeUpstream, JsonReply, RawReply, SlowReply, SseReply, completion, stream_chunks

CHEAP = "deepseek/deepseek-chat"  # 0.34 / 0.50 USD per 1M tokens, free tier
PREMIUM = "openai/gpt-4o-mini"
HELLO = [{"role": "user", "content": "hello"}]
FAKE_COST = 12 * 340 + 7 * 500  # the fake upstream reports 12 prompt and 7 completion tokens


def new_user(gateway: Gateway, top_up_usd: str | None = None, trial_calls: int = 0) -> tuple[str, str, str]:
    email = f"user-{secrets.token_hex(4)}@example.com"
    key, key_id = create_key(
        gateway.database_url, email, Decimal(top_up_usd) if top_up_usd else None, trial_calls=trial_calls
    )
    return email, key, key_id


def client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)


def test_trial_calls_are_free_then_402(gateway: Gateway, upstream: FakeUpstream) -> None:
    email, key, _ = new_user(gateway, trial_calls=3)
    with client(gateway, key) as sdk:
        for _ in range(3):
            reply = sdk.chat.completions.create(model=CHEAP, messages=HELLO)
            assert reply.usage is not None and reply.usage.model_extra == {"cost": 0.0}
        with pytest.raises(openai.APIStatusError) as info:
            sdk.chat.completions.create(model=CHEAP, messages=HELLO)
    assert info.value.status_code == 402
    assert info.value.code == "insufficient_credits"
    assert len(upstream.requests) == 3
    assert ledger_rows(gateway.database_url, email) == [(0, "trial")] * 3
    assert balance_of(gateway.database_url, email).trial_calls_left == 0


def test_premium_model_is_403_on_the_free_tier_even_with_granted_money(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    email, key, _ = new_user(gateway, trial_calls=10)
    grant(gateway.database_url, email, "20")
    with client(gateway, key) as sdk, pytest.raises(openai.PermissionDeniedError) as info:
        sdk.chat.completions.create(model=PREMIUM, messages=HELLO)
    assert info.value.code == "model_not_allowed_on_free_tier"
    assert "$5" in info.value.message
    assert upstream.requests == []
    assert balance_of(gateway.database_url, email).trial_calls_left == 10


def test_five_dollar_topup_unlocks_premium_and_earns_the_first_bonus(gateway: Gateway, upstream: FakeUpstream) -> None:
    email, key, _ = new_user(gateway)
    assert top_up(gateway.database_url, email, "5") == 6_000_000_000  # $5 + 100 credits
    with client(gateway, key) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(model=PREMIUM, messages=HELLO)
    reply = raw.parse()
    cost = 12 * 180 + 7 * 720  # GPT-4o Mini 0.18 / 0.72
    assert Decimal(raw.headers["x-aipower-cost"]) == Decimal(cost).scaleb(-9)
    assert reply.usage is not None and Decimal(str(reply.usage.model_extra["cost"])) == Decimal(cost).scaleb(-9)
    assert balance_of(gateway.database_url, email).balance_nanos == 6_000_000_000 - cost
    assert ledger_rows(gateway.database_url, email)[-1] == (-cost, "usage")
    assert verify(gateway.database_url) == []


def test_402_names_balance_and_estimate_and_charges_nothing(gateway: Gateway, upstream: FakeUpstream) -> None:
    email, key, _ = new_user(gateway, top_up_usd="5")
    before = balance_of(gateway.database_url, email).balance_nanos
    with client(gateway, key) as sdk, pytest.raises(openai.APIStatusError) as info:
        # holds 3 x 128k output tokens at $18/M = $6.91, more than the $6.00 balance
        sdk.chat.completions.create(model="openai/gpt-5", messages=HELLO, n=3)
    assert info.value.status_code == 402
    assert "$6.00" in info.value.message and "max_tokens" in info.value.message
    assert upstream.requests == []
    assert balance_of(gateway.database_url, email).balance_nanos == before


def test_a_failed_upstream_call_costs_nothing(gateway: Gateway, upstream: FakeUpstream) -> None:
    email, key, _ = new_user(gateway, top_up_usd="10")
    before = balance_of(gateway.database_url, email)
    upstream.enqueue(JsonReply({"error": {"message": "boom"}}, status=500))
    with client(gateway, key) as sdk, pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(model=CHEAP, messages=HELLO)
    after = balance_of(gateway.database_url, email)
    assert (after.balance_nanos, after.held_nanos) == (before.balance_nanos, 0)
    assert [r for r in ledger_rows(gateway.database_url, email) if r[1] == "usage"] == []


def test_daily_cap_refuses_before_spending(gateway: Gateway, upstream: FakeUpstream) -> None:
    email, key, _ = new_user(gateway, top_up_usd="10")
    uid = balance_of(gateway.database_url, email).user_id
    from aipower.storage import accounts

    on(gateway.database_url, lambda engine: accounts.set_cap(engine, uid, Decimal("0.00001")))
    with client(gateway, key) as sdk:
        sdk.chat.completions.create(model=CHEAP, messages=HELLO, max_tokens=5)  # holds < $0.00001
        with pytest.raises(openai.APIStatusError) as info:
            sdk.chat.completions.create(model=CHEAP, messages=HELLO, max_tokens=1000)
    assert (info.value.status_code, info.value.code) == (402, "daily_cap_reached")
    assert len(upstream.requests) == 1
    assert balance_of(gateway.database_url, email).spent_today_nanos == FAKE_COST


def test_key_restrictions(gateway: Gateway, upstream: FakeUpstream) -> None:
    _, key, key_id = new_user(gateway, top_up_usd="10")
    restrict = key_store.KeyRestriction
    with client(gateway, key) as sdk:
        on(gateway.database_url, lambda e: key_store.restrict(e, key_id, restrict(allowed_models=frozenset({CHEAP}))))
        sdk.chat.completions.create(model=CHEAP, messages=HELLO)
        with pytest.raises(openai.PermissionDeniedError) as denied:
            sdk.chat.completions.create(model=PREMIUM, messages=HELLO)
        on(gateway.database_url, lambda e: key_store.restrict(e, key_id, restrict(spend_limit_nanos=FAKE_COST + 1)))
        with pytest.raises(openai.APIStatusError) as limited:
            sdk.chat.completions.create(model=CHEAP, messages=HELLO, max_tokens=100)
        past = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
        on(gateway.database_url, lambda e: key_store.restrict(e, key_id, restrict(expires_at=past)))
        with pytest.raises(openai.AuthenticationError) as expired:
            sdk.chat.completions.create(model=CHEAP, messages=HELLO)
    assert denied.value.code == "model_not_allowed_for_key"
    assert (limited.value.status_code, limited.value.code) == (402, "key_spend_limit_reached")
    assert expired.value.code == "key_expired"
    assert len(upstream.requests) == 1


def test_stream_reports_cost_in_the_usage_chunk(gateway: Gateway, upstream: FakeUpstream) -> None:
    email, key, _ = new_user(gateway, top_up_usd="10")
    with client(gateway, key) as sdk:
        chunks = list(
            sdk.chat.completions.create(
                model=CHEAP, messages=HELLO, stream=True, stream_options={"include_usage": True}
            )
        )
    usage = chunks[-1].usage
    assert usage is not None
    cost = 9 * 340 + 2 * 500  # the fake's streamed usage: 9 prompt, 2 completion tokens
    assert Decimal(str(usage.model_extra["cost"])) == Decimal(cost).scaleb(-9)
    assert ledger_rows(gateway.database_url, email)[-1] == (-cost, "usage")


def test_a_stream_cut_by_the_client_is_billed_an_estimate(gateway: Gateway, upstream: FakeUpstream) -> None:
    email, key, _ = new_user(gateway, top_up_usd="10")
    delta = {"role": "assistant", "content": "x" * 400}
    first = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "deepseek-chat",
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }
    upstream.enqueue(SseReply((first,), hang=True))
    calls_before = billed_calls(gateway.database_url, email)
    with httpx.Client(base_url=gateway.base_url, headers={"authorization": f"Bearer {key}"}) as http:
        body = {"model": CHEAP, "messages": HELLO, "stream": True}
        with http.stream("POST", "/chat/completions", json=body) as response:
            next(line for line in response.iter_lines() if line)
    assert upstream.stream_closed.wait(5)
    deadline = dt.datetime.now() + dt.timedelta(seconds=5)
    while billed_calls(gateway.database_url, email) == calls_before and dt.datetime.now() < deadline:
        upstream.stream_closed.wait(0.05)
    rows = ledger_rows(gateway.database_url, email)
    assert rows[-1][1] == "usage" and rows[-1][0] < 0  # ~100 estimated output tokens were charged
    assert -rows[-1][0] >= 100 * 500
    assert balance_of(gateway.database_url, email).held_nanos == 0
    assert verify(gateway.database_url) == []


def test_a_stream_that_fails_before_any_content_costs_nothing(gateway: Gateway, upstream: FakeUpstream) -> None:
    """The upstream sends its role chunk, then an error: the caller got an error frame and no text, a failed call,
    which costs nothing (README, "Billing"), prompt included."""
    email, key, _ = new_user(gateway, top_up_usd="10")
    role_only = stream_chunks("deepseek-chat", [], usage=False)[:1]
    upstream.enqueue(SseReply((*role_only, {"error": {"message": "The model crashed"}}), done=False))
    before = balance_of(gateway.database_url, email)
    with client(gateway, key) as sdk, pytest.raises(openai.APIError) as caught:
        for chunk in sdk.chat.completions.create(model=CHEAP, messages=HELLO * 50, stream=True):
            assert not chunk.choices or not chunk.choices[0].delta.content
    after = balance_of(gateway.database_url, email)
    assert "The model crashed" in caught.value.message
    assert (after.balance_nanos, after.held_nanos) == (before.balance_nanos, 0)
    assert verify(gateway.database_url) == []


def test_balance_usage_and_generation_endpoints(gateway: Gateway, upstream: FakeUpstream) -> None:
    email, key, _ = new_user(gateway, top_up_usd="50", trial_calls=0)
    with client(gateway, key) as sdk:
        reply = sdk.chat.completions.create(model=CHEAP, messages=HELLO)
        sdk.chat.completions.create(model=CHEAP, messages=HELLO)
    with httpx.Client(base_url=gateway.base_url, headers={"authorization": f"Bearer {key}"}) as http:
        balance = http.get("/balance").json()
        usage = http.get("/usage", params={"group_by": "model"}).json()
        by_day = http.get("/usage", params={"group_by": "day"}).json()
        generation = http.get(f"/generation/{reply.id}").json()
        missing = http.get("/generation/chatcmpl-nope")
        bad = http.get("/usage", params={"from": "yesterday"})
    funded = 50_000_000_000 + 100 * 10_000_000 + 5_000_000_000  # $50 + first bonus + 10%
    assert Decimal(str(balance["balance_usd"])) == Decimal(funded - 2 * FAKE_COST).scaleb(-9)
    assert balance["tier"] == "paid" and balance["trial_calls_left"] == 0
    assert usage["data"] == [
        {"model": CHEAP, "calls": 2, "prompt_tokens": 24, "completion_tokens": 14, "total_tokens": 38,
         "cost_usd": float(Decimal(2 * FAKE_COST).scaleb(-9))}
    ]  # fmt: skip
    assert by_day["data"][0]["day"] == dt.datetime.now(dt.UTC).date().isoformat()
    assert generation["model"] == CHEAP and generation["usage"]["prompt_tokens"] == 12
    assert Decimal(str(generation["cost_usd"])) == Decimal(FAKE_COST).scaleb(-9)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "generation_not_found"
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "from"
    assert balance_of(gateway.database_url, email).user_id != 0


def test_a_timed_out_call_costs_nothing(gateway: Gateway, upstream: FakeUpstream, upstream_url: str) -> None:
    from aipower.app import create_app
    from tests.conftest import make_settings
    from tests.servers import serve

    email, key, _ = new_user(gateway, top_up_usd="10")
    before = balance_of(gateway.database_url, email)
    upstream.enqueue(SlowReply(2.0, JsonReply(completion("deepseek-chat", "too late"))))
    settings = make_settings(gateway.database_url, upstream_url, first_byte_timeout=0.3)
    with (
        serve(create_app(settings)) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as sdk,
        pytest.raises(openai.InternalServerError) as info,
    ):
        sdk.chat.completions.create(model=CHEAP, messages=HELLO)
    assert info.value.status_code == 503
    after = balance_of(gateway.database_url, email)
    assert (after.balance_nanos, after.held_nanos) == (before.balance_nanos, 0)
    assert [r for r in ledger_rows(gateway.database_url, email) if r[1] == "usage"] == []


@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        ("/usage", {"to": "9999-12-31"}, "to"),
        ("/usage", {"to": "0001-01-01"}, "to"),
        ("/usage", {"from": "2026-02-30"}, "from"),
        ("/responses/resp_x/input_items", {"limit": "²"}, "limit"),
        ("/responses/resp_x/input_items", {"limit": "9" * 5000}, "limit"),
    ],
    ids=["to-last-day", "to-first-day", "no-such-day", "superscript-digit", "5000-digits"],
)
def test_odd_query_parameters_are_400_naming_the_parameter(
    gateway: Gateway, path: str, params: dict[str, str], param: str
) -> None:
    _, key, _ = new_user(gateway, top_up_usd="5")
    with httpx.Client(base_url=gateway.base_url, headers={"authorization": f"Bearer {key}"}) as http:
        if path.startswith("/responses"):
            made = http.post("/responses", json={"model": CHEAP, "input": "hi"})
            path = path.replace("resp_x", made.json()["id"])
        reply = http.get(path, params=params)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


def test_calls_one_after_another_are_billed_exactly_and_leave_no_hold_behind(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    """Each lone call's settlement holds the key's next call (a spare hold): the balance shown after every call is
    what it was less that call's cost, and a second after the last call nothing is held any more."""
    email, key, _ = new_user(gateway, top_up_usd="10")
    before = balance_of(gateway.database_url, email)
    uid = before.user_id
    with client(gateway, key) as sdk:
        for n in range(1, 4):
            sdk.chat.completions.create(model=CHEAP, messages=HELLO)
            shown = balance_of(gateway.database_url, email)
            assert (shown.balance_nanos, shown.held_nanos) == (before.balance_nanos - n * FAKE_COST, 0)
            assert shown.spent_today_nanos == n * FAKE_COST
    assert stored(gateway.database_url, uid)[1] > 0  # the spare the last settlement took, still held
    deadline = time.monotonic() + 5
    while stored(gateway.database_url, uid)[1] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stored(gateway.database_url, uid) == (before.balance_nanos - 3 * FAKE_COST, 0)
    assert verify(gateway.database_url) == []


def stored(database_url: str, uid: int) -> tuple[int, int]:
    """The user's row balance and the sum of their open holds, as the database has them."""

    async def read(engine: AsyncEngine) -> tuple[int, int]:
        async with engine.connect() as conn:
            balance = (await conn.execute(select(users.c.balance_nanos).where(users.c.id == uid))).scalar_one()
            query = select(func.coalesce(func.sum(holds.c.amount_nanos), 0)).where(
                holds.c.user_id == uid, holds.c.settled_at.is_(None)
            )
            return int(balance), int((await conn.execute(query)).scalar_one())

    return on(database_url, read)


WIRE = Path(__file__).parents[1] / "fakes" / "wire"


def cut_stream(model: str) -> RawReply | SseReply:
    """The model's stream, closed cleanly by the upstream before its finish (no finishReason / finish_reason /
    message_delta), after some text."""
    match model:
        case "google/gemini-2.5-flash":  # usageMetadata so far has no candidatesTokenCount
            frames = (WIRE / "gemini" / "stream-text.sse").read_bytes().split(b"\r\n\r\n")
            return RawReply(b"\r\n\r\n".join(frames[:2]) + b"\r\n\r\n", media_type="text/event-stream")
        case "anthropic/claude-sonnet":
            raw = (WIRE / "anthropic" / "stream-text.sse").read_bytes()
            return RawReply(raw[: raw.index(b"event: message_delta")], media_type="text/event-stream")
    return SseReply(stream_chunks("deepseek-chat", ["The capital", " of France"], usage=False)[:-1], done=False)


def last_logged(database_url: str, email: str) -> tuple[int, int, bool, int]:
    """(status, output tokens, estimated, charged nanos) of the user's last logged call."""
    uid = user_id(database_url, email)
    log = request_log.c
    query = select(log.status, log.output_tokens, log.estimated, log.charged_nanos).where(log.user_id == uid)

    async def row(engine: AsyncEngine) -> tuple[int, int, bool, int]:
        async with engine.connect() as conn:
            status, output, estimated, charged = (await conn.execute(query.order_by(log.id.desc()).limit(1))).one()
        return int(status), int(output), bool(estimated), int(charged)

    return on(database_url, row)


@pytest.mark.parametrize("model", ["google/gemini-2.5-flash", CHEAP, "anthropic/claude-sonnet"])
def test_a_stream_the_upstream_cut_short_is_an_error_billed_an_estimate(
    gateway: Gateway, upstream: FakeUpstream, model: str
) -> None:
    """A body closed before the provider's end of message is a 502 after the text already sent, never a normal
    answer, and its output is estimated from that text (not Gemini's running usageMetadata, which counts 0)."""
    email, key, _ = new_user(gateway, top_up_usd="10")
    upstream.enqueue(cut_stream(model))
    text, finishes = "", []
    with client(gateway, key) as sdk, pytest.raises(openai.APIError) as caught:
        for chunk in sdk.chat.completions.create(model=model, messages=HELLO, stream=True):
            text += "".join(c.delta.content or "" for c in chunk.choices)
            finishes += [c.finish_reason for c in chunk.choices if c.finish_reason]
    assert "ended before the message did" in caught.value.message
    assert text and finishes == []  # the text before the cut was relayed, no finish_reason
    deadline = time.monotonic() + 5
    while billed_calls(gateway.database_url, email) == 0 and time.monotonic() < deadline:
        upstream.stream_closed.wait(0.05)
    status, output, estimated, charged = last_logged(gateway.database_url, email)
    assert (status, estimated) == (502, True) and output > 0 and charged > 0
    assert balance_of(gateway.database_url, email).held_nanos == 0
    assert verify(gateway.database_url) == []


def test_a_rate_limit_error_mid_stream_is_a_429_frame_and_logged_429(gateway: Gateway, upstream: FakeUpstream) -> None:
    """An {"error": ...} chunk naming a rate limit after content: the caller's error frame and the request log say
    429 rate limiting, as the same error before the stream would, not a generic 502."""
    email, key, _ = new_user(gateway, top_up_usd="10")
    first = stream_chunks("deepseek-chat", ["Hel"], usage=False)[:2]
    error = {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"}
    upstream.enqueue(SseReply((*first, {"error": error}), done=False))
    with client(gateway, key) as sdk, pytest.raises(openai.APIError) as caught:
        for _ in sdk.chat.completions.create(model=CHEAP, messages=HELLO, stream=True):
            pass
    assert (caught.value.type, caught.value.code) == ("rate_limit_error", "upstream_rate_limited")
    assert "Rate limit reached" in caught.value.message
    deadline = time.monotonic() + 5
    while billed_calls(gateway.database_url, email) == 0 and time.monotonic() < deadline:
        upstream.stream_closed.wait(0.05)
    status, _, estimated, _ = last_logged(gateway.database_url, email)
    assert (status, estimated) == (429, True)
    assert verify(gateway.database_url) == []


def test_an_anthropic_error_event_after_content_bills_the_input_message_start_gave(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    """message_start already gave the real input_tokens: the charge uses them, and estimates only the output."""
    email, key, _ = new_user(gateway, top_up_usd="10")
    raw = (WIRE / "anthropic" / "stream-error.sse").read_bytes()
    assert b'"input_tokens":8,' in raw
    upstream.enqueue(
        RawReply(raw.replace(b'"input_tokens":8,', b'"input_tokens":4321,'), media_type="text/event-stream")
    )
    with client(gateway, key) as sdk, pytest.raises(openai.APIError) as caught:
        for _ in sdk.chat.completions.create(model="anthropic/claude-sonnet", messages=HELLO, stream=True):
            pass
    assert "Overloaded" in caught.value.message
    deadline = time.monotonic() + 5
    while billed_calls(gateway.database_url, email) == 0 and time.monotonic() < deadline:
        upstream.stream_closed.wait(0.05)
    uid = user_id(gateway.database_url, email)
    log = request_log.c
    query = select(log.input_tokens, log.output_tokens, log.estimated).where(log.user_id == uid)

    async def row(engine: AsyncEngine) -> tuple[int, int, bool]:
        async with engine.connect() as conn:
            found = (await conn.execute(query.order_by(log.id.desc()).limit(1))).one()
        return int(found[0]), int(found[1]), bool(found[2])

    input_tokens, output, estimated = on(gateway.database_url, row)
    assert (input_tokens, estimated) == (4321, True) and output > 0  # "Hello" was relayed: estimated output
    assert balance_of(gateway.database_url, email).held_nanos == 0
    assert verify(gateway.database_url) == []
