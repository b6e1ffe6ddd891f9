"""records: the routing records (learned router's features, decision, outcome) and the
feature layouts they use (learning/records.py). On SQLite they share node.sqlite3 with
the task store (each store's head in its version table).

A node.sqlite3 (or a training org-N.sqlite3) made before migrations is taken as it is.

Revision ID: records_0001
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "records_0001"
down_revision = None
branch_labels = ("records",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "routing_feature_sets",
        sa.Column("digest", sa.Text(), nullable=False),
        sa.Column("names", sa.Text(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
        if_not_exists=True,
    )
    op.create_table(
        "routing_records",
        sa.Column("record_id", sa.Text(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("created", sa.Float(precision=53), nullable=False),
        sa.Column("feature_set", sa.Text(), nullable=False),
        sa.Column("features", sa.LargeBinary(), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("router", sa.Text(), nullable=False),
        sa.Column("route", sa.Text(), nullable=False),
        sa.Column("local_choice", sa.Integer(), nullable=True),
        sa.Column("final_choice", sa.Integer(), nullable=True),
        sa.Column("local_adequate", sa.Integer(), nullable=True),
        sa.Column("escalation_helps", sa.Integer(), nullable=True),
        sa.Column("label_source", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["feature_set"], ["routing_feature_sets.digest"]),
        sa.PrimaryKeyConstraint("record_id"),
        if_not_exists=True,
    )
    op.create_index(
        "routing_records_by_set",
        "routing_records",
        ["feature_set", "created"],
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index("routing_records_by_set", "routing_records")
    op.drop_table("routing_records")
    op.drop_table("routing_feature_sets")
