"""PostgreSQL: a lone call that may use a trial call reserves in one statement too (storage.ledger_alone).

Revision ID: 0005
Revises: 0004

`aipower_reserve_one` is 0004's `aipower_reserve_alone` plus the trial call: when `p_trial` is set it first takes
one of the user's trial calls (a hold of 0, mode 'trial'), and only when none is left the balance, as the general
batch does (storage.ledger_sql). It returns the hold's mode, or NULL when a guard refused and nothing was written.
0004's function stays, so a process still running the previous release keeps working during an upgrade.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

RESERVE = """
CREATE OR REPLACE FUNCTION aipower_reserve_one(
    p_uid integer, p_kid varchar, p_hid varchar, p_rid varchar, p_amount bigint, p_unlock bigint, p_day varchar,
    p_now timestamptz, p_trial boolean
) RETURNS varchar LANGUAGE plpgsql AS $$
DECLARE
    v_mode varchar := 'balance';
    v_amount bigint := p_amount;
BEGIN
    IF p_trial THEN
        UPDATE users SET trial_calls_left = trial_calls_left - 1
        WHERE id = p_uid AND trial_calls_left > 0 AND lifetime_topup_nanos >= p_unlock;
        IF FOUND THEN
            v_mode := 'trial';
            v_amount := 0;
        END IF;
    END IF;
    IF v_mode = 'balance' THEN
        UPDATE users SET
            balance_nanos = balance_nanos - p_amount,
            spend_day_nanos = (CASE WHEN spend_day = p_day THEN spend_day_nanos ELSE 0 END) + p_amount,
            spend_day = p_day
        WHERE id = p_uid AND lifetime_topup_nanos >= p_unlock AND balance_nanos >= p_amount
            AND (daily_cap_nanos IS NULL
                 OR (CASE WHEN spend_day = p_day THEN spend_day_nanos ELSE 0 END) + p_amount <= daily_cap_nanos);
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
        UPDATE api_keys SET spent_nanos = spent_nanos + p_amount
        WHERE id = p_kid AND (spend_limit_nanos IS NULL OR spent_nanos + p_amount <= spend_limit_nanos);
        IF NOT FOUND THEN
            RAISE EXCEPTION 'aipower: key spend limit' USING ERRCODE = 'AP402';
        END IF;
    END IF;
    INSERT INTO holds (id, user_id, key_id, request_id, amount_nanos, mode, spend_day, created_at)
    VALUES (p_hid, p_uid, p_kid, p_rid, v_amount, v_mode, p_day, p_now);
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN v_mode;
END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(RESERVE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS aipower_reserve_one")
