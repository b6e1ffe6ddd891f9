"""replicas (PostgreSQL only): one row per running replica of the organization's node —
its id, organization, endpoints, when it started and when it was last seen (the
database's clock) — which survivors read to declare a silent replica dead.

Revision ID: replicas_0001
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "replicas_0001"
down_revision = None
branch_labels = ("replicas",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replicas",
        sa.Column("replica", sa.Text(), nullable=False),
        sa.Column("org", sa.Text(), nullable=False),
        sa.Column("endpoints", postgresql.JSONB(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("replica"),
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_table("replicas")
