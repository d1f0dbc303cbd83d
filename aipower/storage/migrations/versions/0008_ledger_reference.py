"""Top-ups and grants with an outside reference (a payment or invoice id) are credited at most once.

Revision ID: 0008
Revises: 0007

`aipower credits add|grant ... --reference REF` stores REF on the ledger row it writes. The unique index makes a
second credit of the same reference fail in the database itself, whichever process or replica runs it, so a retried
command (a timeout, a script run twice) cannot credit a payment twice. Rows without a reference (calls, bonuses,
earlier top-ups) are NULL there and left out of the index (a partial one), so a call's ledger row writes no page of
it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_GIVEN = sa.text("reference IS NOT NULL")


def upgrade() -> None:
    op.add_column("ledger", sa.Column("reference", sa.String(200), nullable=True))
    op.create_index(
        "ux_ledger_reference", "ledger", ["reference"], unique=True, sqlite_where=_GIVEN, postgresql_where=_GIVEN
    )


def downgrade() -> None:
    op.drop_index("ux_ledger_reference", table_name="ledger")
    with op.batch_alter_table("ledger") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("reference")
