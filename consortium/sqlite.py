"""Opening the SQLite databases a node keeps (tasks, replay cache, routing records, keys,
reputations, disclosures, the audit log), and what a storage fault looks like to the rest
of the node.

`connect` opens WAL mode, NORMAL sync (durable across process crashes), a busy timeout
instead of immediate "database is locked" errors. Shared by node, trust, redaction and
federation, which may not import each other.

Every connection is a `StorageConnection`: an SQLite error that means the node cannot
write — the disk (or quota) is full, the file system is read-only, an I/O error — leaves
it as one `StorageUnavailable` ("this node cannot write: disk full"), whichever store
met it, so the edges map one error to UNAVAILABLE / HTTP 503 rather than each store
catching its own. The fault is recorded in `STORAGE` (what /healthz reports) and logged
once per `LOG_INTERVAL_S` per database, not once per failed request; the first write
that commits again clears it. A COMMIT that fails is rolled back, so the connection is
usable again as soon as the disk is, and a ROLLBACK after SQLite already rolled back
(it does on SQLITE_FULL) is a no-op rather than a second error.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from consortium.errors import StorageUnavailable

log = logging.getLogger(__name__)

_T = TypeVar("_T")

PRIVATE_FILE = 0o600
LOG_INTERVAL_S = 60.0

# SQLite's primary result codes (the low byte of an extended code) that mean "cannot write".
_SQLITE_PROBLEMS = {
    sqlite3.SQLITE_FULL: "disk_full",
    sqlite3.SQLITE_READONLY: "read_only",
    sqlite3.SQLITE_IOERR: "io_error",
}
_ERRNO_PROBLEMS = {
    errno.ENOSPC: "disk_full",
    errno.EDQUOT: "disk_full",
    errno.EROFS: "read_only",
    errno.EIO: "io_error",
}


def storage_problem(error: BaseException) -> str | None:
    """ "disk_full", "read_only" or "io_error" when `error` (an SQLite or OS error) means
    the node cannot write its data; None for any other error."""
    if isinstance(error, StorageUnavailable):
        return error.problem
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        return _SQLITE_PROBLEMS.get(code & 0xFF) if isinstance(code, int) else None
    if isinstance(error, OSError) and error.errno is not None:
        return _ERRNO_PROBLEMS.get(error.errno)
    return None


@dataclass
class Fault:
    """A database this process could not write to, since when, and how often since."""

    database: str
    problem: str
    since: float
    failures: int = 0
    logged_at: float = 0.0
    unlogged: int = 0


class StorageFaults:
    """The databases of this process that cannot be written now (by path). A node reads
    the ones under its data directory; several nodes may share a process (tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._faults: dict[str, Fault] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def record(self, database: str, problem: str) -> StorageUnavailable:
        """Records a failed write; logs it unless this database's fault was logged less
        than LOG_INTERVAL_S ago. Returns the error to raise."""
        now = self._clock()
        with self._lock:
            fault = self._faults.get(database)
            if fault is None or fault.problem != problem:
                fault = self._faults[database] = Fault(database, problem, time.time())
            fault.failures += 1
            fault.unlogged += 1
            due = fault.logged_at == 0.0 or now - fault.logged_at >= LOG_INTERVAL_S
            if due:
                count, fault.unlogged, fault.logged_at = fault.unlogged, 0, now
        error = StorageUnavailable(problem)
        if due:
            log.error(
                "%s: %s (%d failed write(s) since the last report; next report in %.0f s)",
                database,
                error,
                count,
                LOG_INTERVAL_S,
            )
        return error

    def clear(self, database: str) -> None:
        """A write to `database` committed: it is writable again."""
        if database not in self._faults:  # the common case, without the lock
            return
        with self._lock:
            fault = self._faults.pop(database, None)
        if fault is not None:
            log.warning(
                "%s: writable again after %d failed write(s) (%s)",
                database,
                fault.failures,
                fault.problem.replace("_", " "),
            )

    def get(self, database: str) -> Fault | None:
        """The standing fault of one database (None: it takes writes)."""
        with self._lock:
            return self._faults.get(database)

    def under(self, directory: Path) -> list[Fault]:
        """The faults of the databases in `directory` (and below), oldest first."""
        root = str(directory.resolve())
        with self._lock:
            faults = [f for d, f in self._faults.items() if _is_under(d, root)]
        return sorted(faults, key=lambda f: f.since)


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


STORAGE = StorageFaults()


class StorageConnection(sqlite3.Connection):
    """An SQLite connection whose storage faults raise `StorageUnavailable` (and are
    recorded in STORAGE), and whose committed writes clear them."""

    def __init__(self, database: str | os.PathLike[str], *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        self.database = str(Path(database).resolve())
        self._changes = 0

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        if not self.in_transaction and sql.strip().upper() == "ROLLBACK":
            # SQLite rolls a transaction back by itself on some errors (SQLITE_FULL): the
            # caller's ROLLBACK must not replace the error it is handling with another.
            return self.cursor()
        return self._guarded(lambda: super(StorageConnection, self).execute(sql, parameters), sql)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        return self._guarded(
            lambda: super(StorageConnection, self).executemany(sql, parameters), sql
        )

    def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
        return self._guarded(lambda: super(StorageConnection, self).executescript(sql_script), "")

    def commit(self) -> None:
        self._guarded(lambda: super(StorageConnection, self).commit(), "COMMIT")

    def _guarded(self, run: Callable[[], _T], sql: str) -> _T:
        try:
            result = run()
        except (sqlite3.Error, OSError) as e:
            problem = storage_problem(e)
            if problem is None:
                raise
            if self.in_transaction and sql.strip().upper() in ("COMMIT", "END"):
                # The caller thinks the transaction over: never leave it open.
                with contextlib.suppress(sqlite3.Error):
                    super().rollback()
            self._changes = self.total_changes  # what failed is no evidence of a write
            raise STORAGE.record(self.database, problem) from e
        if not self.in_transaction and self.total_changes != self._changes:
            # Rows changed outside a transaction, or by one that just ended: committed,
            # unless it ended by a rollback.
            committed = sql.strip().upper() != "ROLLBACK"
            self._changes = self.total_changes
            if committed:
                STORAGE.clear(self.database)
        return result


def connect(path: Path, *, private: bool = False) -> sqlite3.Connection:
    """An autocommit connection usable from any thread (callers serialise with a lock).

    `private`: the database file is created with mode 0600 before SQLite opens it (never
    readable by others, not even for a moment), and an existing one is made 0600. SQLite
    gives the journal files it creates (`-wal`, `-shm`) the database file's mode; ones a
    previous opening left behind are made 0600 too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if private:
        # Created 0600 only when missing: closing a descriptor of a database file this
        # process has open elsewhere would drop every POSIX lock SQLite holds on it.
        if not path.exists():
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
        path.chmod(PRIVATE_FILE)
    conn = sqlite3.connect(
        path,
        check_same_thread=False,
        isolation_level=None,
        timeout=10.0,
        factory=StorageConnection,
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    if private:
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{path}{suffix}").chmod(PRIVATE_FILE)
    return conn


PROBE_SCHEMA = "CREATE TABLE IF NOT EXISTS storage_probe (at REAL NOT NULL, pad BLOB NOT NULL)"


def probe(database: str) -> bool:
    """Whether `database` takes a write now: one row of a page's size inserted and deleted
    through a connection of its own (each a committed write, which clears the fault)."""
    try:
        conn = sqlite3.connect(
            database, isolation_level=None, timeout=1.0, factory=StorageConnection
        )
    except sqlite3.Error:
        return False
    try:
        conn.execute(PROBE_SCHEMA)
        conn.execute("INSERT INTO storage_probe VALUES (?, randomblob(4096))", (time.time(),))
        conn.execute("DELETE FROM storage_probe")
    except (sqlite3.Error, StorageUnavailable):
        return False
    finally:
        conn.close()
    return True


def check_writable(directory: Path) -> None:
    """Raises StorageUnavailable (naming `directory`) unless a file can be created and
    written there: what a node checks before it opens any database."""
    test = directory / f".write-test-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(test, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        problem = storage_problem(e)
        if problem is None and e.errno in (errno.EACCES, errno.EPERM):
            problem = "no_permission"
        if problem is None:
            raise
        raise StorageUnavailable(problem, where=str(directory)) from None
    finally:
        with contextlib.suppress(OSError):
            test.unlink()
