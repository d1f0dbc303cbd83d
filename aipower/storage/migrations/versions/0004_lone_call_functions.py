"""PostgreSQL: a lone call's reserve and settle as one function call each (storage.ledger_alone).

Revision ID: 0004
Revises: 0003

Each runs in the implicit transaction of its one statement, so a lone call costs one round trip to reserve and
one to settle instead of five and seven. They do what storage.ledger_sql does for a batch of one paid call, with
the same guards and in the same lock order (the hold, then the user, then the key), and change nothing when a
guard refuses: the caller then runs the general batch, which finds out why. SQLite has nothing to create.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

RESERVE = """
CREATE OR REPLACE FUNCTION aipower_reserve_alone(
    p_uid integer, p_kid varchar, p_hid varchar, p_rid varchar, p_amount bigint, p_unlock bigint, p_day varchar,
    p_now timestamptz
) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    UPDATE users SET
        balance_nanos = balance_nanos - p_amount,
        spend_day_nanos = (CASE WHEN spend_day = p_day THEN spend_day_nanos ELSE 0 END) + p_amount,
        spend_day = p_day
    WHERE id = p_uid AND lifetime_topup_nanos >= p_unlock AND balance_nanos >= p_amount
        AND (daily_cap_nanos IS NULL
             OR (CASE WHEN spend_day = p_day THEN spend_day_nanos ELSE 0 END) + p_amount <= daily_cap_nanos);
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE api_keys SET spent_nanos = spent_nanos + p_amount
    WHERE id = p_kid AND (spend_limit_nanos IS NULL OR spent_nanos + p_amount <= spend_limit_nanos);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'aipower: key spend limit' USING ERRCODE = 'AP402';
    END IF;
    INSERT INTO holds (id, user_id, key_id, request_id, amount_nanos, mode, spend_day, created_at)
    VALUES (p_hid, p_uid, p_kid, p_rid, p_amount, 'balance', p_day, p_now);
    PERFORM set_config('synchronous_commit', 'off', true);
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
        op.execute(RESERVE)
        op.execute(SETTLE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS aipower_reserve_alone")
        op.execute("DROP FUNCTION IF EXISTS aipower_settle_alone")
