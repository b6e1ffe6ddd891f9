"""trust: reputations, evidence counts, members' trust reports, the opinions folded from
them, and the canaries this node sent (trust/reputation_store.py).

A trust.sqlite3 made before migrations is taken as it is; one made before the protocol
posterior and the canary verdict were kept (no p_alpha, p_beta, last_canary) gets those
columns, NULL in its rows (read as the prior).

Revision ID: trust_0001
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "trust_0001"
down_revision = None
branch_labels = ("trust",)
depends_on = None

_ADDED = (
    ("p_alpha", sa.Float(precision=53)),
    ("p_beta", sa.Float(precision=53)),
    ("last_canary", sa.Integer()),
)


def upgrade() -> None:
    real = sa.Float(precision=53)
    op.create_table(
        "reputation",
        sa.Column("peer", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("alpha", real, nullable=False),
        sa.Column("beta", real, nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("offences", sa.Integer(), nullable=False),
        sa.Column("quarantined_until", real, nullable=False),
        sa.Column("evidence", sa.Integer(), nullable=False),
        sa.Column("changed_at", real, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        *(sa.Column(name, kind, nullable=True) for name, kind in _ADDED),
        sa.PrimaryKeyConstraint("peer", "model"),
        sqlite_with_rowid=False,
        if_not_exists=True,
    )
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":  # PostgreSQL's table is new: made whole above
        have = {c["name"] for c in sa.inspect(bind).get_columns("reputation")}
        for name, kind in _ADDED:
            if name not in have:
                op.add_column("reputation", sa.Column(name, kind, nullable=True))
    op.create_table(
        "evidence_counts",
        sa.Column("peer", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("good", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("peer", "model", "kind", "good"),
        sqlite_with_rowid=False,
        if_not_exists=True,
    )
    op.create_table(
        "trust_reports",
        sa.Column("reporter", sa.Text(), nullable=False),
        sa.Column("issued_at", real, nullable=False),
        sa.Column("received_at", real, nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("reporter"),
        sqlite_with_rowid=False,
        if_not_exists=True,
    )
    op.create_table(
        "report_opinions",
        sa.Column("peer", sa.Text(), nullable=False),
        sa.Column("good", real, nullable=False),
        sa.Column("bad", real, nullable=False),
        sa.PrimaryKeyConstraint("peer"),
        sqlite_with_rowid=False,
        if_not_exists=True,
    )
    op.create_table(
        "canaries_sent",
        sa.Column("peer", sa.Text(), nullable=False),
        sa.Column("canary_id", sa.Text(), nullable=False),
        sa.Column("at", real, nullable=False),
        sa.Column("cost", sa.Integer(), nullable=False),
        if_not_exists=True,
    )
    op.create_index("canaries_sent_at", "canaries_sent", ["at"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index("canaries_sent_at", "canaries_sent")
    for table in ("canaries_sent", "report_opinions", "trust_reports", "evidence_counts"):
        op.drop_table(table)
    op.drop_table("reputation")
