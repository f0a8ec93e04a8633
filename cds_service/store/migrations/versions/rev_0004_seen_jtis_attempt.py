"""The front door's id of the request that carried each JWT id (``seen_jtis.attempt``).

When a worker dies with a request in flight, the front door hands the same request to another worker; the JWT it
carries is then recorded already, under the same attempt, and is not a replay. Rows recorded before this revision
keep NULL (no attempt: any second use is a replay, as before).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("seen_jtis", sa.Column("attempt", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("seen_jtis") as batch:
        batch.drop_column("attempt")
