"""replay: the replay cache's table (sender, message id) -> when the pair may be forgotten.

Revision ID: replay_0001
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "replay_0001"
down_revision = None
branch_labels = ("replay",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replay",
        sa.Column("sender", sa.Text(), nullable=False),
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("sender", "message_id"),
        sqlite_with_rowid=False,
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_table("replay")
