"""Seen JWT ids (replay protection shared by every worker and instance).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "seen_jtis",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_seen_jtis"),
    )
    op.create_index("ix_seen_jtis_expires_at", "seen_jtis", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_seen_jtis_expires_at", table_name="seen_jtis")
    op.drop_table("seen_jtis")
