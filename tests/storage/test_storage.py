"""The storage layer on a real PostgreSQL server and on SQLite: each store's schema made
by its migrations (once, whichever replica starts first; a database a newer version
migrated refused untouched), a replay accepted by one replica refused by another (also
when both see it at the same moment), and a database that goes away: a clear
StorageUnavailable within the timeouts, then recovery without a restart."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from consortium.errors import StorageUnavailable
from consortium.sqlite import STORAGE
from consortium.storage import migrations
from consortium.storage.migrations import SchemaTooNew
from consortium.storage.storage import Storage
from consortium.storage.url import parse_location
from consortium.trust.replay import ReplayCache
from tests.conftest import PgDatabase


def test_migrations_make_each_schema_once(pg_database: PgDatabase) -> None:
    a, b = pg_database.storage(), pg_database.storage()
    try:
        results: list[dict[str, str]] = []
        threads = [
            threading.Thread(target=lambda s=s: results.append(migrations.upgrade(s)))
            for s in (a, b)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Both replicas started at once: each store migrated by one, found done by the other.
        migrated = sorted(store for r in results for store in r)
        assert migrated == sorted(migrations.stores_of(a))
        assert migrations.pending(a) == {} and migrations.pending(b) == {}
        with a.database("replay").connect() as conn:
            tables = (
                conn.execute(
                    text(
                        "SELECT table_name FROM information_schema.tables "
                        "WHERE table_schema = 'consortium_replay' ORDER BY 1"
                    )
                )
                .scalars()
                .all()
            )
        assert tables == ["alembic_version", "replay"]
        assert migrations.upgrade(a) == {}  # a second upgrade changes nothing
    finally:
        a.close()
        b.close()


def test_a_database_a_newer_version_migrated_is_refused(pg_database: PgDatabase) -> None:
    storage = pg_database.storage()
    try:
        migrations.upgrade(storage)
        with storage.database("replay").begin() as conn:
            conn.execute(
                text("UPDATE consortium_replay.alembic_version SET version_num = 'replay_9999'")
            )
        with pytest.raises(SchemaTooNew, match=r"schema revision replay_9999.*newer version"):
            migrations.upgrade(storage)
        with storage.database("replay").connect() as conn:
            version = conn.execute(
                text("SELECT version_num FROM consortium_replay.alembic_version")
            ).scalar()
        assert version == "replay_9999"  # untouched
    finally:
        storage.close()


def test_an_existing_sqlite_data_directory_is_taken_as_it_is(tmp_path: Path) -> None:
    """A replay file made before the migrations (its table, no version table)."""
    import sqlite3

    old = sqlite3.connect(tmp_path / "replay.sqlite3")
    old.executescript(
        "CREATE TABLE replay (sender TEXT NOT NULL, message_id TEXT NOT NULL, "
        "expires_at REAL NOT NULL, PRIMARY KEY (sender, message_id)) WITHOUT ROWID;"
        "INSERT INTO replay VALUES ('acme', 'm1', 4102444800.0);"
    )
    old.commit()
    old.close()
    storage = Storage(parse_location("", base_dir=tmp_path, data_dir=tmp_path))
    try:
        assert migrations.upgrade(storage, ["replay"]) == {"replay": migrations.head("replay")}
        cache = ReplayCache(storage.database("replay"), clock=lambda: 1.0e9)
        assert not cache.first_sighting("acme", "m1", 4102444800.0)  # remembered
        assert cache.first_sighting("acme", "m2", 4102444800.0)
    finally:
        storage.close()


def replicas(pg_database: PgDatabase, n: int) -> list[Storage]:
    storages = [pg_database.storage() for _ in range(n)]
    migrations.upgrade(storages[0])
    return storages


def test_a_replay_accepted_by_one_replica_is_refused_by_another(
    pg_database: PgDatabase,
) -> None:
    a, b = replicas(pg_database, 2)
    try:
        now = time.time()
        ra, rb = ReplayCache(a.database("replay")), ReplayCache(b.database("replay"))
        assert ra.first_sighting("acme", "msg-1", now + 60)
        assert not rb.first_sighting("acme", "msg-1", now + 60)
        assert not ra.first_sighting("acme", "msg-1", now + 60)
        assert rb.first_sighting("globex", "msg-1", now + 60)  # another sender's id
        # The same message at both replicas at the same moment, 40 times over: one each.
        for i in range(40):
            barrier = threading.Barrier(2)
            wins: list[bool] = []

            def see(
                cache: ReplayCache, barrier: threading.Barrier, wins: list[bool], i: int
            ) -> None:
                barrier.wait()
                wins.append(cache.first_sighting("acme", f"race-{i}", now + 60))

            threads = [threading.Thread(target=see, args=(c, barrier, wins, i)) for c in (ra, rb)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(wins) == [False, True], i
    finally:
        a.close()
        b.close()


def test_the_database_going_away_and_coming_back(pg_cluster: Any, pg_database: PgDatabase) -> None:
    storage = pg_database.storage(pool_timeout_s=2.0, connect_timeout_s=2.0)
    try:
        migrations.upgrade(storage)
        cache = ReplayCache(storage.database("replay"))
        assert cache.first_sighting("acme", "before", time.time() + 60)
        pg_cluster.stop()
        try:
            started = time.monotonic()
            with pytest.raises(StorageUnavailable) as e:
                cache.first_sighting("acme", "during", time.time() + 60)
            assert e.value.problem == "database_unavailable"
            assert "its database is unreachable" in str(e.value)
            assert time.monotonic() - started < 10
            where = storage.location.shown
            assert any(f.database == where for f in STORAGE._faults.values())
            assert "password" not in where and pg_database.password not in where
        finally:
            pg_cluster.start()
        # Back: the same Storage works again, nothing acknowledged before was lost.
        assert cache.first_sighting("acme", "after", time.time() + 60)
        assert not cache.first_sighting("acme", "before", time.time() + 60)
        assert not any(f.database == storage.location.shown for f in STORAGE._faults.values())
    finally:
        storage.close()


def test_a_wrong_password_is_a_clear_error(pg_database: PgDatabase, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    location = parse_location(
        pg_database.url, base_dir=tmp_path, data_dir=tmp_path, password_file=str(wrong)
    )
    storage = Storage(location)
    try:
        with pytest.raises(StorageUnavailable) as e:
            migrations.upgrade(storage)
        assert "not-the-password" not in str(e.value)
    finally:
        storage.close()
