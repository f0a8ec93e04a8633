"""The tables (they must match the latest migration; tests/store/test_feedback_store.py checks it)."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# --- schema (must match the latest migration; tests/store/test_feedback_store.py checks it) --------------------------


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out. Stored as UTC (SQLite keeps no offset, so UTC is implied)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("timestamps must be timezone-aware")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

metadata = sa.MetaData()

issued_cards = sa.Table(
    "issued_cards",
    metadata,
    sa.Column("uuid", sa.String(128), nullable=False),
    sa.Column("service_id", sa.String(128), nullable=False),
    sa.Column("outcome", sa.String(64), nullable=True),
    sa.Column("tier", sa.String(16), nullable=False),
    sa.Column("present", _JSON, nullable=False),
    sa.Column("knowledge_base", sa.String(256), nullable=False),
    sa.Column("issued_at", UtcDateTime(), nullable=False),
    sa.Column("suggestions", _JSON, nullable=True),
    sa.PrimaryKeyConstraint("uuid", name="pk_issued_cards"),
    sa.Index("ix_issued_cards_outcome_tier", "outcome", "tier"),
    sa.Index("ix_issued_cards_issued_at", "issued_at"),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("service_id", sa.String(128), nullable=False),
    sa.Column("card_uuid", sa.String(128), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("outcome_timestamp", UtcDateTime(), nullable=False),
    sa.Column("accepted_suggestions", _JSON, nullable=True),
    sa.Column("override_reason_system", sa.String(1024), nullable=True),
    sa.Column("override_reason_code", sa.String(256), nullable=True),
    sa.Column("override_reason_display", sa.String(1024), nullable=True),
    sa.Column("override_comment", sa.Text(), nullable=True),
    sa.Column("received_at", UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("id", name="pk_feedback"),
    sa.UniqueConstraint("content_hash", name="uq_feedback_content_hash"),
    sa.CheckConstraint("outcome IN ('accepted', 'overridden')", name="ck_feedback_outcome"),
    sa.Index("ix_feedback_card_uuid", "card_uuid"),
)

seen_jtis = sa.Table(
    "seen_jtis",
    metadata,
    sa.Column("key", sa.String(64), nullable=False),
    sa.Column("expires_at", UtcDateTime(), nullable=False),
    sa.Column("attempt", sa.String(32), nullable=True),
    sa.PrimaryKeyConstraint("key", name="pk_seen_jtis"),
    sa.Index("ix_seen_jtis_expires_at", "expires_at"),
)
"""JWT ids already accepted, shared by every worker and instance on this database: ``key`` is a SHA-256 of the
issuer and the ``jti`` (nothing else about the token is kept), ``expires_at`` when the token (plus leeway) expires,
``attempt`` the front door's id of the request that carried it (random, 32 hex digits; NULL without a front door)."""
