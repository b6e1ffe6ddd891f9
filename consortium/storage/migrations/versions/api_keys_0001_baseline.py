"""api_keys: the node's API keys (id -> name, SHA-256 of the secret, admin, times).

Revision ID: api_keys_0001
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "api_keys_0001"
down_revision = None
branch_labels = ("api_keys",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.Column("admin", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
        sa.Column("expires_at", sa.Float(precision=53), nullable=True),
        sa.Column("revoked_at", sa.Float(precision=53), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sqlite_with_rowid=False,
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_table("api_keys")
