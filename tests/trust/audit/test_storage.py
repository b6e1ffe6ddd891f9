"""The audit log on the storage layer (trust/audit/log.py on consortium/storage): the same
log — entries, checkpoints, cosignatures, what it witnessed of other logs, retention,
receipts, its check on opening — on an SQLite file and on PostgreSQL, verified by the
auditor's `verify_log` (a PostgreSQL log through its SQLite snapshot, trust/audit/
snapshot.py); an audit.sqlite3 made before the migrations is taken as it is."""

from __future__ import annotations

import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from consortium.storage import migrations
from consortium.storage.database import Database
from consortium.storage.storage import Storage
from consortium.storage.url import parse_location
from consortium.trust.audit import Hop, log_origin
from consortium.trust.audit.inclusion import check_receipt
from consortium.trust.audit.log import AuditError, SqliteAuditLog
from consortium.trust.audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from consortium.trust.audit.notes import Checkpoint, cosign, parse_note
from consortium.trust.audit.snapshot import copy_log
from consortium.trust.audit.verify import LogReport, verify_log
from consortium.trust.jws import canonical, signing_key_of, verify_key_of
from tests.conftest import PgDatabase
from tests.trust.audit.test_verify import FED, ORG, ORIGIN, Keys, errors

Replica = Callable[[], Database]

# What trust/audit/log.py created before the storage layer (its SCHEMA).
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    body TEXT NOT NULL,
    leaf BLOB NOT NULL,
    kind TEXT NOT NULL,
    message_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    trace_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY,
    note TEXT NOT NULL,
    time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cosignatures (
    size INTEGER NOT NULL,
    witness TEXT NOT NULL,
    line TEXT NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (size, witness)
);
CREATE TABLE IF NOT EXISTS witnessed (
    origin TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    note TEXT NOT NULL,
    time REAL NOT NULL
);
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def replica(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Replica]:
    """Makes one replica's view of the "audit" store (on SQLite: the node's one file)."""
    storages: list[Storage] = []

    def make() -> Database:
        if request.param == "sqlite":
            storage = Storage(parse_location("", base_dir=tmp_path, data_dir=tmp_path))
        else:
            pg: PgDatabase = request.getfixturevalue("pg_database")
            storage = pg.storage()
        storages.append(storage)
        migrations.upgrade(storage, ["audit"])
        return storage.database("audit")

    yield make
    for storage in storages:
        storage.close()


def open_log(db: Database | Path, keys: Keys, **kwargs: object) -> SqliteAuditLog:
    return SqliteAuditLog(db, federation_id=FED, org_id=ORG, key=lambda: keys.new, **kwargs)  # type: ignore[arg-type]


def hop(i: int) -> Hop:
    return Hop(
        kind="request",
        peer="globex",
        message_id=f"m-{i}",
        kid="k",
        digest=f"d-{i}",
        jws="h..s",
        task_id=f"t-{i}",
    )


def audited(db: Database, keys: Keys, tmp: Path, **kwargs: object) -> LogReport:
    """What `consortium audit verify` finds of the log in `db` (a snapshot of it)."""
    copy = tmp / f"snapshot-{time.monotonic_ns()}.sqlite3"
    assert copy_log(db, copy)
    return verify_log(copy, keys.history(), origin=ORIGIN, org=ORG, **kwargs)  # type: ignore[arg-type]


