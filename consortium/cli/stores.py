"""Where a command finds one of a node's stores, by its node.toml's `[storage] url`: the
store's SQLite file (a Path: the store opens it, and a command that only reads may refuse
a missing one), or the store's Database on the PostgreSQL database the node's replicas
share (left open until the command's process ends)."""

from __future__ import annotations

from pathlib import Path

from consortium.node.config import NodeConfig
from consortium.storage.database import Database
from consortium.storage.storage import STORES, Storage


def store_of(cfg: NodeConfig, store: str) -> Path | Database:
    location = cfg.storage_location()
    if location.directory is not None:
        return location.directory / STORES[store].file
    return Storage(location, cfg.storage_settings()).database(store)
