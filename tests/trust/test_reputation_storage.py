"""The trust store on the storage layer: the same behaviour on an SQLite file and on
PostgreSQL, evidence recorded at once by two replicas (two Storage objects on one
database) adding up exactly, a replica seeing the others' evidence within the refresh
bound, the quarantine cap holding across replicas, and a trust.sqlite3 made by the old
DDL taken as it is."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from consortium.storage import migrations
from consortium.storage.database import Database
from consortium.storage.storage import Storage
from consortium.trust.canary_schedule import SentCanary
from consortium.trust.reputation import Evidence
from consortium.trust.reputation_engine import ReputationAssessor, ReputationSettings
from consortium.trust.reputation_store import REFRESH_S, CanaryLogTable, ReputationStore
from tests.conftest import PgDatabase

DEFAULTS = ReputationSettings()
NOW = 1_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def replicas(pg_database: PgDatabase, n: int) -> list[Storage]:
    storages = [pg_database.storage() for _ in range(n)]
    migrations.upgrade(storages[0], ["trust"])
    return storages


@pytest.fixture(params=["sqlite", "postgresql"])
def trust_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        db = migrations.open_sqlite(tmp_path / "trust.sqlite3", "trust")
        yield db
        db.dispose()
        return
    pg: PgDatabase = request.getfixturevalue("pg_database")
    (storage,) = replicas(pg, 1)
    yield storage.database("trust")
    storage.close()


def bad_signature(peer: str = "b") -> Evidence:
    return Evidence(peer, "protocol", False, "bad_signature", weight=DEFAULTS.refusal_factor)


def test_the_store_behaves_alike_on_both(trust_db: Database) -> None:
    clock = Clock()
    a = ReputationAssessor(ReputationStore(trust_db), clock=clock, members=["b", "c"])
    for _ in range(DEFAULTS.min_evidence):
        a.record(replace(bad_signature(), model="m1"))
    a.record(Evidence("c", "cross_check", True, "agreed"))
    assert a.standing("b").state == "quarantined"
    before = a.reputations()
    again = ReputationAssessor(ReputationStore(trust_db), clock=clock, members=["b", "c"])
    assert again.reputations() == before
    assert again.model_reputation("b", "m1").counts == {("protocol", False): 10}
    # The quarantine ends once, by the first reader after its time.
    clock.now += DEFAULTS.quarantine_s
    assert again.standing("b").state == "probation"
    assert a.reputations()[0].state in ("quarantined", "probation")  # a's view, not reread
    assert ReputationAssessor(ReputationStore(trust_db), clock=clock).standing("b").state == (
        "probation"
    )
    again.reset("b")
    fresh = ReputationAssessor(ReputationStore(trust_db), clock=clock)
    rep = fresh.model_reputation("b", "")
    assert rep.state == "healthy" and rep.offences == 0 and rep.counts == {}
    assert [r.model for r in fresh.reputations() if r.peer == "b"] == [""]

    store = ReputationStore(trust_db)
    assert store.save_report("globex", 10.0, 11.0, '{"v": 1}')
    assert not store.save_report("globex", 9.0, 12.0, '{"v": 0}')  # older: not kept
    assert not store.save_report("globex", 10.0, 12.0, '{"v": 0}')  # the same: not kept
    assert store.save_report("globex", 11.0, 12.0, '{"v": 2}')
    assert store.load_reports() == {"globex": '{"v": 2}'}
    store.save_opinions({"b": (1.0, 2.0), "c": (3.0, 0.5)})
    store.save_opinions({"c": (1.0, 4.0), "d": (0.0, 1.0)})
    assert store.load_opinions() == {"c": (1.0, 4.0), "d": (0.0, 1.0)}

    table = CanaryLogTable(store)
    table.add(SentCanary("b", "c0", 1.0, 5), forget_before=0.0)
    table.add(SentCanary("c", "c1", 5.0, 7), forget_before=2.0)  # forgets c0
    assert table.entries() == [SentCanary("c", "c1", 5.0, 7)]


def test_evidence_from_two_replicas_adds_up(pg_database: PgDatabase, tmp_path: Path) -> None:
    """Two replicas record 2 x 4 threads x 25 pieces for one peer (and one model) at the
    same moments: every piece is counted, and the posterior is the one 200 pieces recorded
    by one process give (identical pieces: their updates commute)."""
    storages = replicas(pg_database, 2)
    threads_per_replica, pieces = 4, 25
    total = 2 * threads_per_replica * pieces
    evidence = Evidence("b", "canary", True, "canary_passed", model="m1")
    try:
        engines = [
            ReputationAssessor(ReputationStore(s.database("trust")), clock=Clock(), members=["b"])
            for s in storages
        ]
        barrier = threading.Barrier(2 * threads_per_replica)
        errors: list[BaseException] = []

        def work(engine: ReputationAssessor) -> None:
            try:
                barrier.wait()
                for _ in range(pieces):
                    engine.record(evidence)
            except BaseException as e:
                errors.append(e)

        threads = [
            threading.Thread(target=work, args=(e,))
            for e in engines
            for _ in range(threads_per_replica)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []

        serial = ReputationAssessor.open(tmp_path / "serial.sqlite3", clock=Clock())
        for _ in range(total):
            serial.record(evidence)
        expected = serial.model_reputation("b", "")
        for e in engines:
            e.refresh()
            for model in ("", "m1"):
                rep = e.model_reputation("b", model)
                assert rep.counts == {("canary", True): total}
                assert rep.evidence == total
                assert rep.alpha == pytest.approx(expected.alpha, rel=1e-9)
                assert rep.beta == pytest.approx(expected.beta, rel=1e-9)
        serial.close()
    finally:
        for s in storages:
            s.close()


def test_a_replica_sees_the_others_evidence_within_the_refresh_bound(
    pg_database: PgDatabase,
) -> None:
    a_storage, b_storage = replicas(pg_database, 2)
    monotonic = Clock(0.0)
    try:
        a = ReputationAssessor(ReputationStore(a_storage.database("trust")), members=["p", "q"])
        b = ReputationAssessor(
            ReputationStore(b_storage.database("trust"), clock=monotonic), members=["p", "q"]
        )
        assert b.standing("p").state == "healthy"
        for _ in range(3):
            a.record(bad_signature("p"))
        assert a.standing("p").state == "probation"
        # b serves what it read (no database call) until its records are REFRESH_S old...
        assert b.standing("p").state == "healthy"
        monotonic.now += REFRESH_S
        # ... then rereads them: a's evidence is seen.
        assert b.standing("p").state == "probation"
        assert b.model_reputation("p", "").counts == {("protocol", False): 3}
        # b's own evidence builds on a's (the committed row), not on its memory.
        b.record(bad_signature("p"))
        assert b.model_reputation("p", "").counts == {("protocol", False): 4}
    finally:
        a_storage.close()
        b_storage.close()


def test_the_quarantine_cap_holds_across_replicas(pg_database: PgDatabase) -> None:
    """Six members, a cap of a third of seven: at most two quarantined, though each
    replica condemns other peers at the same moments."""
    storages = replicas(pg_database, 2)
    members = ["p1", "p2", "p3", "p4", "p5", "p6"]
    try:
        engines = [
            ReputationAssessor(ReputationStore(s.database("trust")), members=members)
            for s in storages
        ]
        barrier = threading.Barrier(len(members))
        errors: list[BaseException] = []

        def condemn(engine: ReputationAssessor, peer: str) -> None:
            try:
                barrier.wait()
                for _ in range(2 * DEFAULTS.min_evidence):
                    engine.record(bad_signature(peer))
            except BaseException as e:
                errors.append(e)

        threads = [
            threading.Thread(target=condemn, args=(engines[i % 2], peer))
            for i, peer in enumerate(members)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        engines[0].refresh()
        states = {r.peer: r.state for r in engines[0].reputations() if not r.model}
        assert sorted(states.values()).count("quarantined") == 2
        assert set(states.values()) == {"quarantined", "probation"}
    finally:
        for s in storages:
            s.close()


OLD_DDL = """
CREATE TABLE reputation (
    peer TEXT NOT NULL, model TEXT NOT NULL, alpha REAL NOT NULL, beta REAL NOT NULL,
    state TEXT NOT NULL, offences INTEGER NOT NULL, quarantined_until REAL NOT NULL,
    evidence INTEGER NOT NULL, changed_at REAL NOT NULL, reason TEXT NOT NULL,
    p_alpha REAL, p_beta REAL, last_canary INTEGER, PRIMARY KEY (peer, model)
) WITHOUT ROWID;
CREATE TABLE evidence_counts (
    peer TEXT NOT NULL, model TEXT NOT NULL, kind TEXT NOT NULL, good INTEGER NOT NULL,
    n INTEGER NOT NULL, PRIMARY KEY (peer, model, kind, good)
) WITHOUT ROWID;
CREATE TABLE trust_reports (
    reporter TEXT PRIMARY KEY, issued_at REAL NOT NULL, received_at REAL NOT NULL,
    body TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE report_opinions (
    peer TEXT PRIMARY KEY, good REAL NOT NULL, bad REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE canaries_sent (
    peer TEXT NOT NULL, canary_id TEXT NOT NULL, at REAL NOT NULL, cost INTEGER NOT NULL
);
CREATE INDEX canaries_sent_at ON canaries_sent (at);
INSERT INTO reputation VALUES ('b', '', 12.0, 2.0, 'probation', 1, 0, 14, 5.0, 'why',
                               8.0, 1.5, 0);
INSERT INTO evidence_counts VALUES ('b', '', 'canary', 0, 3);
INSERT INTO trust_reports VALUES ('globex', 1.0, 2.0, '{}');
INSERT INTO report_opinions VALUES ('b', 1.0, 2.0);
INSERT INTO canaries_sent VALUES ('b', 'c0', 3.0, 9);
"""


def test_a_trust_file_made_before_migrations_is_taken_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "trust.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(OLD_DDL)
    conn.commit()
    conn.close()
    store = ReputationStore(path, must_exist=True)
    try:
        rec = store.load()[("b", "")]
        assert (rec.alpha, rec.beta, rec.p_alpha, rec.p_beta) == (12.0, 2.0, 8.0, 1.5)
        assert (rec.state, rec.offences, rec.last_canary) == ("probation", 1, False)
        assert rec.counts == {("canary", False): 3}
        assert store.load_reports() == {"globex": "{}"}
        assert store.load_opinions() == {"b": (1.0, 2.0)}
        assert CanaryLogTable(store).entries() == [SentCanary("b", "c0", 3.0, 9)]
        assert migrations.current(store.db, "trust") == {migrations.head("trust")}
    finally:
        store.close()
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_file_of_another_shape_is_not_a_trust_database(tmp_path: Path) -> None:
    from consortium.trust.reputation_store import TrustStoreError

    path = tmp_path / "trust.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE reputation (peer TEXT PRIMARY KEY)")
    conn.commit()
    conn.close()
    with pytest.raises(TrustStoreError, match="not a usable trust database"):
        ReputationStore(path)


def test_a_node_on_postgresql_keeps_its_reputations_there(
    pg_database: PgDatabase, tmp_path: Path
) -> None:
    """build_storage + build_assessor as the node wires them, twice (two replicas of one
    organization): evidence recorded by one is the other's, and no trust.sqlite3 is made."""
    from consortium.node.app import build_assessor, build_storage
    from consortium.node.config import load_config

    config = tmp_path / "node.toml"
    config.write_text(
        "[node]\norg_id = 'a'\n[federation]\nroster = 'f.toml'\nadmin_key = 'admin.jwk'\n"
        f"[storage]\nurl = '{pg_database.url}'\n"
        f"password_file = '{pg_database.password_file}'\n"
    )
    cfg = load_config(config)
    storages = [build_storage(cfg), build_storage(cfg)]
    try:
        one, two = (build_assessor(cfg, members=["b", "c"], storage=s) for s in storages)
        assert isinstance(one, ReputationAssessor) and isinstance(two, ReputationAssessor)
        assert one.store.remote
        for _ in range(3):
            one.record(bad_signature("b"))
        two.refresh()  # what the node's background refresh does
        assert two.standing("b").state == "probation"
        assert two.model_reputation("b", "").counts == {("protocol", False): 3}
        assert not cfg.trust_path.exists()
    finally:
        for s in storages:
            s.close()


async def test_postgresql_calls_are_made_off_the_event_loop(
    pg_database: PgDatabase, tmp_path: Path
) -> None:
    (storage,) = replicas(pg_database, 1)
    try:
        remote = ReputationAssessor(ReputationStore(storage.database("trust")))
        here = threading.current_thread().name
        assert (await remote.off_loop(lambda: threading.current_thread().name)).startswith(
            "storage"
        )
        local = ReputationAssessor.open(tmp_path / "trust.sqlite3")
        assert await local.off_loop(lambda: threading.current_thread().name) == here
        local.close()
    finally:
        storage.close()
