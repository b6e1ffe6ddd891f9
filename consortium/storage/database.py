"""One store's database: its tables on an SQLAlchemy engine, and what a storage fault
looks like to the rest of the node.

`Database.begin()` is a transaction, `Database.connect()` a connection for reads. Any
error that means the node cannot store or read its state now — SQLite's full disk,
read-only file system or I/O error (consortium/sqlite.py maps them), PostgreSQL that is
down, restarting, unreachable, or out of connections — leaves as one
`StorageUnavailable` naming the problem ("database_unavailable" for PostgreSQL), and is
recorded in `consortium.sqlite.STORAGE` (what /healthz reports) under the database's
`where` (an SQLite file's path; the PostgreSQL URL, no password); the next transaction
that commits clears it. Connections are checked before use (`pool_pre_ping`), so a
database that comes back is used again without a restart.

On PostgreSQL each store's tables live in a schema of their own (`consortium_STORE`):
the engines of one `Storage` share one pool, each with its schema translated from the
tables' None (`schema_translate_map`), so the same Table objects and migrations serve
SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy import exc as sa_exc

from consortium.errors import StorageUnavailable
from consortium.sqlite import STORAGE, storage_problem

_T = TypeVar("_T")

# What a PostgreSQL driver error means for the node, by SQLSTATE class (the first two
# characters): connection exceptions, insufficient resources, operator intervention
# (the server shutting down), system errors.
_PG_UNAVAILABLE_CLASSES = ("08", "53", "57", "58")
# The execution option that marks a connection as a reader (SQLite: a deferred BEGIN).
READ_OPTION = "consortium_read"


class Database:
    """One store's tables on `engine` (see the module docstring). `where` names it in
    faults and logs; `dialect` is "sqlite" or "postgresql"."""

    def __init__(
        self, engine: Engine, *, where: str, executor: ThreadPoolExecutor | None = None
    ) -> None:
        self.engine = engine
        self.where = where
        self.dialect = engine.dialect.name
        self._executor = executor

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction: committed when the block ends, rolled back if it raises."""
        with self._faults(), self.engine.begin() as conn:
            yield conn
        STORAGE.clear(self.where)

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for reads (whatever it writes is rolled back at the end)."""
        with self._faults(), self.engine.connect() as conn:
            yield conn.execution_options(**{READ_OPTION: True})

    async def run(self, call: Callable[[], _T]) -> _T:
        """`call()` (which uses this database) in a thread, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, call)

    @contextmanager
    def _faults(self) -> Iterator[None]:
        try:
            yield
        except StorageUnavailable:
            raise
        except sa_exc.TimeoutError as e:  # no connection free in the pool in time
            raise STORAGE.record(self.where, "database_busy") from e
        except sa_exc.DBAPIError as e:
            problem = fault_of(e)
            if problem is None:
                raise
            raise STORAGE.record(self.where, problem) from e

    def dispose(self) -> None:
        self.engine.dispose()


def fault_of(error: sa_exc.DBAPIError) -> str | None:
    """The storage problem a driver error means, or None for any other error (a bug, a
    constraint the caller handles)."""
    original: Any = error.orig
    if error.connection_invalidated:
        return "database_unavailable"
    problem = storage_problem(original) if isinstance(original, BaseException) else None
    if problem is not None:
        return problem
    sqlstate = getattr(original, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate[:2] in _PG_UNAVAILABLE_CLASSES:
        return "database_unavailable"
    if isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError)) and (
        sqlstate is None and type(original).__module__.startswith("psycopg")
    ):
        # No SQLSTATE: the connection itself failed; libpq's message says why.
        message = str(original)
        if (
            "authentication failed" in message
            or "no password supplied" in message
            or ("role" in message and "does not exist" in message)
        ):
            return "database_auth"
        if "database" in message and "does not exist" in message:
            return "database_missing"
        return "database_unavailable"
    return None
