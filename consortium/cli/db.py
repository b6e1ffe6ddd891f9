"""`consortium db upgrade | status | migrate`: a node's state storage ([storage] url in
node.toml; consortium/storage): bring its schema to this version's, show where each
store is, and copy a node's state from its SQLite data directory to PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from consortium.cli.common import out, run
from consortium.errors import ConfigError

ConfigArg = Annotated[Path, typer.Option("--config", "-c", help="Path to node.toml.")]


def db_upgrade(config: ConfigArg) -> None:
    """Bring every store's schema to this version's (what a node with `migrate = "auto"`
    does at start; run it before starting replicas that use `migrate = "check"`)."""
    from consortium.node.config import load_config
    from consortium.storage import migrations
    from consortium.storage.storage import Storage

    def go() -> None:
        cfg = load_config(config)
        storage = Storage(cfg.storage_location(), cfg.storage_settings())
        try:
            done = migrations.upgrade(storage)
        finally:
            storage.close()
        where = storage.location.shown
        if done:
            out.print(f"{where}: upgraded {', '.join(sorted(done))}", highlight=False, markup=False)
        else:
            out.print(f"{where}: every store is up to date", highlight=False, markup=False)

    run(go)


def db_status(config: ConfigArg) -> None:
    """Each store: where it is kept, its schema revision and this version's."""
    from consortium.node.config import load_config
    from consortium.storage import migrations
    from consortium.storage.storage import Storage

    def go() -> None:
        cfg = load_config(config)
        storage = Storage(cfg.storage_location(), cfg.storage_settings())
        try:
            table = Table(title=storage.location.shown)
            for col in ("store", "revision", "this version's", "state"):
                table.add_column(col)
            for store in migrations.stores_of(storage):
                have = migrations.current(storage.database(store), store)
                head = migrations.head(store)
                state = "up to date" if head in have else "needs `consortium db upgrade`"
                table.add_row(store, ", ".join(sorted(have)) or "-", head, state)
        finally:
            storage.close()
        out.print(table)

    run(go)


def db_migrate(
    source: Annotated[
        str, typer.Option("--from", help="The node's current storage: sqlite:///DATA_DIR.")
    ],
    dest: Annotated[
        str, typer.Option("--to", help="The new storage: postgresql://USER@HOST/DATABASE.")
    ],
    password_file: Annotated[
        Path | None,
        typer.Option(help="A 0600 file with the PostgreSQL password (or PGPASSWORD)."),
    ] = None,
) -> None:
    """Copy a stopped node's state (tasks, keys, reputations, records, receipts, the audit
    log...) into an empty PostgreSQL database; then point node.toml's storage url at it."""
    from consortium.storage.copy import copy_storage
    from consortium.storage.storage import Storage
    from consortium.storage.url import parse_location

    def go() -> None:
        here = Path.cwd()
        origin = parse_location(source, base_dir=here, data_dir=here)
        if origin.kind != "sqlite":
            raise ConfigError("migrate copies from a node's SQLite data directory", key="--from")
        assert origin.directory is not None
        if not origin.directory.is_dir():
            raise ConfigError(f"{origin.directory} is not a directory", key="--from")
        if (origin.directory / "endpoints.json").exists():
            raise ConfigError(
                f"the node using {origin.directory} is running (its endpoints.json exists): "
                "stop it first",
                key="--from",
            )
        target = parse_location(
            dest,
            base_dir=here,
            data_dir=here,
            password_file=str(password_file) if password_file else "",
        )
        if target.kind != "postgresql":
            raise ConfigError("migrate copies into a PostgreSQL database", key="--to")
        src, dst = Storage(origin), Storage(target)
        try:
            copied = copy_storage(src, dst)
        finally:
            src.close()
            dst.close()
        for c in copied:
            rows = ", ".join(f"{t} {n}" for t, n in c.rows.items())
            out.print(f"{c.store}: {rows}", highlight=False, markup=False)
        out.print(
            f"copied into {target.shown}; set [storage] url to it (and password_file), then "
            "start the node",
            highlight=False,
            markup=False,
        )

    run(go)
