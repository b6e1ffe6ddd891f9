"""audit: the audit log's tables (trust.audit.log): its entries (the Merkle tree's
leaves), signed checkpoints, the cosignatures its witnesses added, what this node
cosigned of other members' logs, and its meta (origin, format version, retention).

Revision ID: audit_0001
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "audit_0001"
down_revision = None
branch_labels = ("audit",)
depends_on = None

# A position or a tree size: 64 bits on PostgreSQL; on SQLite "INTEGER" exactly, so the
# entries' position is the table's rowid, as in the files made before migrations.
POSITION = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
        if_not_exists=True,
    )
    op.create_table(
        "entries",
        sa.Column("seq", POSITION, autoincrement=False, nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("leaf", sa.LargeBinary(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("trace_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        if_not_exists=True,
    )
    op.create_table(
        "checkpoints",
        sa.Column("size", POSITION, autoincrement=False, nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("time", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("size"),
        if_not_exists=True,
    )
    op.create_table(
        "cosignatures",
        sa.Column("size", POSITION, autoincrement=False, nullable=False),
        sa.Column("witness", sa.Text(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("time", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("size", "witness"),
        if_not_exists=True,
    )
    op.create_table(
        "witnessed",
        sa.Column("origin", sa.Text(), nullable=False),
        sa.Column("size", POSITION, autoincrement=False, nullable=False),
        sa.Column("root", sa.LargeBinary(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("time", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("origin"),
        if_not_exists=True,
    )


def downgrade() -> None:
    for table in ("witnessed", "cosignatures", "checkpoints", "entries", "meta"):
        op.drop_table(table)
