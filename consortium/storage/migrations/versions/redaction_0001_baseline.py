"""redaction: the signed messages this node sent with redactions (receipts) and the
disclosures of the spans they withheld (redaction/receipts.py).

A redaction.sqlite3 made before migrations is taken as it is.

Revision ID: redaction_0001
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "redaction_0001"
down_revision = None
branch_labels = ("redaction",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "receipts",
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("recipient", sa.Text(), nullable=False),
        sa.Column("message", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("message_id"),
        if_not_exists=True,
    )
    op.create_index("receipts_by_task", "receipts", ["task_id", "created_at"], if_not_exists=True)
    op.create_table(
        "disclosures",
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("disclosure", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["receipts.message_id"]),
        sa.PrimaryKeyConstraint("message_id", "position"),
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_table("disclosures")
    op.drop_index("receipts_by_task", "receipts")
    op.drop_table("receipts")
