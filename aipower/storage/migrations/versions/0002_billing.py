"""Billing: account columns on users, key restrictions, holds, the ledger, cost on the request log.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)
_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("users") as t:
        t.add_column(sa.Column("balance_nanos", sa.BigInteger, nullable=False, server_default="0"))
        t.add_column(sa.Column("lifetime_topup_nanos", sa.BigInteger, nullable=False, server_default="0"))
        t.add_column(sa.Column("trial_calls_left", sa.Integer, nullable=False, server_default="0"))
        t.add_column(sa.Column("daily_cap_nanos", sa.BigInteger, nullable=True))
        t.add_column(sa.Column("spend_day", sa.String(10), nullable=True))
        t.add_column(sa.Column("spend_day_nanos", sa.BigInteger, nullable=False, server_default="0"))
        t.add_column(sa.Column("rpm", sa.Integer, nullable=True))
        t.add_column(sa.Column("tpm", sa.Integer, nullable=True))
        t.create_check_constraint("ck_users_balance_nonnegative", "balance_nanos >= 0")
    with op.batch_alter_table("api_keys") as t:
        t.add_column(sa.Column("expires_at", _TS, nullable=True))
        t.add_column(sa.Column("allowed_models", sa.Text, nullable=True))
        t.add_column(sa.Column("spend_limit_nanos", sa.BigInteger, nullable=True))
        t.add_column(sa.Column("spent_nanos", sa.BigInteger, nullable=False, server_default="0"))
        t.add_column(sa.Column("rpm", sa.Integer, nullable=True))
        t.add_column(sa.Column("tpm", sa.Integer, nullable=True))
    with op.batch_alter_table("request_log") as t:
        t.add_column(sa.Column("cost_nanos", sa.BigInteger, nullable=False, server_default="0"))
        t.add_column(sa.Column("charged_nanos", sa.BigInteger, nullable=False, server_default="0"))
        t.add_column(sa.Column("billing_mode", sa.String(16), nullable=True))
        t.add_column(sa.Column("estimated", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_index("ix_request_log_request_id", "request_log", ["request_id"])
    op.create_table(
        "holds",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("amount_nanos", sa.BigInteger, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("spend_day", sa.String(10), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("settled_at", _TS, nullable=True),
        sa.Column("charged_nanos", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_holds_open", "holds", ["settled_at", "created_at"])
    op.create_table(
        "ledger",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("amount_nanos", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("note", sa.String(200), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_index("ix_ledger_user", "ledger", ["user_id", "id"])


def downgrade() -> None:
    op.drop_table("ledger")
    op.drop_table("holds")
    op.drop_index("ix_request_log_request_id", "request_log")
    with op.batch_alter_table("request_log") as t:
        for name in ("estimated", "billing_mode", "charged_nanos", "cost_nanos"):
            t.drop_column(name)
    with op.batch_alter_table("api_keys") as t:
        for name in ("tpm", "rpm", "spent_nanos", "spend_limit_nanos", "allowed_models", "expires_at"):
            t.drop_column(name)
    with op.batch_alter_table("users") as t:
        t.drop_constraint("ck_users_balance_nonnegative", type_="check")
        for name in (
            "tpm",
            "rpm",
            "spend_day_nanos",
            "spend_day",
            "daily_cap_nanos",
            "trial_calls_left",
            "lifetime_topup_nanos",
            "balance_nanos",
        ):
            t.drop_column(name)