def test_the_log_appends_checkpoints_reopens_and_verifies(replica: Replica, tmp_path: Path) -> None:
    keys, db = Keys(), replica()
    log = open_log(db, keys, checkpoint_every=16)
    try:
        for i in range(40):
            assert log.append("route", "local", fields={"detail": {"i": i}}) == i
        assert log.size == 40
        latest = log.latest()
        assert latest is not None and latest.checkpoint.size == 32
        signed = log.checkpoint()
        assert signed.checkpoint.size == 40 and log.checkpoint().note == signed.note
        entry = log.entry(7)
        assert entry is not None and entry["seq"] == 7 and entry["detail"] == {"i": 7}
        assert log.entry(40) is None
        proof = log.inclusion_proof(7, 40)
        verify_inclusion(7, 40, leaf_hash(canonical(entry)), proof, signed.checkpoint.root)
        old = Checkpoint.parse(parse_note(log.cosigned_note(16))[0])
        verify_consistency(16, 40, log.consistency_proof(16, 40), old.root, signed.checkpoint.root)
        with pytest.raises(KeyError):
            log.cosigned_note(17)
    finally:
        log.close()
    reopened = open_log(db, keys)
    try:
        assert reopened.size == 40 and reopened.append("route", "local") == 40
    finally:
        reopened.close()  # signs the checkpoint of the entry it added
    report = audited(db, keys, tmp_path)
    assert report.ok, report.findings
    assert (report.entries, report.checkpoints, report.latest_checkpoint) == (41, 4, 41)


def test_witnessing_state_is_kept(replica: Replica, tmp_path: Path) -> None:
    keys, db = Keys(), replica()
    log = open_log(db, keys, checkpoint_every=8)
    try:
        for i in range(16):
            log.sent(hop(i))
        assert (log.cosigned_size("globex"), log.witnessed_size(2)) == (0, 0)
        for size in (8, 16):
            checkpoint = Checkpoint.parse(parse_note(log.cosigned_note(size))[0])
            for name in ("globex", "initech")[: 1 if size == 16 else 2]:
                key = signing_key_of(keys.witness[name])
                sig = cosign(checkpoint, log_origin(FED, name), key, int(time.time()))
                log.add_cosignature(size, name, sig)
                log.add_cosignature(size, name, sig)  # again: kept once
        assert (log.cosigned_size("globex"), log.cosigned_size("initech")) == (16, 8)
        assert (log.witnessed_size(1), log.witnessed_size(2), log.witnessed_size(3)) == (16, 8, 0)
        assert len(parse_note(log.cosigned_note(8))[1]) == 3  # the log's and two witnesses'

        # As a witness of globex's log: the record never goes back.
        theirs = [Checkpoint(log_origin(FED, "globex"), n, bytes([n]) * 32) for n in (5, 9, 7)]
        for checkpoint in theirs:
            log.remember_cosigned(checkpoint, f"note {checkpoint.size}")
        seen = log.seen(log_origin(FED, "globex"))
        assert seen is not None and (seen.size, seen.root) == (9, bytes([9]) * 32)
        assert log.seen(log_origin(FED, "initech")) is None
    finally:
        log.close()
    report = audited(db, keys, tmp_path, witnessed_by=2)
    assert report.ok, report.findings
    assert report.cosigners == {8: ["globex", "initech"], 16: ["globex"]}


def test_retention_prunes_bodies_and_the_log_still_verifies(
    replica: Replica, tmp_path: Path
) -> None:
    keys, db = Keys(), replica()
    now = [1_800_000_000.0]
    log = open_log(db, keys, checkpoint_every=10, clock=lambda: now[0])
    try:
        for i in range(30):
            now[0] += 1.0
            log.sent(hop(i))
        assert log.prune(older_than=now[0] - 24.5) == 5  # the first 5 are older
        assert log.pruned_below == 5 and log.entry(4) is None and log.entry(5) is not None
        assert log.prune(below=12, limit=3) == 3
        assert log.prune(below=100) == 22  # never past the latest checkpoint (30)
        assert log.prune(below=100) == 0  # up to date: nothing, and no entry for it
        retention = log.entry(32)
        assert retention is not None and retention["kind"] == "retention"
        assert retention["detail"] == {"pruned_from": 8, "pruned_below": 30}
        assert log.size == 33
        assert log.prune() == 0
    finally:
        log.close()
    report = audited(db, keys, tmp_path)
    assert report.ok, errors(report)
    assert report.pruned_below == 30
    assert open_log(db, keys).pruned_below == 30  # reopens: the kept leaf hashes check out


