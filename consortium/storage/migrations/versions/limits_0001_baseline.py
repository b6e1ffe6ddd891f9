"""limits: per-caller windows shared by a node's replicas (PostgreSQL only): the calls
and the token reservations of the last minute, and the requests in progress (slots held
by a replica until an expiry it keeps pushing back).

Revision ID: limits_0001
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "limits_0001"
down_revision = None
branch_labels = ("limits",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "limit_requests",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("at", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        if_not_exists=True,
    )
    op.create_index(
        "limit_requests_owner_at", "limit_requests", ["owner", "at"], if_not_exists=True
    )
    op.create_table(
        "limit_tokens",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("at", sa.Float(precision=53), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        if_not_exists=True,
    )
    op.create_index("limit_tokens_owner_at", "limit_tokens", ["owner", "at"], if_not_exists=True)
    op.create_table(
        "limit_slots",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("replica", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        if_not_exists=True,
    )
    op.create_index("limit_slots_owner", "limit_slots", ["owner"], if_not_exists=True)
    op.create_index("limit_slots_replica", "limit_slots", ["replica"], if_not_exists=True)


def downgrade() -> None:
    op.drop_table("limit_slots")
    op.drop_table("limit_tokens")
    op.drop_table("limit_requests")
