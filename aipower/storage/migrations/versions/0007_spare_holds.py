"""PostgreSQL: a lone call's settle takes the key's next hold in the same statement (storage.ledger_spares).

Revision ID: 0007
Revises: 0006

`aipower_take_spare` does what storage.ledger_sql's `_take_spare` does on SQLite: a hold of `p_amount` for the key's
next call, taken only while the account has room for `p_room` in its balance, its day's cap and the key's spend
limit, and only from a user with no trial call left when the call may use one. It refuses nothing and raises
nothing: when a guard fails it writes nothing (or gives back what it took) and returns false. storage.ledger_alone
calls it after the settle of the same statement, so it locks the user and the key the settle already holds. The
hold's mode is 'spare' (a balance hold that reports count as balance until a call settles it).

`aipower_settle_alone` (0004) is replaced: a settle charged exactly its hold wrote no user row, so it locked the key
before (or without) the user, against the lock order (user, then key) of every reserve: in a pipeline of settles, or
followed by the spare's take, it could deadlock with another process's reserve (found by review). It now locks the
user first in every case.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TAKE_SPARE = """
CREATE OR REPLACE FUNCTION aipower_take_spare(
    p_uid integer, p_kid varchar, p_hid varchar, p_rid varchar, p_amount bigint, p_room bigint, p_unlock bigint,
    p_day varchar, p_now timestamptz, p_trial boolean
) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    UPDATE users SET
        balance_nanos = balance_nanos - p_amount,
        spend_day_nanos = (CASE WHEN spend_day = p_day THEN spend_day_nanos ELSE 0 END) + p_amount,
        spend_day = p_day
    WHERE id = p_uid AND lifetime_topup_nanos >= p_unlock AND balance_nanos >= p_room
        AND (NOT p_trial OR trial_calls_left <= 0)
        AND (daily_cap_nanos IS NULL
             OR (CASE WHEN spend_day = p_day THEN spend_day_nanos ELSE 0 END) + p_room <= daily_cap_nanos);
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE api_keys SET spent_nanos = spent_nanos + p_amount
    WHERE id = p_kid AND (spend_limit_nanos IS NULL OR spent_nanos + p_room <= spend_limit_nanos);
    IF NOT FOUND THEN
        UPDATE users SET balance_nanos = balance_nanos + p_amount, spend_day_nanos = spend_day_nanos - p_amount
        WHERE id = p_uid;
        RETURN false;
    END IF;
    INSERT INTO holds (id, user_id, key_id, request_id, amount_nanos, mode, spend_day, created_at)
    VALUES (p_hid, p_uid, p_kid, p_rid, p_amount, 'spare', p_day, p_now);
    RETURN true;
END $$
"""


SETTLE = """
CREATE OR REPLACE FUNCTION aipower_settle_alone(
    p_hid varchar, p_uid integer, p_kid varchar, p_amount bigint, p_charge bigint, p_day varchar, p_rid varchar,
    p_note varchar, p_now timestamptz
) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    UPDATE holds SET settled_at = p_now, charged_nanos = p_charge WHERE id = p_hid AND settled_at IS NULL;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF p_amount <> p_charge THEN
        UPDATE users SET
            balance_nanos = balance_nanos + (p_amount - p_charge),
            spend_day_nanos = CASE WHEN spend_day = p_day THEN spend_day_nanos - (p_amount - p_charge)
                                   ELSE spend_day_nanos END
        WHERE id = p_uid;
    ELSE
        PERFORM 1 FROM users WHERE id = p_uid FOR NO KEY UPDATE;  -- the user before the key, as every reserve
    END IF;
    UPDATE api_keys SET spent_nanos = spent_nanos - (p_amount - p_charge), last_used_at = p_now WHERE id = p_kid;
    IF p_charge <> 0 THEN
        INSERT INTO ledger (user_id, amount_nanos, reason, request_id, note, created_at)
        VALUES (p_uid, -p_charge, 'usage', p_rid, p_note, p_now);
    END IF;
    RETURN p_charge;
END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(TAKE_SPARE)
        op.execute(SETTLE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS aipower_take_spare")
        op.execute(_revision_0004().SETTLE)  # the settle as it was


def _revision_0004() -> Any:
    spec = importlib.util.spec_from_file_location(
        "revision_0004", Path(__file__).with_name("0004_lone_call_functions.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