def test_a_receipt_proves_a_recent_request(replica: Replica) -> None:
    keys, db = Keys(), replica()
    log = open_log(db, keys)
    try:
        log.received(hop(1))
        log.sent(hop(2))
        got = log.receipt("m-1", peer="globex")
        assert got is not None
        found = check_receipt(
            got,
            origin=ORIGIN,
            keys=[verify_key_of(keys.new)],
            request_digest="d-1",
            request_id="m-1",
            asker="globex",
        )
        assert (found.verdict, found.index, found.size) == ("included", 0, 2)
        assert log.receipt("m-1", peer="initech") is None  # not that member's request
        assert log.receipt("m-2") is None  # sent, not received
    finally:
        log.close()


def test_another_organizations_log_is_refused(replica: Replica) -> None:
    keys, db = Keys(), replica()
    open_log(db, keys).close()
    with pytest.raises(AuditError, match=f"is the log of {ORIGIN}, not consortium/{FED}/globex"):
        SqliteAuditLog(db, federation_id=FED, org_id="globex", key=lambda: keys.new)


# -- SQLite only ----------------------------------------------------------------------


def test_a_file_made_before_the_migrations_is_taken_as_it_is(tmp_path: Path) -> None:
    keys = Keys()
    path = tmp_path / "audit.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(OLD_SCHEMA)
    old.close()
    ddl_before = dict(sqlite3.connect(path).execute("SELECT name, sql FROM sqlite_master"))
    log = open_log(path, keys, checkpoint_every=4)
    try:
        for i in range(10):
            log.sent(hop(i))
    finally:
        log.close()
    conn = sqlite3.connect(path)
    ddl_after = dict(conn.execute("SELECT name, sql FROM sqlite_master"))
    conn.close()
    assert {k: v for k, v in ddl_after.items() if k in ddl_before} == ddl_before
    assert set(ddl_after) - set(ddl_before) == {
        "alembic_version",
        "sqlite_autoindex_alembic_version_1",
    }
    report = verify_log(path, keys.history(), origin=ORIGIN, org=ORG)
    assert report.ok and (report.entries, report.checkpoints) == (10, 3), report.findings


def test_a_new_file_has_the_same_tables(tmp_path: Path) -> None:
    """Made by the migration: the same tables, columns and keys (declared NOT NULL now),
    the position still the rowid."""
    open_log(tmp_path / "audit.sqlite3", Keys()).close()
    old = sqlite3.connect(":memory:")
    old.executescript(OLD_SCHEMA)
    new = sqlite3.connect(tmp_path / "audit.sqlite3")
    for table in ("meta", "entries", "checkpoints", "cosignatures", "witnessed"):
        info = "SELECT name, pk FROM pragma_table_info(?)"
        columns = [c.execute(info, (table,)).fetchall() for c in (old, new)]
        assert columns[0] == columns[1], table
    new.execute("INSERT INTO entries VALUES (7, '', x'00', 'k', '', '', '')")
    assert new.execute("SELECT rowid FROM entries WHERE seq = 7").fetchall() == [(7,)]
    new.close()


@pytest.mark.parametrize(("durable_against", "level"), [("crash", 0), ("power", 2)])
def test_the_nodes_log_is_private_and_as_durable_as_asked(
    tmp_path: Path, durable_against: str, level: int
) -> None:
    """In the node's storage: DATA_DIR/audit.sqlite3, 0600; synchronous OFF (crash) or
    FULL (power) on every connection the log writes with."""
    storage = Storage(parse_location("", base_dir=tmp_path, data_dir=tmp_path))
    try:
        migrations.upgrade(storage)
        db = storage.database("audit")
        log = open_log(db, Keys(), durable_against=durable_against, checkpoint_every=2)
        try:
            log.record("route")
            with db.begin() as conn:
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == level
        finally:
            log.close()
        path = tmp_path / "audit.sqlite3"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        storage.close()


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    path.write_text("not a database\n" * 100)
    with pytest.raises(AuditError, match="cannot be read"):
        open_log(path, Keys())


def test_no_log_in_a_database_is_no_snapshot(pg_database: PgDatabase, tmp_path: Path) -> None:
    storage = pg_database.storage()
    try:
        assert not copy_log(storage.database("audit"), tmp_path / "copy.sqlite3")
        assert not (tmp_path / "copy.sqlite3").exists()
    finally:
        storage.close()
