"""`aipower credits/balance/cap/ledger` and key/user limits: money moves through the CLI, the ledger agrees."""

from __future__ import annotations

from pathlib import Path

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
    assert invoke(["credits", "add", email, "0.0000000001"]).exit_code == 2  # finer than a nano-USD
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
    # A bad spend limit is a usage error, not a traceback, and leaves the key as it was (a negative one was stored:
    # the key then answered 402 for ever).
    for bad in ("-5", "ten", "NaN", "1e30", "0.0000000001"):
        refused = invoke(["keys", "restrict", key_id, "--spend-limit", bad])
        assert refused.exit_code == 2 and "--spend-limit" in refused.stderr, (bad, refused.output)
    assert query(database_url, "SELECT spend_limit_nanos FROM api_keys WHERE id = :id", id=key_id)[0] == {
        "spend_limit_nanos": 3_000_000_000
    }


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


def test_a_top_up_with_a_reference_is_credited_once(invoke: Invoke, email: str, database_url: str) -> None:
    """A retried `credits add` (a timeout, a script run twice) must not credit the payment twice."""
    user(invoke, email)
    ref = "pi_" + email  # the database is the session's: a reference of its own
    first = invoke(["credits", "add", email, "50", "--reference", ref])
    assert first.exit_code == 0 and "$56.00" in first.stdout  # $50 + 100 credits (first) + 10%
    again = invoke(["credits", "add", email, "50", "--reference", ref])
    assert again.exit_code == 0, again.output
    assert "already credited" in again.stdout and "nothing was done" in again.stdout
    assert "balance:      $56.00" in invoke(["balance", email]).stdout
    rows = query(
        database_url,
        "SELECT l.reason, l.reference FROM ledger l JOIN users u ON u.id = l.user_id WHERE u.email = :e ORDER BY l.id",
        e=email,
    )
    assert rows == [
        {"reason": "top-up", "reference": ref},
        {"reason": "bonus", "reference": None},
        {"reason": "bonus", "reference": None},
    ]


def test_a_reference_used_for_another_credit_is_refused(invoke: Invoke, email: str) -> None:
    user(invoke, email)
    other = "other-" + email
    user(invoke, other)
    inv, goodwill = "inv-" + email, "goodwill-" + email  # the database is the session's: references of its own
    assert invoke(["credits", "add", email, "20", "--reference", inv]).exit_code == 0
    for args in (
        ["credits", "add", email, "25", "--reference", inv],  # another amount
        ["credits", "add", other, "20", "--reference", inv],  # another user
        ["credits", "grant", email, "20", "--reference", inv],  # another kind
    ):
        refused = invoke(args)
        assert refused.exit_code == 1, (args, refused.output)
        assert "already used for a top-up of $20.00" in refused.stderr and "nothing was credited" in refused.stderr
    assert "balance:      $0.00" in invoke(["balance", other]).stdout
    assert "balance:      $21.00" in invoke(["balance", email]).stdout  # $20 + the first top-up's 100 credits
    grant = invoke(["credits", "grant", other, "3", "--reference", goodwill])
    assert grant.exit_code == 0 and "granted $3.00" in grant.stdout
    assert "already credited" in invoke(["credits", "grant", other, "3", "--reference", goodwill]).stdout
    assert "balance:      $3.00" in invoke(["balance", other]).stdout
    too_long = invoke(["credits", "add", email, "5", "--reference", "x" * 201])
    assert too_long.exit_code == 1 and "1 to 200 characters" in too_long.stderr
    assert invoke(["ledger", "verify"]).exit_code == 0


def test_money_commands_refuse_bad_notes_and_ages(invoke: Invoke, email: str) -> None:
    """A note longer than the ledger keeps was stored whole by SQLite and a traceback on PostgreSQL; a negative age
    released every open hold, live calls' included."""
    user(invoke, email)
    long_note = invoke(["credits", "add", email, "5", "--reason", "x" * 201])
    assert long_note.exit_code == 2 and "at most 200 characters" in long_note.stderr
    assert invoke(["credits", "grant", email, "5", "--reason", "x" * 200]).exit_code == 0
    assert invoke(["ledger", "verify", "--repair", "--older-than", "-86400"]).exit_code == 2
    assert "balance:      $5.00" in invoke(["balance", email]).stdout


def test_users_and_top_ups_read_the_catalog_serve_reads(invoke: Invoke, email: str, tmp_path: Path) -> None:
    """`serve --catalog ops.toml` bills by that file's [billing]; so do `users create` and `credits add` given the
    same flag (they read only AIPOWER_CATALOG: the shipped trial calls and bonuses were applied)."""
    ops = tmp_path / "ops.toml"
    ops.write_text(
        '[billing]\ntrial_calls = 3\nunlock_topup_usd = "5"\nfirst_topup_bonus = { min_usd = "10", credits = 50 }\n'
        "topup_bonus = []\n"
    )
    created = invoke(["users", "create", email, "--catalog", str(ops)])
    assert created.exit_code == 0 and "3 free trial calls" in created.stdout, created.output
    added = invoke(["credits", "add", email, "100", "--catalog", str(ops)])
    assert added.exit_code == 0 and "$100.50" in added.stdout, added.output  # 50 credits, no tier bonus


def test_deduct_takes_money_back_never_below_zero(invoke: Invoke, email: str, database_url: str) -> None:
    """A mistaken top-up ($500 typed for $50) or a chargeback: the operator takes it back with a ledger row, not SQL."""
    user(invoke, email)
    assert invoke(["credits", "add", email, "500"]).exit_code == 0  # $500 + 100 credits + 30%: $651
    assert invoke(["credits", "deduct", email, "450"]).exit_code == 2  # --reason is required
    ref = "refund-" + email
    taken = invoke(["credits", "deduct", email, "450", "--reason", "typed 500 for 50", "--reference", ref])
    assert taken.exit_code == 0 and "deducted $450.00" in taken.stdout, taken.output
    again = invoke(["credits", "deduct", email, "450", "--reason", "typed 500 for 50", "--reference", ref])
    assert again.exit_code == 0 and "already credited" in again.stdout  # a retry takes nothing more
    too_much = invoke(["credits", "deduct", email, "201.01", "--reason", "chargeback"])
    assert too_much.exit_code == 1 and "the balance is $201.00" in too_much.stderr
    balance = invoke(["balance", email]).stdout
    assert "balance:      $201.00" in balance and "top-ups:      $500.00" in balance
    rows = query(
        database_url,
        "SELECT l.amount_nanos, l.note FROM ledger l JOIN users u ON u.id = l.user_id "
        "WHERE u.email = :e AND l.reason = 'adjustment'",
        e=email,
    )
    assert rows == [{"amount_nanos": -450_000_000_000, "note": "typed 500 for 50"}]
    assert invoke(["ledger", "verify"]).exit_code == 0
