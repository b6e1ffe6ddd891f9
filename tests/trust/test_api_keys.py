"""API keys on the storage layer (trust/api_keys.py), on SQLite and on a real PostgreSQL
server: only hashes kept; create, list, revoke; a file made before the migrations taken
as it is; across two replicas (two Storage objects on one database) a key made through
one works on the other, and a revoked one stops working on both — at once where it was
revoked, within the cache's bound elsewhere."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from consortium.storage import migrations
from consortium.storage.storage import Storage
from consortium.storage.url import parse_location
from consortium.trust.api_keys import ApiKeyError, ApiKeys
from tests.conftest import PgDatabase


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def replicas(pg_database: PgDatabase, n: int) -> list[Storage]:
    storages = [pg_database.storage() for _ in range(n)]
    migrations.upgrade(storages[0], ["api_keys"])
    return storages


@pytest.fixture(params=["sqlite", "postgresql"])
def keys(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ApiKeys]:
    if request.param == "sqlite":
        store = ApiKeys(tmp_path / "api-keys.sqlite3")
        yield store
        store.close()
        return
    pg: PgDatabase = request.getfixturevalue("pg_database")
    (storage,) = replicas(pg, 1)
    store = ApiKeys(storage.database("api_keys"))
    yield store
    store.close()
    storage.close()


def test_a_key_works_until_revoked_and_only_its_hash_is_kept(keys: ApiKeys) -> None:
    key, token = keys.create("ci", admin=True)
    assert token.startswith(f"csk_{key.id}_") and len(token) == 4 + 12 + 1 + 43
    assert keys.authenticate(token) == key and key.admin
    assert asyncio.run(keys.authenticate_async(token)) == key
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert keys.authenticate(wrong) is None
    assert asyncio.run(keys.authenticate_async(wrong)) is None
    assert keys.authenticate(f"csk_{'f' * 12}_{token[-43:]}") is None  # unknown id
    assert keys.authenticate("not a key") is None
    assert asyncio.run(keys.authenticate_async("csk_short")) is None
    other, _ = keys.create("ci")  # names need not be unique
    assert [k.id for k in keys.all()] == [key.id, other.id]
    assert [k.state(time.time()) for k in keys.all()] == ["active", "active"]
    revoked = keys.revoke("ci")  # by name: every active key of that name
    assert sorted(k.id for k in revoked) == sorted([key.id, other.id])
    assert all(k.revoked_at is not None for k in revoked)
    assert keys.authenticate(token) is None
    assert asyncio.run(keys.authenticate_async(token)) is None
    assert [k.state(time.time()) for k in keys.all()] == ["revoked", "revoked"]
    with pytest.raises(ApiKeyError, match="no active key"):
        keys.revoke(key.id)


def test_bad_input_is_refused(keys: ApiKeys) -> None:
    with pytest.raises(ApiKeyError, match="name"):
        keys.create("bad name\n")
    with pytest.raises(ApiKeyError, match="name"):
        keys.create("")
    with pytest.raises(ApiKeyError, match="past"):
        keys.create("late", expires_at=time.time() - 1)
    with pytest.raises(ApiKeyError, match="no active key"):
        keys.revoke("nobody")
    assert keys.all() == []


def test_an_expired_key_stops_working(keys: ApiKeys) -> None:
    soon = time.time() + 60
    key, token = keys.create("soon", expires_at=soon)
    assert keys.authenticate(token, now=soon - 1) == key
    assert keys.authenticate(token, now=soon) is None
    assert asyncio.run(keys.authenticate_async(token, now=soon + 1)) is None
    assert keys.all()[0].state(soon) == "expired"


def test_the_sqlite_file_is_private_and_holds_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "api-keys.sqlite3"
    keys = ApiKeys(path)
    try:
        key, token = keys.create("ci")
        secret = token.removeprefix(f"csk_{key.id}_")
        assert secret.encode() not in path.read_bytes()
    finally:
        keys.close()
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)


def test_a_file_made_before_the_migrations_is_taken_as_it_is(tmp_path: Path) -> None:
    """A key table made by the old DDL, a key in it: the node's storage adopts the file."""
    path = tmp_path / "api-keys.sqlite3"
    old_keys = ApiKeys(tmp_path / "made-now.sqlite3")
    try:
        key, token = old_keys.create("legacy")
    finally:
        old_keys.close()
    with sqlite3.connect(tmp_path / "made-now.sqlite3") as src:
        row = src.execute("SELECT * FROM api_keys").fetchone()
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, hash BLOB NOT NULL,"
        " admin INTEGER NOT NULL, created_at REAL NOT NULL, expires_at REAL, revoked_at REAL)"
        " WITHOUT ROWID;"
    )
    old.execute("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, ?)", row)
    old.commit()
    old.close()
    storage = Storage(parse_location("", base_dir=tmp_path, data_dir=tmp_path))
    try:
        assert migrations.upgrade(storage, ["api_keys"]) == {
            "api_keys": migrations.head("api_keys")
        }
        keys = ApiKeys(storage.database("api_keys"))
        try:
            assert keys.authenticate(token) == key
            keys.revoke("legacy")
            assert keys.authenticate(token) is None
        finally:
            keys.close()
    finally:
        storage.close()


