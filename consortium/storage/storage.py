"""`Storage`: the `Database` of each store, made from a `Location` (url.py).

The stores and their SQLite files (the names nodes have always used, so an existing data
directory is read as it is):

| store      | SQLite file in DIR    | PostgreSQL schema       |
|------------|-----------------------|-------------------------|
| tasks      | node.sqlite3          | consortium_tasks        |
| records    | node.sqlite3          | consortium_records      |
| replay     | replay.sqlite3        | consortium_replay       |
| api_keys   | api-keys.sqlite3      | consortium_api_keys     |
| trust      | trust.sqlite3         | consortium_trust        |
| redaction  | redaction.sqlite3     | consortium_redaction    |
| audit      | audit.sqlite3         | consortium_audit        |
| replicas   | (none: one process)   | consortium_replicas     |
| limits     | (none: one process)   | consortium_limits       |

SQLite: an engine per file (WAL, `synchronous=NORMAL`, a 10 s busy timeout; a private
store's file 0600 before SQLite opens it); a transaction (`Database.begin`) starts with
`BEGIN IMMEDIATE`, so a read-then-write never meets "database is locked" half-way, and a
read (`Database.connect`) with a deferred BEGIN. PostgreSQL: one pool for every store,
`pool_pre_ping`, a connect timeout and a statement timeout, so a database that is down
or hangs costs a bounded wait and a `StorageUnavailable`, never a hung request.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool

from consortium.errors import ConfigError
from consortium.sqlite import connect
from consortium.storage.database import READ_OPTION, Database
from consortium.storage.url import Location


@dataclass(frozen=True)
class Store:
    name: str
    file: str  # its SQLite file ('' : PostgreSQL only)
    private: bool = False  # the SQLite file is 0600

    @property
    def schema(self) -> str:
        return f"consortium_{self.name}"


STORES: dict[str, Store] = {
    s.name: s
    for s in (
        Store("tasks", "node.sqlite3"),
        Store("records", "node.sqlite3"),
        Store("replay", "replay.sqlite3"),
        Store("api_keys", "api-keys.sqlite3", private=True),
        Store("trust", "trust.sqlite3", private=True),
        Store("redaction", "redaction.sqlite3", private=True),
        Store("audit", "audit.sqlite3", private=True),
        Store("replicas", ""),
        Store("limits", ""),
    )
}


@dataclass(frozen=True)
class PoolSettings:
    """PostgreSQL's pool and timeouts ([storage] in node.toml)."""

    pool_size: int = 8
    max_overflow: int = 8
    pool_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    statement_timeout_s: float = 15.0
    application_name: str = "consortium"


class Storage:
    """The databases of one node's stores at `location` (see the module docstring)."""

    def __init__(self, location: Location, settings: PoolSettings | None = None) -> None:
        self.location = location
        self.settings = settings or PoolSettings()
        self._databases: dict[str, Database] = {}
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()
        # Calls made off the event loop (Database.run): as many threads as connections.
        size = self.settings.pool_size + self.settings.max_overflow
        self.executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="storage")
        self._pg: Engine | None = None

    @property
    def kind(self) -> str:
        return self.location.kind

    def database(self, store: str) -> Database:
        """The store's Database (made once)."""
        try:
            spec = STORES[store]
        except KeyError:
            raise ValueError(f"no store {store!r}") from None
        with self._lock:
            db = self._databases.get(store)
            if db is None:
                db = self._databases[store] = self._make(spec)
            return db

    def sqlite_path(self, store: str) -> Path:
        """The SQLite file of a store (SQLite storage only)."""
        spec = STORES[store]
        if self.location.directory is None or not spec.file:
            raise ValueError(f"store {store!r} has no SQLite file here")
        return self.location.directory / spec.file

    def _make(self, spec: Store) -> Database:
        if self.location.kind == "sqlite":
            if not spec.file:
                raise ValueError(f"store {spec.name!r} is kept on PostgreSQL only")
            path = self.sqlite_path(spec.name)
            engine = self._engines.get(spec.file)
            if engine is None:
                engine = self._engines[spec.file] = sqlite_engine(path, private=spec.private)
            return Database(engine, where=str(path.resolve()), executor=self.executor)
        if self._pg is None:
            self._pg = postgresql_engine(self.location, self.settings)
        engine = self._pg.execution_options(schema_translate_map={None: spec.schema})
        return Database(engine, where=self.location.shown, executor=self.executor)

    def probe(self) -> None:
        """One round trip that commits (clearing a recorded fault); StorageUnavailable
        when the database cannot be reached. PostgreSQL only: SQLite files are probed by
        consortium.sqlite.probe."""
        db = self.database("replicas")
        with db.begin() as conn:
            conn.exec_driver_sql("SELECT 1")

    def close(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.dispose()
            if self._pg is not None:
                self._pg.dispose()
            self._engines.clear()
            self._databases.clear()
            self._pg = None
        self.executor.shutdown(wait=False)


def sqlite_engine(path: Path, *, private: bool = False) -> Engine:
    """An engine on one SQLite file (see the module docstring)."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def creator() -> sqlite3.Connection:
        if path.exists() and not path.is_file():  # never chmod (or open) a directory
            raise IsADirectoryError(errno.EISDIR, "not a database file", str(path))
        # WAL, NORMAL sync, busy timeout, 0600 for a private file, storage faults mapped.
        return connect(path, private=private)

    engine = create_engine(
        f"sqlite:///{path}", creator=creator, poolclass=QueuePool, pool_size=4, max_overflow=8
    )

    @event.listens_for(engine, "begin")
    def begin(conn: Any) -> None:
        read = conn.get_execution_options().get(READ_OPTION, False)
        conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")

    return engine


def postgresql_engine(location: Location, settings: PoolSettings) -> Engine:
    """The pool every store of a node shares on PostgreSQL."""
    assert location.url is not None
    connect_args: dict[str, Any] = {
        "connect_timeout": max(1, round(settings.connect_timeout_s)),
        "options": f"-c statement_timeout={round(settings.statement_timeout_s * 1000)}",
        "application_name": settings.application_name,
    }
    if location.password:
        connect_args["password"] = location.password
    try:
        engine = create_engine(
            location.url,
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
            pool_timeout=settings.pool_timeout_s,
            pool_pre_ping=True,
            pool_recycle=1800,
            connect_args=connect_args,
        )
    except Exception as e:  # a driver option SQLAlchemy refuses
        raise ConfigError(f"{location.shown}: {e}", key="storage.url") from None

    @event.listens_for(engine, "connect")
    def connected(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Every connection speaks UTC and reads committed data.
        with dbapi_connection.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
        dbapi_connection.commit()

    return engine
