"""Opening the SQLite databases a node keeps (tasks, replay cache, routing records):
WAL mode, NORMAL sync (durable across process crashes), a busy timeout instead of
immediate "database is locked" errors. Shared by node, trust, redaction and federation,
which may not import each other."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

PRIVATE_FILE = 0o600


def connect(path: Path, *, private: bool = False) -> sqlite3.Connection:
    """An autocommit connection usable from any thread (callers serialise with a lock).

    `private`: the database file is created with mode 0600 before SQLite opens it (never
    readable by others, not even for a moment), and an existing one is made 0600. SQLite
    gives the journal files it creates (`-wal`, `-shm`) the database file's mode; ones a
    previous opening left behind are made 0600 too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if private:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE))
        path.chmod(PRIVATE_FILE)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    if private:
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{path}{suffix}").chmod(PRIVATE_FILE)
    return conn
