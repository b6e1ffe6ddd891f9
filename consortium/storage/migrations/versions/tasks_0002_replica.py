"""tasks: which replica runs each task (`replica`, '' for rows stored before replicas
were recorded), so that a survivor fails the unfinished tasks of a replica that died and
of no other.

Revision ID: tasks_0002
Revises: tasks_0001
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "tasks_0002"
down_revision = "tasks_0001"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    """The store's schema on PostgreSQL: ALTER TABLE names its table by a string, which
    the connection's schema_translate_map does not reach (CREATE TABLE's Table does)."""
    translate = op.get_bind().get_execution_options().get("schema_translate_map") or {}
    schema: str | None = translate.get(None)
    return schema


def upgrade() -> None:
    op.add_column(
        "tasks",
        sa.Column("replica", sa.Text(), nullable=False, server_default=""),
        schema=_schema(),
    )


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=_schema()) as batch:
        batch.drop_column("replica")
