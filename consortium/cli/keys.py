"""`consortium keys create | list | revoke`: API keys for this node's local users and
apps, kept (hashed) where the node keeps them (`[storage] url`: the data directory's
api-keys.sqlite3, or the PostgreSQL database its replicas share); a running node sees a
change from its next call on (on PostgreSQL, every replica within api_keys.CACHE_S)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from consortium.cli.common import err, run, write_through
from consortium.errors import ConfigError
from consortium.node.config import load_config


def keys_create(
    name: Annotated[str, typer.Argument(help="A name for the key: who or what uses it.")],
    config: Annotated[Path, typer.Option("--config", "-c", help="Path to node.toml.")],
    expires: Annotated[
        str | None, typer.Option(help="Expiry: an ISO 8601 time or a duration (30d, 12h).")
    ] = None,
    admin: Annotated[bool, typer.Option(help="May read /healthz details.")] = False,
) -> None:
    """Create an API key and print it once (only its hash is kept)."""

    def go() -> None:
        expires_at = _parse_expiry(expires) if expires is not None else None
        with _open_keys(config) as keys:
            key, token = keys.create(name, expires_at=expires_at, admin=admin)
        write_through(token + "\n")
        err.print(
            f"[dim]key {key.id} ({key.name}) created; it is shown only now[/dim]", highlight=False
        )

    run(go)


def keys_list(
    config: Annotated[Path, typer.Option("--config", "-c", help="Path to node.toml.")],
) -> None:
    """List the node's API keys (ids, names, state; never the keys)."""
    import time
    from datetime import UTC, datetime

    def when(t: float | None) -> str:
        return "-" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def go() -> None:
        with _open_keys(config) as keys:
            rows = keys.all()
        now = time.time()
        for k in rows:
            write_through(
                f"{k.id}  {k.name}  {k.state(now)}  {'admin' if k.admin else 'user'}  "
                f"created {when(k.created_at)}  expires {when(k.expires_at)}\n"
            )

    run(go)


def keys_revoke(
    key: Annotated[
        str, typer.Argument(help="The key's id, or its name (revokes all of that name).")
    ],
    config: Annotated[Path, typer.Option("--config", "-c", help="Path to node.toml.")],
) -> None:
    """Revoke an API key; a running node refuses it from the next call on."""

    def go() -> None:
        with _open_keys(config) as keys:
            revoked = keys.revoke(key)
        for k in revoked:
            write_through(f"revoked {k.id} ({k.name})\n")

    run(go)


def _parse_expiry(value: str) -> float:
    """An ISO 8601 time (UTC if no zone), or a duration: 30d, 12h, 45m."""
    import re
    import time
    from datetime import UTC, datetime

    m = re.fullmatch(r"(\d{1,6})([dhm])", value.strip())
    if m:
        return time.time() + int(m.group(1)) * {"d": 86400, "h": 3600, "m": 60}[m.group(2)]
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigError(
            f"not a time or duration: {value!r} (e.g. 2027-01-31T00:00:00Z or 30d)",
            key="--expires",
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


@contextmanager
def _open_keys(config: Path) -> Iterator[Any]:
    """The node's key table, where its `[storage] url` keeps it."""
    from consortium.storage import migrations
    from consortium.storage.storage import STORES, Storage
    from consortium.trust.api_keys import ApiKeys
    from consortium.trust.files import secure_directory

    cfg = load_config(config)
    location = cfg.storage_location()
    if location.kind == "sqlite":
        assert location.directory is not None
        secure_directory(location.directory)
        keys = ApiKeys(location.directory / STORES["api_keys"].file)
        try:
            yield keys
        finally:
            keys.close()
        return
    storage = Storage(location, cfg.storage_settings())
    try:
        migrations.upgrade(storage, ["api_keys"])
        keys = ApiKeys(storage.database("api_keys"))
        try:
            yield keys
        finally:
            keys.close()
    finally:
        storage.close()
