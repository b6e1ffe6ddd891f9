"""Retention of the audit log (trust/audit/log.py `prune`): old entries lose their bodies,
never their leaf hashes, so a pruned log still verifies — every checkpoint's root, the
witnesses' cosignatures and records, inclusion and consistency proofs — and the auditor
is told which range was pruned. Tampering with the pruned range, or pruning without the
log's own record of it, is still caught. Over the mutation corpus's log (test_verify)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from consortium.node.retention import DAY_S, audit_step
from consortium.trust.audit.log import SqliteAuditLog
from consortium.trust.audit.merkle import (
    Tree,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from consortium.trust.audit.verify import WitnessView, export_lines
from consortium.trust.jws import canonical
from tests.trust.audit.test_verify import (
    FED,
    ORG,
    START,
    WITNESSES,
    Keys,
    errors,
    sql,
    verify,
)


def open_log(path: Path, keys: Keys, now: float = START + 10_000) -> SqliteAuditLog:
    return SqliteAuditLog(
        path, federation_id=FED, org_id=ORG, key=lambda: keys.new, clock=lambda: now
    )


def column(path: Path, query: str) -> list[object]:
    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute(query)]
    finally:
        db.close()


def root_at(path: Path, size: int) -> bytes:
    leaves = column(path, f"SELECT leaf FROM entries WHERE seq < {size} ORDER BY seq")
    return Tree(bytes(leaf) for leaf in leaves).root(size)  # type: ignore[arg-type]


def warnings(report: object) -> list[str]:
    return [f"{f.where}: {f.what}" for f in report.findings if f.severity == "warning"]  # type: ignore[attr-defined]


def test_a_pruned_log_still_verifies_and_says_what_was_pruned(
    pristine: tuple[Path, Keys], copy: Path
) -> None:
    path, keys = pristine
    root_300 = root_at(path, 300)
    log = open_log(copy, keys)
    try:
        assert log.prune(below=150) == 150
        assert log.pruned_below == 150 and log.size == 301  # and its own entry
        assert log.entry(10) is None and log.entry(150) is not None
        retention = log.entry(300)
        assert retention is not None and retention["kind"] == "retention"
        assert retention["detail"] == {"pruned_from": 0, "pruned_below": 150}
        # Proofs over the pruned range still come from the kept hashes.
        signed = log.checkpoint()
        assert signed.checkpoint.size == 301
        proof = log.consistency_proof(64, 301)
        verify_consistency(64, 301, proof, root_at(path, 64), signed.checkpoint.root)
        leaf = column(copy, "SELECT leaf FROM entries WHERE seq = 10")[0]
        verify_inclusion(10, 301, bytes(leaf), log.inclusion_proof(10, 301), signed.checkpoint.root)  # type: ignore[arg-type]
    finally:
        log.close()
    reopened = open_log(copy, keys)  # checks itself: kept hashes, the latest root
    try:
        assert reopened.size == 301 and reopened.pruned_below == 150
        assert reopened.entry(149) is None and reopened.entry(150) is not None
    finally:
        reopened.close()
    assert column(copy, "SELECT COUNT(*) FROM entries WHERE seq < 150 AND body = ''") == [150]
    assert column(copy, "SELECT COUNT(*) FROM entries WHERE seq < 150 AND message_id != ''") == [0]
    # Checkpoint 64 went (inside the range, not the newest over it, nobody's latest);
    # 128 stays: it commits the range, with both witnesses' cosignatures.
    assert column(copy, "SELECT size FROM checkpoints ORDER BY size") == [128, 192, 256, 300, 301]
    assert column(copy, "SELECT COUNT(*) FROM cosignatures WHERE size = 128") == [2]
    views = [WitnessView(w, 300, root_300) for w in WITNESSES]
    report = verify(copy, keys, witnessed_by=2, witness_views=views)
    assert report.ok, report.findings
    assert report.pruned_below == 150 and report.entries == 301
    assert report.witnessed_size == 300 and report.checkpoints == 5
    assert warnings(report)[0].startswith("entries 0-149: pruned by retention")
    # The export says the same: the pruned entries by their leaf hash, which with the
    # kept entries' give the checkpoint's root again.
    lines = [json.loads(line) for line in export_lines(copy)]
    leaves = [
        bytes.fromhex(x["pruned"]["leaf"]) if "pruned" in x else leaf_hash(canonical(x["entry"]))
        for x in lines
        if "pruned" in x or "entry" in x
    ]
    assert sum("pruned" in x for x in lines) == 150
    assert Tree(leaves).root(300) == root_300


def test_a_pruned_range_cannot_be_altered_or_forked(
    pristine: tuple[Path, Keys], copy: Path
) -> None:
    path, keys = pristine
    log = open_log(copy, keys)
    log.prune(below=150)
    log.close()
    sql(copy, ("UPDATE entries SET leaf = ? WHERE seq = 20", (leaf_hash(b"other"),)))
    report = verify(copy, keys, witness_views=[WitnessView("globex", 300, root_at(path, 300))])
    assert "checkpoint 128: its root is not the root of the entries: an entry changed" in errors(
        report
    )
    assert any("forked" in e for e in errors(report))


BLANK = "UPDATE entries SET body = '', message_id = '', task_id = '', trace_id = ''"


def test_bodies_removed_without_the_logs_record_are_an_error(
    pristine: tuple[Path, Keys], copy: Path
) -> None:
    """Someone with the file blanks old entries and marks them pruned: the hashes still
    verify, but no retention entry of the log says so."""
    keys = pristine[1]
    sql(
        copy,
        (BLANK + " WHERE seq < 100", ()),
        ("INSERT INTO meta VALUES ('pruned_below', '100')", ()),
    )
    report = verify(copy, keys)
    assert errors(report) == [
        "entries 0-99: pruned, but no retention entry of the log records it: bodies removed"
    ]


def test_pruning_stops_at_the_latest_checkpoint_and_at_young_entries(
    pristine: tuple[Path, Keys], copy: Path
) -> None:
    keys = pristine[1]
    log = open_log(copy, keys)
    try:
        for _ in range(10):  # not yet under any checkpoint
            log.record("route", detail={"route": "local"})
        assert log.prune(below=10**9) == 300 and log.pruned_below == 300
        assert log.entry(305) is not None
        assert log.prune(below=10**9) == 0  # nothing checkpointed left to prune
    finally:
        log.close()
    assert verify(copy, keys).ok


def test_retention_by_age_and_by_count(pristine: tuple[Path, Keys], copy: Path) -> None:
    """`[audit] retention_days` and `max_entries` as the node applies them, in batches:
    by age, the entries written before the bound (the corpus's clock: 2 s a step); by
    count, all but the newest N; with both, whichever prunes more."""
    keys = pristine[1]
    log = open_log(copy, keys)
    try:
        now = (log.entry(100) or {})["time"] + 2 * DAY_S
        by_age = audit_step(log, days=2, max_entries=0, clock=lambda: now)
        assert by_age is not None
        assert by_age.prune() == 100 and log.pruned_below == 100
        by_count = audit_step(log, days=0, max_entries=101)  # of 301 entries now
        assert by_count is not None and by_count.prune() == 100
        assert log.pruned_below == 200
        both = audit_step(log, days=2, max_entries=50, clock=lambda: now)  # of 302
        assert both is not None and both.prune() == 52 and log.pruned_below == 252
        assert audit_step(log, days=0, max_entries=0) is None
    finally:
        log.close()
    report = verify(copy, keys)
    assert report.ok, report.findings
    assert report.pruned_below == 252
