"""One audit log across an organization's replicas (trust/audit/log.py on PostgreSQL, a
Storage per replica on one real database): concurrent appends from three replicas get
positions 0..N-1 with no gap and no duplicate, in one tree every replica computes alike
(catching up on entries it did not write), that `consortium audit verify` passes through
the organization's node.toml; a checkpoint is signed once whoever asks; pruning by one
replica while others append keeps the log whole; witnessing state is shared, and one
replica at a time sends checkpoints to the witnesses; while the
database is down appends fail clearly and the log goes on gapless when it is back. And
many threads of one process appending to one log (SQLite and PostgreSQL) get the
same."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jwcrypto import jwk

from consortium.errors import StorageUnavailable
from consortium.federation.admin import add_member, create_federation
from consortium.federation.roster import Member, MemberKey, load_roster
from consortium.storage import migrations
from consortium.storage.database import Database
from consortium.storage.storage import Storage
from consortium.storage.url import parse_location
from consortium.trust.audit import Hop, log_origin
from consortium.trust.audit.log import Signed, SqliteAuditLog
from consortium.trust.audit.merkle import leaf_hash, verify_inclusion
from consortium.trust.audit.notes import Checkpoint, cosign, parse_note
from consortium.trust.audit.snapshot import copy_log
from consortium.trust.audit.verify import verify_log
from consortium.trust.jws import canonical, signing_key_of
from consortium.trust.keys import key_id, load_private_key
from tests.cli.test_audit_cli import cli, organization
from tests.conftest import PgDatabase
from tests.trust.audit.test_verify import FED, ORG, ORIGIN, Keys, errors

REPLICAS = 3
THREADS = 2  # per replica
APPENDS = 50  # per thread: 300 in all


@pytest.fixture
def replicas(pg_database: PgDatabase) -> Iterator[list[Database]]:
    """The "audit" store as each of three replicas sees it (migrated once)."""
    storages = [pg_database.storage() for _ in range(REPLICAS)]
    migrations.upgrade(storages[0], ["audit"])
    yield [s.database("audit") for s in storages]
    for s in storages:
        s.close()


def open_log(
    db: Database | Path, key: jwk.JWK, federation: str = FED, **kw: object
) -> SqliteAuditLog:
    return SqliteAuditLog(db, federation_id=federation, org_id=ORG, key=lambda: key, **kw)  # type: ignore[arg-type]


def hop(name: str) -> Hop:
    return Hop(kind="request", peer="globex", message_id=name, kid="k", digest="d", jws="h..s")


def append_together(logs: list[SqliteAuditLog], threads: int, appends: int) -> dict[int, str]:
    """`threads` threads per log, started at once, each appending `appends` entries;
    position -> the message id written there (a position given twice fails)."""
    start = threading.Barrier(len(logs) * threads)
    got: dict[int, str] = {}
    lock = threading.Lock()
    failures: list[BaseException] = []

    def work(log: SqliteAuditLog, name: str) -> None:
        try:
            start.wait()
            for i in range(appends):
                message_id = f"{name}-{i}"
                seq = log.append("request", "out", peer="globex", message_id=message_id)
                with lock:
                    assert seq not in got, (seq, got[seq], message_id)
                    got[seq] = message_id
        except BaseException as e:
            failures.append(e)
            raise

    workers = [
        threading.Thread(target=work, args=(log, f"r{r}t{t}"))
        for r, log in enumerate(logs)
        for t in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert failures == []
    return got


def test_concurrent_appends_from_three_replicas_make_one_log_that_verifies(
    replicas: list[Database], pg_database: PgDatabase, tmp_path: Path
) -> None:
    paths = create_federation("Replicas", tmp_path / "fed")
    acme = organization(tmp_path, ORG, paths.roster, paths.admin_public)
    globex = organization(tmp_path, "globex", paths.roster, paths.admin_public)
    for d in (acme, globex):
        key = load_private_key(d / "private.jwk")
        member = Member(org_id=d.name, keys=[MemberKey(kid=key_id(key), x=str(key.get("x")))])
        add_member(paths.roster, paths.admin_private, member)
    with (acme / "node.toml").open("a") as f:
        f.write(
            f'[storage]\nurl = "{pg_database.url}"\npassword_file = "{pg_database.password_file}"\n'
        )
    federation = load_roster(paths.roster).federation_id
    key = load_private_key(acme / "private.jwk")

    logs = [open_log(db, key, federation, checkpoint_every=16) for db in replicas]
    try:
        written = append_together(logs, THREADS, APPENDS)
        total = REPLICAS * THREADS * APPENDS
        assert sorted(written) == list(range(total))  # no gap, no duplicate
        # Every replica sees every entry, and computes the same tree from them.
        assert [log.size for log in logs] == [total] * REPLICAS
        signed = [log.checkpoint() for log in logs]
        assert len({s.note for s in signed}) == 1 and signed[0].checkpoint.size == total
        # A replica proves the inclusion of an entry another one wrote.
        for seq in (0, 17, total - 1):
            writer = int(written[seq][1])
            other = logs[(writer + 1) % REPLICAS]
            entry = other.entry(seq)
            assert entry is not None and entry["msg"] == written[seq] and entry["seq"] == seq
            proof = other.inclusion_proof(seq, total)
            verify_inclusion(
                seq, total, leaf_hash(canonical(entry)), proof, signed[0].checkpoint.root
            )
    finally:
        for log in logs:
            log.close()

    # The auditor's check, through acme's node.toml (the log read from PostgreSQL).
    result = cli("verify", str(acme), "--json", "--witness", str(globex))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["entries"] == total, report["findings"]
    assert report["checkpoints"] >= total // 16 and report["latest_checkpoint"] == total
    out = tmp_path / "log.jsonl"
    exported = cli("export", str(acme), "-o", str(out))
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["entry"]["seq"] for d in lines if "entry" in d] == list(range(total))


def test_a_database_without_a_log_is_a_finding(pg_database: PgDatabase, tmp_path: Path) -> None:
    paths = create_federation("Empty", tmp_path / "fed")
    acme = organization(tmp_path, ORG, paths.roster, paths.admin_public)
    key = load_private_key(acme / "private.jwk")
    member = Member(org_id=ORG, keys=[MemberKey(kid=key_id(key), x=str(key.get("x")))])
    add_member(paths.roster, paths.admin_private, member)
    with (acme / "node.toml").open("a") as f:
        f.write(
            f'[storage]\nurl = "{pg_database.url}"\npassword_file = "{pg_database.password_file}"\n'
        )
    result = cli("verify", str(acme))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no audit log in postgresql://" in result.stdout
    assert pg_database.password not in result.stdout + result.stderr
    exported = cli("export", str(acme))
    assert exported.returncode == 2 and "no audit log here" in exported.stderr
    assert "postgresql://" in exported.stderr and pg_database.password not in exported.stderr


def test_a_checkpoint_is_signed_once_whoever_asks(replicas: list[Database]) -> None:
    keys = Keys()
    signatures = [0]
    counted = threading.Lock()

    def key() -> jwk.JWK:
        with counted:
            signatures[0] += 1
        return keys.new

    logs = [
        SqliteAuditLog(
            db,
            federation_id=FED,
            org_id=ORG,
            key=key,
            checkpoint_every=1000,
            checkpoint_interval_s=0.0,
        )
        for db in replicas
    ]
    try:
        for round_ in range(5):
            logs[round_ % REPLICAS].record("route", detail={"round": round_})
            before = signatures[0]
            start = threading.Barrier(REPLICAS * 2)
            results: list[Signed | None] = []

            def ask(
                how: Callable[[], Signed | None],
                start: threading.Barrier,
                results: list[Signed | None],
            ) -> None:
                start.wait()
                results.append(how())

            workers = [
                threading.Thread(target=ask, args=(how, start, results))
                for log in logs
                for how in (log.checkpoint, log.maybe_checkpoint)
            ]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            notes = {r.note for r in results if r is not None}
            assert len(notes) == 1, notes  # one checkpoint of this size, signed once
            assert signatures[0] - before == 1
            assert Checkpoint.parse(parse_note(notes.pop())[0]).size == round_ + 1
    finally:
        for log in logs:
            log.close()


def test_pruning_on_one_replica_while_the_others_append(
    replicas: list[Database], tmp_path: Path
) -> None:
    keys = Keys()
    logs = [open_log(db, keys.new, checkpoint_every=8) for db in replicas]
    try:
        append_together(logs, 1, 40)
        pruned: list[int] = []

        def prune() -> None:
            while n := logs[0].prune(below=100, limit=10):
                pruned.append(n)

        pruner = threading.Thread(target=prune)
        pruner.start()
        written = append_together(logs[1:], 2, 20)
        pruner.join()
        assert sum(pruned) >= 100 and len(written) == 80
        assert all(logs[2].entry(seq) is None for seq in range(100))
    finally:
        for log in logs:
            log.close()
    copy = tmp_path / "copy.sqlite3"
    assert copy_log(replicas[1], copy)
    report = verify_log(copy, keys.history(), origin=ORIGIN, org=ORG)
    assert report.ok, errors(report)
    retention = [b for b in report.bodies if b["kind"] == "retention"]
    assert retention and retention[-1]["detail"]["pruned_below"] == report.pruned_below
    # Each pruning starts where the one before ended: no range pruned twice.
    ranges = [(b["detail"]["pruned_from"], b["detail"]["pruned_below"]) for b in retention]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges)), ranges


def test_witnessing_state_is_one_for_every_replica(replicas: list[Database]) -> None:
    keys = Keys()
    a, b = (open_log(db, keys.new, checkpoint_every=4) for db in replicas[:2])
    try:
        for i in range(4):
            a.sent(hop(f"m-{i}"))
        checkpoint = Checkpoint.parse(parse_note(b.cosigned_note(4))[0])
        witness = signing_key_of(keys.witness["globex"])
        sig = cosign(checkpoint, log_origin(FED, "globex"), witness, 1)
        a.add_cosignature(4, "globex", sig)
        assert b.cosigned_size("globex") == 4 and b.witnessed_size(1) == 4
        assert sig.line() in b.cosigned_note(4)
        # Two replicas witnessing another log at once: the record keeps the newer.
        origin = log_origin(FED, "initech")
        for size in range(1, 30):
            theirs = Checkpoint(origin, size, bytes([size]) * 32)
            threads = [
                threading.Thread(target=log.remember_cosigned, args=(theirs, f"n{size}"))
                for log in (a, b)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        seen = a.seen(origin)
        assert seen is not None and seen.size == 29 and b.seen(origin) == seen
        older = Checkpoint(origin, 3, bytes([3]) * 32)
        b.remember_cosigned(older, "late")
        assert a.seen(origin) == seen
    finally:
        a.close()
        b.close()


def test_one_replica_at_a_time_sends_checkpoints_to_witnesses(
    replicas: list[Database], tmp_path: Path
) -> None:
    """The witnessing turn: taken by one replica, refused (not waited for) to the others
    until it is released; always granted on SQLite (one process)."""
    keys = Keys()
    a, b, c = (open_log(db, keys.new) for db in replicas)
    try:
        first, second = a.witnessing_turn(), b.witnessing_turn()
        assert first.take()
        assert not second.take() and not c.witnessing_turn().take()
        first.release()
        assert second.take()
        assert not a.witnessing_turn().take()
        second.release()
        last = c.witnessing_turn()
        assert last.take()
        last.release()
    finally:
        for log in (a, b, c):
            log.close()
    local = open_log(tmp_path / "audit.sqlite3", keys.new)
    try:
        turns = [local.witnessing_turn() for _ in range(2)]
        assert [t.take() for t in turns] == [True, True]
        for t in turns:
            t.release()
    finally:
        local.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_many_threads_append_to_one_log(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if kind == "sqlite":
        storage = Storage(parse_location("", base_dir=tmp_path, data_dir=tmp_path))
    else:
        storage = request.getfixturevalue("pg_database").storage()
    keys = Keys()
    try:
        migrations.upgrade(storage, ["audit"])
        log = open_log(storage.database("audit"), keys.new, checkpoint_every=32)
        try:
            written = append_together([log], 8, 25)
            assert sorted(written) == list(range(200))
        finally:
            log.close()
        copy = tmp_path / "copy.sqlite3"
        assert copy_log(storage.database("audit"), copy)
        report = verify_log(copy, keys.history(), origin=ORIGIN, org=ORG)
        assert report.ok and report.entries == 200, errors(report)
    finally:
        storage.close()


def test_the_database_going_away_and_coming_back(
    pg_cluster: Any, pg_database: PgDatabase, tmp_path: Path
) -> None:
    """While PostgreSQL is down an append fails clearly (StorageUnavailable, no entry
    acknowledged); once it is back the same log goes on, gapless, nothing lost."""
    keys = Keys()
    storages = [pg_database.storage(pool_timeout_s=2.0, connect_timeout_s=2.0) for _ in range(2)]
    try:
        migrations.upgrade(storages[0], ["audit"])
        a, b = (open_log(s.database("audit"), keys.new, checkpoint_every=4) for s in storages)
        try:
            acknowledged = [a.append("route", "local", message_id=f"before-{i}") for i in range(6)]
            pg_cluster.stop()
            try:
                for log in (a, b):
                    with pytest.raises(StorageUnavailable) as e:
                        log.append("route", "local", message_id="during")
                    assert e.value.problem == "database_unavailable"
                    with pytest.raises(StorageUnavailable):
                        log.checkpoint()
            finally:
                pg_cluster.start()
            acknowledged += [b.append("route", "local", message_id=f"after-{i}") for i in range(3)]
            assert acknowledged == list(range(9))
            assert a.checkpoint().note == b.checkpoint().note
        finally:
            a.close()
            b.close()
        copy = tmp_path / "copy.sqlite3"
        assert copy_log(storages[0].database("audit"), copy)
        report = verify_log(copy, keys.history(), origin=ORIGIN, org=ORG)
        assert report.ok and report.entries == 9, errors(report)
        assert "during" not in {body.get("msg") for body in report.bodies}
    finally:
        for s in storages:
            s.close()