def test_a_revocation_by_another_connection_takes_effect_at_once_on_sqlite(
    tmp_path: Path,
) -> None:
    """The node's handle and the CLI's (`consortium keys revoke`) on one file."""
    path = tmp_path / "api-keys.sqlite3"
    node, cli = ApiKeys(path), ApiKeys(path)
    try:
        key, token = cli.create("app")
        assert node.authenticate(token) == key  # now remembered by the node's handle
        cli.revoke(key.id)
        assert node.authenticate(token) is None
        made, made_token = cli.create("later")
        assert asyncio.run(node.authenticate_async(made_token)) == made
    finally:
        node.close()
        cli.close()


def test_keys_across_two_replicas(pg_database: PgDatabase) -> None:
    a, b = replicas(pg_database, 2)
    clock = Clock()
    ka = ApiKeys(a.database("api_keys"), cache_s=5.0, clock=clock)
    kb = ApiKeys(b.database("api_keys"), cache_s=5.0, clock=clock)
    try:
        # Made through A, it works on B (and B's lookup ran off the event loop).
        key, token = ka.create("app")
        assert asyncio.run(kb.authenticate_async(token)) == key
        assert ka.authenticate(token) == key
        # Revoked through B: refused by B at once; A trusts what it read for at most
        # cache_s, then asks the database again and refuses it too.
        kb.revoke("app")
        assert kb.authenticate(token) is None
        clock.now += 4.9
        assert ka.authenticate(token) == key  # within the documented bound
        clock.now += 0.2
        assert asyncio.run(ka.authenticate_async(token)) is None
        assert ka.authenticate(token) is None
        assert [k.state(time.time()) for k in ka.all()] == ["revoked"]
    finally:
        ka.close()
        kb.close()
        a.close()
        b.close()


def test_two_replicas_revoking_at_once_revoke_each_key_once(pg_database: PgDatabase) -> None:
    a, b = replicas(pg_database, 2)
    ka, kb = ApiKeys(a.database("api_keys")), ApiKeys(b.database("api_keys"))
    try:
        for i in range(10):
            ka.create(f"app-{i}")
        for i in range(10):
            barrier = threading.Barrier(2)
            outcomes: list[Any] = []

            def revoke(
                store: ApiKeys, barrier: threading.Barrier, i: int, outcomes: list[Any]
            ) -> None:
                barrier.wait()
                try:
                    outcomes.append(len(store.revoke(f"app-{i}")))
                except ApiKeyError:
                    outcomes.append("none")

            threads = [
                threading.Thread(target=revoke, args=(s, barrier, i, outcomes)) for s in (ka, kb)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(outcomes, key=str) == [1, "none"], i
    finally:
        ka.close()
        kb.close()
        a.close()
        b.close()


def test_the_postgresql_schema(pg_database: PgDatabase) -> None:
    (storage,) = replicas(pg_database, 1)
    try:
        with storage.database("api_keys").connect() as conn:
            columns = (
                conn.execute(
                    text(
                        "SELECT column_name FROM information_schema.columns WHERE "
                        "table_schema = 'consortium_api_keys' AND table_name = 'api_keys' "
                        "ORDER BY ordinal_position"
                    )
                )
                .scalars()
                .all()
            )
        assert columns == [
            "id",
            "name",
            "hash",
            "admin",
            "created_at",
            "expires_at",
            "revoked_at",
        ]
    finally:
        storage.close()


def _in_another_process(path: Path, code: str) -> str:
    """Runs `code` with `keys` = ApiKeys(path) in a new process, as the CLI does."""
    script = (
        "import sys\nfrom pathlib import Path\nfrom consortium.trust.api_keys import ApiKeys\n"
        f"keys = ApiKeys(Path({str(path)!r}))\ntry:\n    print({code})\nfinally:\n"
        "    keys.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_cli_in_another_process_is_seen_by_a_running_node(tmp_path: Path) -> None:
    """The node's handle (its Storage, pooled connections) and `consortium keys` in
    another process: a read by the CLI, then a revocation, reach the node's next call.
    (Regression: opening the private file anew for each pooled connection dropped the
    process's SQLite locks, and the node stopped seeing other processes' commits.)"""
    storage = Storage(parse_location("", base_dir=tmp_path, data_dir=tmp_path))
    path = tmp_path / "api-keys.sqlite3"
    try:
        migrations.upgrade(storage, ["api_keys"])
        node = ApiKeys(storage.database("api_keys"))
        try:
            token = _in_another_process(path, "keys.create('app')[1]").strip()
            assert node.authenticate(token) is not None
            assert "app" in _in_another_process(path, "keys.all()")
            assert "app" in _in_another_process(path, "keys.revoke('app')")
            assert node.authenticate(token) is None
            assert asyncio.run(node.authenticate_async(token)) is None
        finally:
            node.close()
    finally:
        storage.close()
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
