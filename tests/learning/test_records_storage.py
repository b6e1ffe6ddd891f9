"""Routing records on the storage layer: the same behaviour on an SQLite file and on
PostgreSQL, records added through one replica labelled through another, one task id
added at once by two replicas kept once, and a node.sqlite3 made by the old DDL (shared
with the task store) taken as it is."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from consortium.learning.records import RoutingDataError, RoutingRecords, feature_set_digest
from consortium.storage import migrations
from consortium.storage.database import Database
from consortium.storage.storage import Storage
from tests.conftest import PgDatabase
from tests.learning.test_records import NAMES, rec


def replicas(pg_database: PgDatabase, n: int) -> list[Storage]:
    storages = [pg_database.storage() for _ in range(n)]
    migrations.upgrade(storages[0], ["records"])
    return storages


@pytest.fixture(params=["sqlite", "postgresql"])
def records_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        db = migrations.open_sqlite(tmp_path / "node.sqlite3", "records")
        yield db
        db.dispose()
        return
    pg: PgDatabase = request.getfixturevalue("pg_database")
    (storage,) = replicas(pg, 1)
    yield storage.database("records")
    storage.close()


def test_the_store_behaves_alike_on_both(records_db: Database) -> None:
    records = RoutingRecords(records_db)
    records.add(rec(1), NAMES)
    records.add(rec(2, route="escalated", final_choice=2), NAMES)
    with pytest.raises(RoutingDataError, match="task-1 exists already"):
        records.add_many([rec(3), rec(1)], NAMES)  # the batch rolls back
    with pytest.raises(RoutingDataError, match="repeated"):
        records.add_many([rec(4), rec(4)], NAMES)
    assert records.counts() == {
        "records": 2,
        "labelled": {"local_correct": 0, "escalation_helps": 0},
        "sources": {},
    }
    with pytest.raises(RoutingDataError, match="no routed task task-1 of yours"):
        records.feedback("task-1", "user:mallory", adequate=True)
    r2 = records.feedback("task-2", "user:alice", correct_choice=2)
    assert (r2.local_adequate, r2.escalation_helps, r2.label_source) == (False, True, "verified")
    r1 = records.feedback("task-1", "user:alice", adequate=True)
    assert (r1.local_adequate, r1.escalation_helps, r1.label_source) == (True, None, "feedback")
    assert records.get("task-1").features == (1.0, 0.5, -1.0)
    records.add_many(
        [rec(1, local_adequate=False, label_source="seed"), rec(5)], NAMES, replace=True
    )
    assert records.get("task-1").label_source == "seed"
    counts = records.counts()
    assert counts["records"] == 3 and counts["sources"] == {"seed": 1, "verified": 1}
    data = records.dataset(NAMES, "local_correct")
    assert data.record_ids == ("task-1", "task-2") and list(data.y) == [0, 0]
    assert np.allclose(data.x[0], [1.0, 0.5, -1.0])
    assert records.feature_sets() == {feature_set_digest(NAMES): NAMES}
    records.close()


def test_two_replicas_share_the_records(pg_database: PgDatabase) -> None:
    a_storage, b_storage = replicas(pg_database, 2)
    try:
        a = RoutingRecords(a_storage.database("records"))
        b = RoutingRecords(b_storage.database("records"))
        a.add(rec(1), NAMES)  # the task answered through replica A...
        labelled = b.feedback("task-1", "user:alice", correct_choice=1)  # ...labelled via B
        assert labelled.local_adequate is True
        assert a.get("task-1").label_source == "verified"
        # One task id added at both replicas at the same moment, 20 times: kept once.
        for i in range(20):
            barrier = threading.Barrier(2)
            outcomes: list[str] = []

            def add(
                store: RoutingRecords, barrier: threading.Barrier, i: int, outcomes: list[str]
            ) -> None:
                barrier.wait()
                try:
                    store.add(rec(100 + i), NAMES)
                    outcomes.append("kept")
                except RoutingDataError:
                    outcomes.append("refused")

            threads = [threading.Thread(target=add, args=(s, barrier, i, outcomes)) for s in (a, b)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(outcomes) == ["kept", "refused"], i
        assert a.counts()["records"] == b.counts()["records"] == 21
        assert len(b.dataset(NAMES, "local_correct")) == 1
    finally:
        a_storage.close()
        b_storage.close()


OLD_DDL = """
CREATE TABLE tasks (id TEXT PRIMARY KEY, body BLOB);
INSERT INTO tasks VALUES ('t1', x'00');
CREATE TABLE routing_feature_sets (
    digest TEXT PRIMARY KEY, names TEXT NOT NULL, dim INTEGER NOT NULL
);
CREATE TABLE routing_records (
    record_id TEXT PRIMARY KEY, owner TEXT NOT NULL, created REAL NOT NULL,
    feature_set TEXT NOT NULL REFERENCES routing_feature_sets (digest),
    features BLOB NOT NULL, topic TEXT NOT NULL, router TEXT NOT NULL, route TEXT NOT NULL,
    local_choice INTEGER, final_choice INTEGER, local_adequate INTEGER,
    escalation_helps INTEGER, label_source TEXT
);
CREATE INDEX routing_records_by_set ON routing_records (feature_set, created);
"""


def test_a_node_database_made_before_migrations_is_taken_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "node.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(OLD_DDL)
    digest = feature_set_digest(NAMES)
    conn.execute("INSERT INTO routing_feature_sets VALUES (?, ?, 3)", (digest, '["a","b","c"]'))
    conn.execute(
        "INSERT INTO routing_records VALUES ('task-1', 'user:alice', 5.0, ?, ?, '', 'r',"
        " 'local', 1, 1, 1, NULL, 'feedback')",
        (digest, np.asarray((1.0, 2.0, 3.0), dtype="<f4").tobytes()),
    )
    conn.commit()
    conn.close()
    records = RoutingRecords(path)
    try:
        got = records.get("task-1")
        assert got.features == (1.0, 2.0, 3.0) and got.local_adequate is True
        assert migrations.current(records.db, "records") == {migrations.head("records")}
    finally:
        records.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT id FROM tasks").fetchall() == [("t1",)]  # left alone
    conn.close()
