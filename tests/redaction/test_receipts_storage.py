"""Redaction receipts on the storage layer: the same behaviour on an SQLite file and on
PostgreSQL, receipts recorded through one replica read through another, a message id
recorded once when two replicas try at the same moment, pruning from two replicas at
once, a redaction.sqlite3 made by the old DDL taken as it is, and `consortium redact
disclose` on a node whose [storage] url is PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from consortium.redaction.receipts import DisclosureStore, ReceiptError, make_disclosure
from consortium.storage import migrations
from consortium.storage.database import Database
from consortium.storage.storage import Storage
from tests.cli.test_redact_cli import cli
from tests.conftest import PgDatabase
from tests.node.test_receipts import World
from tests.redaction.test_receipts import signed_like


def replicas(pg_database: PgDatabase, n: int) -> list[Storage]:
    storages = [pg_database.storage() for _ in range(n)]
    migrations.upgrade(storages[0], ["redaction"])
    return storages


@pytest.fixture(params=["sqlite", "postgresql"])
def redaction_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        db = migrations.open_sqlite(tmp_path / "redaction.sqlite3", "redaction")
        yield db
        db.dispose()
        return
    pg: PgDatabase = request.getfixturevalue("pg_database")
    (storage,) = replicas(pg, 1)
    yield storage.database("redaction")
    storage.close()


def test_the_store_behaves_alike_on_both(redaction_db: Database) -> None:
    now = [1000.0]
    store = DisclosureStore(redaction_db, clock=lambda: now[0])
    ds = [make_disclosure("PERSON", "Ann Lee"), make_disclosure("EMAIL_ADDRESS", "a@b.example")]
    msg = signed_like(ds)
    store.record("m-1", "task-1", "globex", msg, ds)
    store.record("m-2", "task-1", "initech", signed_like([], "m-2"), [])
    with pytest.raises(ReceiptError, match="recorded already"):
        store.record("m-1", "task-1", "globex", msg, ds)
    with pytest.raises(ReceiptError, match="does not list"):
        store.record("m-3", "t", "globex", signed_like(ds, "m-3"), [make_disclosure("X", "y")])
    assert store.get("m-3") is None  # nothing of a refused record is kept
    got = store.get("m-1")
    assert got is not None and got.message == msg and got.disclosures == tuple(ds)
    assert (got.task_id, got.recipient, got.created_at) == ("task-1", "globex", 1000.0)
    assert store.get("nope") is None
    assert store.for_task("task-1") == ["m-1", "m-2"] and store.for_task("x") == []
    now[0] = 2000.0
    young = [make_disclosure("PERSON", "Bo Yi")]
    store.record("m-new", "task-2", "globex", signed_like(young, "m-new"), young)
    assert store.prune(1500.0) == 2
    assert store.get("m-1") is None and store.for_task("task-1") == []
    kept = store.get("m-new")
    assert kept is not None and kept.disclosures == tuple(young)
    assert store.prune(1500.0) == 0
    store.close()


def test_two_replicas_share_the_receipts(pg_database: PgDatabase) -> None:
    a_storage, b_storage = replicas(pg_database, 2)
    try:
        a = DisclosureStore(a_storage.database("redaction"), clock=lambda: 1000.0)
        b = DisclosureStore(b_storage.database("redaction"), clock=lambda: 1000.0)
        ds = [make_disclosure("PERSON", "Ann Lee")]
        a.record("m-a", "task-1", "globex", signed_like(ds, "m-a"), ds)
        got = b.get("m-a")  # sent through replica A, disclosed through replica B
        assert got is not None and got.disclosures == tuple(ds)
        # The same message id at both replicas at the same moment, 20 times: one each.
        for i in range(20):
            barrier = threading.Barrier(2)
            outcomes: list[str] = []
            mid = f"race-{i}"

            def put(
                store: DisclosureStore, barrier: threading.Barrier, mid: str, outcomes: list[str]
            ) -> None:
                d = [make_disclosure("PERSON", f"p-{mid}")]
                barrier.wait()
                try:
                    store.record(mid, "task-2", "globex", signed_like(d, mid), d)
                    outcomes.append("kept")
                except ReceiptError:
                    outcomes.append("refused")

            threads = [
                threading.Thread(target=put, args=(s, barrier, mid, outcomes)) for s in (a, b)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(outcomes) == ["kept", "refused"], i
            receipt = a.get(mid)
            assert receipt is not None and len(receipt.disclosures) == 1
        # Both replicas prune at once: every old receipt goes, once.
        barrier = threading.Barrier(2)
        pruned: list[int] = []

        def prune(store: DisclosureStore) -> None:
            barrier.wait()
            pruned.append(store.prune(1001.0))

        threads = [threading.Thread(target=prune, args=(s,)) for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(pruned) == 21
        assert a.for_task("task-2") == [] and b.get("m-a") is None
    finally:
        a_storage.close()
        b_storage.close()


OLD_DDL = """
CREATE TABLE receipts (
    message_id TEXT PRIMARY KEY, task_id TEXT NOT NULL, recipient TEXT NOT NULL,
    message BLOB NOT NULL, created_at REAL NOT NULL
);
CREATE INDEX receipts_by_task ON receipts (task_id, created_at);
CREATE TABLE disclosures (
    message_id TEXT NOT NULL REFERENCES receipts (message_id), position INTEGER NOT NULL,
    disclosure TEXT NOT NULL, PRIMARY KEY (message_id, position)
);
"""


def test_a_receipts_file_made_before_migrations_is_taken_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "redaction.sqlite3"
    ds = [make_disclosure("PERSON", "Ann Lee")]
    msg = signed_like(ds)
    conn = sqlite3.connect(path)
    conn.executescript(OLD_DDL)
    conn.execute(
        "INSERT INTO receipts VALUES (?, ?, ?, ?, ?)",
        ("m-1", "task-1", "globex", msg.SerializeToString(), 5.0),
    )
    conn.execute("INSERT INTO disclosures VALUES ('m-1', 0, ?)", (ds[0].encoded,))
    conn.commit()
    conn.close()
    store = DisclosureStore(path, must_exist=True)
    try:
        got = store.get("m-1")
        assert got is not None and got.message == msg and got.disclosures == tuple(ds)
        assert migrations.current(store.db, "redaction") == {migrations.head("redaction")}
    finally:
        store.close()


def test_disclose_reads_a_node_on_postgresql(pg_database: PgDatabase, tmp_path: Path) -> None:
    (storage,) = replicas(pg_database, 1)
    world = World()
    message, disclosures = world.send()
    try:
        store = DisclosureStore(storage.database("redaction"))
        store.record(message.message_id, "task-1", "globex", message, disclosures)
    finally:
        storage.close()
    config = tmp_path / "node.toml"
    config.write_text(
        "[node]\norg_id = 'acme'\n"
        f"[storage]\nurl = '{pg_database.url}'\n"
        f"password_file = '{pg_database.password_file}'\n"
    )
    out = tmp_path / "receipt.json"
    result = cli("disclose", "--config", str(config), message.message_id, "--all", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["disclosures"] == [d.encoded for d in disclosures]
    assert not (tmp_path / "data").exists()  # nothing made on SQLite
