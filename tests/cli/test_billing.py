"""`aipower credits/balance/cap/ledger` and key/user limits: money moves through the CLI, the ledger agrees."""

from __future__ import annotations

from tests.cli.conftest import Invoke, query


def user(invoke: Invoke, email: str) -> None:
    assert invoke(["users", "create", email]).exit_code == 0


def test_topup_earns_bonuses_and_shows_in_the_balance(invoke: Invoke, email: str, database_url: str) -> None:
    user(invoke, email)
    added = invoke(["credits", "add", email, "100", "--reason", "invoice 42"])
    assert added.exit_code == 0, added.output
    assert "$121.00" in added.stdout  # $100 + 100 credits (first top-up) + 20%
    balance = invoke(["balance", email])
    assert "balance:      $121.00 (12100.00 credits)" in balance.stdout
    assert "top-ups:      $100.00" in balance.stdout
    assert "trial calls:  10" in balance.stdout
    rows = query(
        database_url,
        "SELECT l.reason, l.amount_nanos, l.note FROM ledger l JOIN users u ON u.id = l.user_id "
        "WHERE u.email = :email ORDER BY l.id",
        email=email,
    )
    assert [(r["reason"], r["amount_nanos"]) for r in rows] == [
        ("top-up", 100_000_000_000),
        ("bonus", 1_000_000_000),
        ("bonus", 20_000_000_000),
    ]
    assert rows[0]["note"] == "invoice 42"


def test_grant_has_no_bonus_and_no_unlock(invoke: Invoke, email: str) -> None:
    user(invoke, email)
    assert invoke(["credits", "grant", email, "10"]).exit_code == 0
    balance = invoke(["balance", email]).stdout
    assert "balance:      $10.00" in balance and "top-ups:      $0.00" in balance


def test_bad_amounts_and_unknown_users_are_refused(invoke: Invoke, email: str) -> None:
    user(invoke, email)
    assert invoke(["credits", "add", email, "ten"]).exit_code == 2
    assert invoke(["credits", "add", email, "-5"]).exit_code == 2
    assert invoke(["credits", "add", email, "0"]).exit_code == 1
    assert invoke(["credits", "add", email, "0.0000000001"]).exit_code == 1  # finer than a nano-USD
    missing = invoke(["credits", "add", "nobody@example.com", "5"])
    assert missing.exit_code == 1 and "no user" in missing.stderr


def test_daily_cap_set_and_clear(invoke: Invoke, email: str) -> None:
    user(invoke, email)
    assert invoke(["cap", "set", email, "2.50"]).exit_code == 0
    assert "cap $2.50" in invoke(["balance", email]).stdout
    assert invoke(["cap", "set", email]).exit_code == 0
    assert "cap none" in invoke(["balance", email]).stdout
    assert "daily cap for " + email + ": $100.00" in invoke(["cap", "set", email, "1E+2"]).stdout  # not $1E+2


def test_ledger_verify_passes_then_flags_a_tampered_balance(invoke: Invoke, email: str, database_url: str) -> None:
    user(invoke, email)
    invoke(["credits", "add", email, "5"])
    ok = invoke(["ledger", "verify"])
    assert ok.exit_code == 0 and "ledger ok" in ok.stdout
    query(database_url, "SELECT 1")  # the database is reachable from the test too
    _tamper(database_url, email, +1)
    try:
        bad = invoke(["ledger", "verify"])
        assert bad.exit_code == 1
        assert "!= ledger" in bad.stdout
    finally:
        _tamper(database_url, email, -1)
    assert invoke(["ledger", "verify", "--repair"]).exit_code == 0


def test_key_restrictions_and_limits(invoke: Invoke, email: str, database_url: str) -> None:
    user(invoke, email)
    invoke(["keys", "create", email])
    key_id = query(
        database_url, "SELECT k.id FROM api_keys k JOIN users u ON u.id = k.user_id WHERE u.email = :e", e=email
    )[0]["id"]
    restricted = invoke(
        ["keys", "restrict", key_id, "--expires", "2030-01-01", "--models", "qwen/qwen-turbo", "--spend-limit", "3"]
    )
    assert restricted.exit_code == 0, restricted.output
    assert invoke(["keys", "limit", key_id, "--rpm", "10", "--tpm", "0"]).exit_code == 0
    assert invoke(["users", "limit", email, "--rpm", "100"]).exit_code == 0
    row = query(database_url, "SELECT * FROM api_keys WHERE id = :id", id=key_id)[0]
    assert (row["spend_limit_nanos"], row["rpm"], row["tpm"]) == (3_000_000_000, 10, 0)
    assert row["allowed_models"] == '["qwen/qwen-turbo"]'
    assert str(row["expires_at"]).startswith("2030-01-01")
    assert invoke(["keys", "restrict", key_id, "--expires", "soon"]).exit_code == 2
    assert invoke(["keys", "limit", "key_nope", "--rpm", "1"]).exit_code == 1


def _tamper(database_url: str, email: str, nanos: int) -> None:
    import asyncio

    from sqlalchemy import text

    from aipower.storage import db

    async def run() -> None:
        engine = db.make_engine(database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    text("UPDATE users SET balance_nanos = balance_nanos + :n WHERE email = :e"),
                    {"n": nanos, "e": email},
                )
        finally:
            await engine.dispose()

    asyncio.run(run())
