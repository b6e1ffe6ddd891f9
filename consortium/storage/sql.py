"""What differs between SQLite and PostgreSQL that the stores need, in one place."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite

from consortium.storage.database import Database


def insert(db: Database, table: Table) -> Any:
    """The dialect's INSERT for `table`, with `on_conflict_do_nothing` and
    `on_conflict_do_update` (SQLite 3.24+ and PostgreSQL share the form)."""
    if db.dialect == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
