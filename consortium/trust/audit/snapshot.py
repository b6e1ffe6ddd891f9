"""An audit log kept in a database (trust.audit.log; PostgreSQL, where an organization
runs several replicas) copied into an SQLite file of the same tables: what the auditor's
tools (trust.audit.verify: verify, export, a witness's record) read, as they read a copy
of a node's own SQLite file. One consistent snapshot (a REPEATABLE READ transaction: the
entries and the checkpoints of one moment, whatever the replicas append meanwhile); the
database is never written. (It copies an SQLite-kept log too: a read transaction.)"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.dialects import sqlite
from sqlalchemy.schema import CreateTable

from consortium.storage import migrations
from consortium.storage.database import Database
from consortium.trust.audit.log import CHECKPOINTS, COSIGNATURES, ENTRIES, META, WITNESSED

TABLES = (META, ENTRIES, CHECKPOINTS, COSIGNATURES, WITNESSED)
BATCH = 5000  # rows read and written at once


def copy_log(db: Database, path: Path) -> bool:
    """Copies the log in `db` into a new SQLite file `path`; False (no file) when `db`
    holds no log (its schema was never made). Raises StorageUnavailable when the
    database cannot be reached."""
    if not migrations.current(db, "audit"):
        return False
    target = sqlite3.connect(path)
    try:
        for table in TABLES:
            target.execute(str(CreateTable(table).compile(dialect=sqlite.dialect())))
        with db.connect() as conn:
            snapshot = conn.execution_options(yield_per=BATCH)
            if conn.dialect.name == "postgresql":  # SQLite's read transaction is one already
                snapshot = snapshot.execution_options(isolation_level="REPEATABLE READ")
            for table in TABLES:
                marks = ", ".join("?" * len(table.columns))
                sql = f"INSERT INTO {table.name} VALUES ({marks})"
                rows = snapshot.execute(select(table).order_by(*table.primary_key.columns))
                for part in rows.partitions():
                    target.executemany(sql, [tuple(row) for row in part])
        target.commit()
    finally:
        target.close()
    return True
