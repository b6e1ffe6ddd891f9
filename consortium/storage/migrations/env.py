"""Alembic's environment for every store's migrations (run by `migrations.upgrade`, never
by the `alembic` command): the connection, version table and its schema come from the
caller through `config.attributes`."""

from __future__ import annotations

from alembic import context

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=None,
    version_table=config.attributes["version_table"],
    version_table_schema=config.attributes["version_table_schema"],
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()
