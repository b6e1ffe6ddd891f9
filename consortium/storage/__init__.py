"""Where a node keeps the state that must survive it: one layer under every store
(tasks, replay cache, API keys, reputation, routing records, redaction receipts and
vaults, the audit log), chosen by node.toml's `[storage] url`.

- `sqlite:///DIR` (the default, DIR the node's data directory): a file per store, as
  one process needs — zero set-up;
- `postgresql://USER@HOST:PORT/DB`: one PostgreSQL database shared by every replica of
  an organization's node, a schema per store (`consortium_replay`, ...), the password
  from a 0600 file or an environment variable, never from node.toml.

Every store talks SQLAlchemy Core to a `Database` (database.py): one store's tables on
one engine, its faults (a full disk, a database that went away) raised as one
`StorageUnavailable` whatever the store; `Storage` (storage.py) makes them from the
URL. Each store's schema has its own Alembic history (migrations.py, migrations/STORE/),
applied at start-up and by `consortium db upgrade`.

The calls are synchronous — the trust layer's checks are plain functions of their
stores, used alike by the node, the CLI and the auditor's tools — and the node makes
them off its event loop (a thread per call, `Database.run`).
"""
