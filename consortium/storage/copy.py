"""Copying a node's state from one storage to another (`consortium db migrate`): every
row of every table of each store, as stored — the audit log's entries and checkpoints
byte for byte, so the copied log verifies with the same roots.

The destination is first brought to this version's schema (migrations), and must be
empty: a copy never merges into existing state. The source is read through its own
migrated schema too (an older data directory is upgraded in place first, as a node's
start would). Tables are read from the destination's schema and copied by column name,
in primary-key order, in batches; values are converted only where the destination's
type asks (SQLite keeps booleans as integers). On PostgreSQL the sequences of
auto-numbered columns are moved past the copied rows. Each store is copied in one
destination transaction: a failure leaves it empty, not half-copied.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Boolean,
    Connection,
    MetaData,
    Table,
    create_engine,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.pool import StaticPool

from consortium.errors import ConfigError
from consortium.storage import migrations
from consortium.storage.database import Database
from consortium.storage.storage import STORES, Storage

BATCH = 1000
VERSION_TABLE = migrations.VERSION_TABLE


@dataclass(frozen=True)
class Copied:
    store: str
    rows: dict[str, int]  # table -> rows copied


def copy_storage(source: Storage, dest: Storage) -> list[Copied]:
    """Copies every store `source` holds into `dest` (see the module docstring). Raises
    ConfigError naming the store and table when the destination is not empty."""
    stores = [s for s in migrations.stores_of(source) if s in migrations.stores_of(dest)]
    migrations.upgrade(source, stores)
    migrations.upgrade(dest)  # every store, those only PostgreSQL keeps too
    for store in stores:
        with dest.database(store).connect() as conn:
            for table in _tables(conn, store):
                if conn.execute(select(func.count()).select_from(table)).scalar():
                    raise ConfigError(
                        f"{dest.location.shown} already holds {store} state (table "
                        f"{table.name}): migrate only into an empty database",
                        key="--to",
                    )
    return [_copy_store(source, dest, store) for store in stores]


def _copy_store(source: Storage, dest: Storage, store: str) -> Copied:
    rows: dict[str, int] = {}
    with source.database(store).connect() as src, dest.database(store).begin() as dst:
        targets = _tables(dst, store)
        sources = {t.name: t for t in _tables(src, store)}
        for target in targets:
            origin = sources.get(target.name)
            if origin is None:
                rows[target.name] = 0
                continue
            count = 0
            for batch in _batches(src, origin, target):
                dst.execute(insert(target), batch)
                count += len(batch)
            rows[target.name] = count
            _advance_sequences(dst, target)
    return Copied(store, rows)


def _tables(conn: Connection, store: str) -> list[Table]:
    """The store's tables where `conn` reaches them (its file, or its schema), without
    the migrations' version table; on SQLite only the tables of this store's history
    (node.sqlite3 holds two stores)."""
    schema = STORES[store].schema if conn.dialect.name == "postgresql" else None
    metadata = MetaData()
    metadata.reflect(bind=conn, schema=schema)
    mine = _store_tables(store)
    return [
        t
        for t in metadata.sorted_tables
        if t.name != VERSION_TABLE and not t.name.startswith("sqlite_") and t.name in mine
    ]


@functools.cache
def _store_tables(store: str) -> frozenset[str]:
    """The tables a store's migrations make (run on an in-memory SQLite database)."""
    engine = create_engine("sqlite://", poolclass=StaticPool)
    try:
        db = Database(engine, where=":memory:")
        migrations.upgrade_database(db, store)
        with engine.connect() as conn:
            names = conn.execute(
                text("SELECT name FROM sqlite_master WHERE type = 'table'")
            ).scalars()
            return frozenset(n for n in names if n != VERSION_TABLE and not n.startswith("sqlite_"))
    finally:
        engine.dispose()


def _batches(src: Connection, origin: Table, target: Table) -> Iterator[list[dict[str, Any]]]:
    columns = [c for c in target.columns if c.name in origin.columns]
    order = [origin.columns[c.name] for c in target.primary_key.columns] or [
        origin.columns[columns[0].name]
    ]
    booleans = {c.name for c in columns if isinstance(c.type, Boolean)}
    result = src.execution_options(yield_per=BATCH).execute(
        select(*(origin.columns[c.name] for c in columns)).order_by(*order)
    )
    for part in result.partitions(BATCH):
        yield [
            {
                c.name: bool(v) if c.name in booleans and v is not None else v
                for c, v in zip(columns, row, strict=True)
            }
            for row in part
        ]


def _advance_sequences(dst: Connection, table: Table) -> None:
    if dst.dialect.name != "postgresql":
        return
    qualified = f"{table.schema}.{table.name}" if table.schema else table.name
    for column in table.primary_key.columns:
        sequence = dst.execute(
            text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": qualified, "c": column.name}
        ).scalar()
        if sequence:
            dst.execute(
                text(
                    f"SELECT setval(:s, COALESCE((SELECT max({column.name}) FROM {qualified}), 0)"
                    " + 1, false)"
                ),
                {"s": sequence},
            )
