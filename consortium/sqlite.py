"""Opening the SQLite databases a node keeps (tasks, replay cache, routing records):
WAL mode, NORMAL sync (durable across process crashes), a busy timeout instead of
immediate "database is locked" errors. Shared by node, trust and federation, which may
not import each other."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect(path: Path) -> sqlite3.Connection:
    """An autocommit connection usable from any thread (callers serialise with a lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn
