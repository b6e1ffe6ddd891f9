"""Each store's schema as an Alembic history: one script directory (this package: env.py,
versions/), a branch per store (its `branch_labels`), so stores evolve apart and a
store's tables are made only where the store lives.

- SQLite: a store's history runs on its file; the version table (`alembic_version`) is in
  the file (node.sqlite3 holds the heads of tasks and records). A store's first revision
  creates its tables only if they do not exist, so a data directory made before the
  migrations is taken as it is.
- PostgreSQL: in the store's schema (`consortium_STORE`, made first), its version table
  there too; replicas starting at once take turns on an advisory lock.

`upgrade` brings stores to their heads (at start-up, and `consortium db upgrade`);
`pending` says what would run; a database whose version is one this code does not know
(a newer Consortium migrated it) is refused with `SchemaTooNew`, never touched.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy import Connection

from consortium.errors import ConsortiumError
from consortium.storage.database import Database
from consortium.storage.storage import STORES, Storage, sqlite_engine

HERE = Path(__file__).resolve().parent
VERSION_TABLE = "alembic_version"
MIGRATION_LOCK = 7361245390001  # pg_advisory_xact_lock's key while a store migrates


class SchemaTooNew(ConsortiumError):
    """The database was migrated by a newer Consortium than this one."""

    exit_code = 2


@functools.cache
def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("path_separator", "os")
    return config


def stores_of(storage: Storage) -> list[str]:
    """The stores with a schema history that live in this storage (on SQLite, those with
    a file)."""
    labelled = {label for r in script_directory().walk_revisions() for label in r.branch_labels}
    return [
        s.name
        for s in STORES.values()
        if s.name in labelled and (storage.kind == "postgresql" or s.file)
    ]


def current(db: Database, store: str) -> set[str]:
    """The store's revisions recorded in its database (empty: never migrated)."""
    with db.connect() as conn:
        return _current(conn, store)


def _current(conn: Connection, store: str) -> set[str]:
    schema = STORES[store].schema if conn.dialect.name == "postgresql" else None
    ctx = MigrationContext.configure(
        conn, opts={"version_table": VERSION_TABLE, "version_table_schema": schema}
    )
    heads = set(ctx.get_current_heads())
    branch = _branch_revisions(store)
    # On SQLite a file's version table also lists the heads of its other stores.
    known = {r.revision for r in script_directory().walk_revisions()}
    mine = {h for h in heads if h in branch}
    unknown = {h for h in heads if h not in known}
    if unknown:
        raise SchemaTooNew(
            f"{store}: the database is at schema revision {', '.join(sorted(unknown))}, which "
            "this Consortium does not know: a newer version migrated it; run that version "
            "(or restore a backup taken before its upgrade)"
        )
    return mine


@functools.cache
def _branch_revisions(store: str) -> frozenset[str]:
    script = script_directory()
    return frozenset(
        r.revision for r in script.walk_revisions() if store in _labels_of(script, r.revision)
    )


def _labels_of(script: ScriptDirectory, revision: str) -> set[str]:
    rev: Script | None = script.get_revision(revision)
    labels: set[str] = set()
    while rev is not None:
        labels |= set(rev.branch_labels)
        down = rev.down_revision
        rev = script.get_revision(down) if isinstance(down, str) else None
    return labels


def head(store: str) -> str:
    return script_directory().get_revision(f"{store}@head").revision


def pending(storage: Storage, stores: Iterable[str] | None = None) -> dict[str, str]:
    """Each store not at its head: store -> its head."""
    out = {}
    for store in stores or stores_of(storage):
        target = head(store)
        if target not in current(storage.database(store), store):
            out[store] = target
    return out


def upgrade(storage: Storage, stores: Iterable[str] | None = None) -> dict[str, str]:
    """Brings each store to its head; returns the stores migrated -> their head. Raises
    SchemaTooNew (nothing changed) for a database a newer version migrated."""
    chosen = list(stores or stores_of(storage))
    for store in chosen:
        current(storage.database(store), store)  # refuse before anything runs
    return {
        store: head(store) for store in chosen if upgrade_database(storage.database(store), store)
    }


def upgrade_database(db: Database, store: str) -> bool:
    """Brings one store's database to its head; whether anything ran."""
    target = head(store)
    with db.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Replicas starting together: one migrates, the others wait and find it done.
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{STORES[store].schema}"')
        if target in _current(conn, store):
            return False
        config = _config()
        config.attributes.update(
            connection=conn,
            version_table=VERSION_TABLE,
            version_table_schema=(
                STORES[store].schema if conn.dialect.name == "postgresql" else None
            ),
        )
        command.upgrade(config, f"{store}@head")
    return True


def open_sqlite(path: Path, store: str) -> Database:
    """A store's Database on one SQLite file, migrated: for the tools and tests that
    open a store without a node (its file, as a node keeps it)."""
    engine = sqlite_engine(path, private=STORES[store].private)
    db = Database(engine, where=str(path.resolve()))
    upgrade_database(db, store)
    return db
