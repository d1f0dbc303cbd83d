"""Which process owns each open hold, and whether it is alive (storage.ledger_owners).

Revision ID: 0009
Revises: 0008

Repair released open holds by age alone: a live process's long call could lose its hold (another replica starting,
`ledger verify --repair` with a short age), and a dead process's holds stayed held for an hour, until a process
started. Each ledger now keeps a row here, named by its hold ids' prefix, beaten every AIPOWER_HOLD_BEAT_SECONDS,
with the seconds after which it counts as dead by its own beat; live processes release the holds of owners that
stopped beating or closed, and never a live owner's. Holds of
processes that kept no row (before this revision) are still judged by age.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_owners",
        sa.Column("owner", sa.String(32), primary_key=True),
        sa.Column("started", sa.BigInteger, nullable=False),
        sa.Column("seen", sa.BigInteger, nullable=False),
        sa.Column("dead_after", sa.Integer, nullable=False),
        sa.Column("gone", sa.Boolean, nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_table("ledger_owners")
