"""tasks: the A2A task store's tables (consortium/node/store.py), as nodes have always
made them in node.sqlite3: `tasks` (owner, id) -> the serialized task and the columns
ListTasks filters and sorts on, its index by time, and `tasks_quarantine` for rows that
cannot be decoded.

Revision ID: tasks_0001
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "tasks_0001"
down_revision = None
branch_labels = ("tasks",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("context_id", sa.Text(), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("has_ts", sa.Integer(), nullable=False),
        sa.Column("ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "id"),
        if_not_exists=True,
    )
    op.create_index(
        "tasks_by_time",
        "tasks",
        ["owner", sa.text("has_ts DESC"), sa.text("ts_ns DESC"), sa.text("id DESC")],
        if_not_exists=True,
    )
    op.create_table(
        "tasks_quarantine",
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("owner", "id"),
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_table("tasks_quarantine")
    op.drop_index("tasks_by_time", table_name="tasks")
    op.drop_table("tasks")
