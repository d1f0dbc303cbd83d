"""All tables on one MetaData. Storage layer."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    text,
)

metadata = MetaData()

Money = BigInteger  # nano-USD (aipower.money.Nanos)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # The account: balance excludes open holds; balance + open balance holds == sum(ledger) at all times.
    Column("balance_nanos", Money, nullable=False, server_default="0"),
    Column("lifetime_topup_nanos", Money, nullable=False, server_default="0"),
    Column("trial_calls_left", Integer, nullable=False, server_default="0"),
    Column("daily_cap_nanos", Money, nullable=True),
    Column("spend_day", String(10), nullable=True),  # UTC day (YYYY-MM-DD) that spend_day_nanos counts
    Column("spend_day_nanos", Money, nullable=False, server_default="0"),
    Column("rpm", Integer, nullable=True),  # rate-limit overrides; NULL = the configured default
    Column("tpm", Integer, nullable=True),
    CheckConstraint("balance_nanos >= 0", name="ck_users_balance_nonnegative"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("digest", String(64), nullable=False, unique=True),
    Column("prefix", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("allowed_models", Text, nullable=True),  # JSON list of model ids; NULL = any
    Column("spend_limit_nanos", Money, nullable=True),
    Column("spent_nanos", Money, nullable=False, server_default="0"),
    Column("rpm", Integer, nullable=True),
    Column("tpm", Integer, nullable=True),
)

holds = Table(
    "holds",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("amount_nanos", Money, nullable=False),
    Column("mode", String(16), nullable=False),  # balance | trial | demo | spare (a balance hold: ledger_spares)
    Column("spend_day", String(10), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("settled_at", DateTime(timezone=True), nullable=True),
    Column("charged_nanos", Money, nullable=True),
    # Open holds only (few, whatever the history): every query of holds by state asks for the open ones.
    Index(
        "ix_holds_open",
        "created_at",
        sqlite_where=text("settled_at IS NULL"),
        postgresql_where=text("settled_at IS NULL"),
    ),
)

# One row per ledger (process) that has written holds: its hold ids' prefix, and the database's clock (epoch
# seconds) when it started and last beat; `gone` once it closed (storage.ledger_owners, migration 0009).
ledger_owners = Table(
    "ledger_owners",
    metadata,
    Column("owner", String(32), primary_key=True),
    Column("started", BigInteger, nullable=False),
    Column("seen", BigInteger, nullable=False),
    Column("dead_after", Integer, nullable=False),  # seconds without a beat after which this owner is dead
    Column("gone", Boolean, nullable=False, server_default=false()),
)

ledger = Table(
    "ledger",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("amount_nanos", Money, nullable=False),
    Column("reason", String(16), nullable=False),  # top-up bonus trial usage refund grant adjustment
    Column("request_id", String(64), nullable=True),
    Column("note", String(200), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # A top-up's or grant's outside reference (a payment or invoice id): credited at most once (migration 0008).
    Column("reference", String(200), nullable=True),
    Index("ix_ledger_user", "user_id", "id"),
    Index(  # partial: a call's row (no reference) writes no page of it
        "ux_ledger_reference",
        "reference",
        unique=True,
        sqlite_where=text("reference IS NOT NULL"),
        postgresql_where=text("reference IS NOT NULL"),
    ),
)

request_log = Table(
    "request_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("user_id", Integer, nullable=False),
    Column("model", String(200), nullable=False),
    Column("provider", String(64), nullable=True),
    Column("stream", Boolean, nullable=False),
    Column("status", Integer, nullable=False),
    Column("error_code", String(64), nullable=True),
    Column("input_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    Column("cached_tokens", Integer, nullable=False),
    Column("reasoning_tokens", Integer, nullable=False),
    Column("latency_ms", Integer, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("cost_nanos", Money, nullable=False, server_default="0"),  # at list price
    Column("charged_nanos", Money, nullable=False, server_default="0"),  # what the caller paid
    Column("billing_mode", String(16), nullable=True),
    Column("estimated", Boolean, nullable=False, server_default=false()),
    Index("ix_request_log_user_created", "user_id", "created_at"),
    Index("ix_request_log_request_id", "request_id"),
)

responses = Table(
    "responses",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("model", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("previous_response_id", String(64), nullable=True),
    Column("input_items", Text, nullable=False),  # JSON, opaque to storage (api/responses_wire.py writes it)
    Column("output_items", Text, nullable=False),
    Column("usage", Text, nullable=True),
    Column("details", Text, nullable=False),
    Index("ix_responses_user_created", "user_id", "created_at"),
)
