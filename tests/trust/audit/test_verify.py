"""The mutation corpus: a real audit log (trust/audit/log.py: entries of every kind,
signed checkpoints, two members' cosignatures) and every way of tampering with it —
delete, edit one byte, reorder, insert, truncate, fork, wrong key, an old key after its
rotation, a forged cosignature, another federation's log — each detected by
`verify_log` with a finding naming what is wrong, never a traceback, and the file read
never modified. The untouched log verifies."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jwcrypto import jwk

from consortium.federation.roster import Member, MemberKey, Roster
from consortium.node.audit import RosterHistory
from consortium.trust.audit import Hop, log_origin
from consortium.trust.audit.log import AuditError, SqliteAuditLog
from consortium.trust.audit.merkle import leaf_hash
from consortium.trust.audit.notes import Checkpoint, cosign, format_note, parse_note, sign_note
from consortium.trust.audit.verify import LogReport, WitnessView, verify_log
from consortium.trust.jws import canonical, signing_key_of
from consortium.trust.keys import generate_key, key_id

FED = "fed-test"
ORG = "acme"
ORIGIN = log_origin(FED, ORG)
WITNESSES = ("globex", "initech")
START = 1_700_000_000.0
ROTATED = START + 300.0  # acme's first key ends here: about entry 150


def member_key(key: jwk.JWK, not_after: float | None = None) -> MemberKey:
    until = "" if not_after is None else datetime.fromtimestamp(not_after, UTC).isoformat()
    return MemberKey(kid=key_id(key), x=str(key.get("x")), not_after=until)


class Keys:
    def __init__(self) -> None:
        self.old = generate_key()
        self.new = generate_key()
        self.witness = {w: generate_key() for w in WITNESSES}
        self.stranger = generate_key()

    def history(self) -> RosterHistory:
        members = [
            Member(org_id=ORG, keys=[member_key(self.old, ROTATED), member_key(self.new)]),
            *(Member(org_id=w, keys=[member_key(k)]) for w, k in self.witness.items()),
        ]
        return RosterHistory([Roster(federation_id=FED, name="test", members=members)])


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        self.now += 2.0
        return self.now


def build_log(path: Path, keys: Keys) -> None:
    """~300 entries over a key rotation: hops both ways, refusals and decisions, a
    checkpoint every 64 entries (signed with the key acme held), each cosigned by both
    witnesses."""
    clock = Clock()
    current = {"key": keys.old}
    log = SqliteAuditLog(
        path,
        federation_id=FED,
        org_id=ORG,
        key=lambda: current["key"],
        checkpoint_every=64,
        clock=clock,
    )
    for i in range(300):
        if clock.now > ROTATED - 40 and current["key"] is keys.old:
            current["key"] = keys.new
        hop = Hop(
            kind="request" if i % 2 else "answer",
            peer=WITNESSES[i % 2],
            message_id=f"m-{i}",
            kid="k",
            digest=hashlib.sha256(str(i).encode()).hexdigest(),
            jws="eyJhbGciOiJFZERTQSJ9..sig",
            request_digest="r" if i % 2 == 0 else "",
            task_id=f"t-{i // 4}",
        )
        if i % 10 == 3:
            log.refused(sender="mallory", message_id=f"x-{i}", reason="non_member", what="message")
        elif i % 10 == 7:
            log.record("route", task_id=f"t-{i // 4}", detail={"route": "peer", "peer": "globex"})
        elif i % 3:
            log.sent(hop)
        else:
            log.received(hop)
    log.close()
    db = sqlite3.connect(path)
    for size, note in db.execute("SELECT size, note FROM checkpoints").fetchall():
        body, _ = parse_note(note)
        checkpoint = Checkpoint.parse(body)
        for w, k in keys.witness.items():
            sig = cosign(checkpoint, log_origin(FED, w), signing_key_of(k), int(clock()))
            db.execute(
                "INSERT INTO cosignatures VALUES (?, ?, ?, ?)", (size, w, sig.line(), clock())
            )
    db.commit()
    db.close()


def verify(path: Path, keys: Keys, **kwargs: object) -> LogReport:
    before = path.read_bytes()
    report = verify_log(path, keys.history(), origin=ORIGIN, org=ORG, **kwargs)  # type: ignore[arg-type]
    # Nothing read is modified, and nothing is left next to it.
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    return report


def errors(report: LogReport) -> list[str]:
    return [f"{f.where}: {f.what}" for f in report.findings if f.severity == "error"]


def sql(path: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    db = sqlite3.connect(path)
    for statement, args in statements:
        db.execute(statement, args)
    db.commit()
    db.close()


def body(path: Path, seq: int) -> str:
    db = sqlite3.connect(path)
    [(text,)] = db.execute("SELECT body FROM entries WHERE seq = ?", (seq,)).fetchall()
    db.close()
    return str(text)


def resign_all(path: Path, key: jwk.JWK) -> None:
    """What an organization rewriting its own history does: recompute every leaf and
    re-sign every checkpoint with its real key (cosignatures cannot be redone)."""
    from consortium.trust.audit.merkle import Tree

    db = sqlite3.connect(path)
    tree = Tree()
    for seq, text in db.execute("SELECT seq, body FROM entries ORDER BY seq").fetchall():
        leaf = leaf_hash(text.encode())
        db.execute("UPDATE entries SET leaf = ? WHERE seq = ?", (leaf, seq))
        tree.append(leaf)
    for (size,) in db.execute("SELECT size FROM checkpoints").fetchall():
        cp = Checkpoint(ORIGIN, size, tree.root(size)).body()
        note = format_note(cp, [sign_note(cp, ORIGIN, signing_key_of(key))])
        db.execute("UPDATE checkpoints SET note = ? WHERE size = ?", (note, size))
    db.execute("DELETE FROM cosignatures")
    db.commit()
    db.close()


# -- the untouched log -----------------------------------------------------------------


def test_the_untouched_log_verifies_across_the_key_rotation(pristine: tuple[Path, Keys]) -> None:
    path, keys = pristine
    report = verify(path, keys, witnessed_by=2)
    assert report.ok, report.findings
    assert report.entries == 300 and report.checkpoints == 5  # 64..256, then close at 300
    assert report.latest_checkpoint == 300 and report.witnessed_size == 300
    assert all(sorted(names) == list(WITNESSES) for names in report.cosigners.values())
    # Both keys signed checkpoints: the old one before its rotation, the new one after.
    kinds = {b["kind"] for b in report.bodies}
    assert {"request", "answer", "refusal", "route"} <= kinds


def test_the_log_reopens_and_checks_itself(pristine: tuple[Path, Keys], copy: Path) -> None:
    keys = pristine[1]
    log = SqliteAuditLog(copy, federation_id=FED, org_id=ORG, key=lambda: keys.new)
    try:
        assert log.size == 300
        seq = log.append("route", "local", fields={"detail": {"route": "local"}})
        assert seq == 300
        signed = log.checkpoint()
        assert signed.checkpoint.size == 301
        proof = log.inclusion_proof(7, 301)
        from consortium.trust.audit.merkle import verify_inclusion

        entry = log.entry(7)
        assert entry is not None
        verify_inclusion(7, 301, leaf_hash(canonical(entry)), proof, signed.checkpoint.root)
    finally:
        log.close()
    assert verify(copy, keys).ok


# -- mutations -------------------------------------------------------------------------

Mutation = Callable[[Path, Keys], None]


def delete_entry(path: Path, keys: Keys) -> None:
    sql(path, ("DELETE FROM entries WHERE seq = 100", ()))


def delete_last_entries(path: Path, keys: Keys) -> None:
    sql(path, ("DELETE FROM entries WHERE seq >= 290", ()))


def edit_one_byte(path: Path, keys: Keys) -> None:
    text = body(path, 42)
    at = text.index('"msg":"') + len('"msg":"')
    edited = text[:at] + chr(ord(text[at]) ^ 1) + text[at + 1 :]
    sql(path, ("UPDATE entries SET body = ? WHERE seq = 42", (edited,)))


def edit_and_rehash(path: Path, keys: Keys) -> None:
    edited = body(path, 42).replace('"peer":"', '"peer":"x')
    sql(
        path,
        (
            "UPDATE entries SET body = ?, leaf = ? WHERE seq = 42",
            (edited, leaf_hash(edited.encode())),
        ),
    )


def reorder(path: Path, keys: Keys) -> None:
    a, b = body(path, 10), body(path, 11)
    sql(
        path,
        ("UPDATE entries SET body = ?, leaf = ? WHERE seq = 10", (b, leaf_hash(b.encode()))),
        ("UPDATE entries SET body = ?, leaf = ? WHERE seq = 11", (a, leaf_hash(a.encode()))),
    )


def insert_entry(path: Path, keys: Keys) -> None:
    db = sqlite3.connect(path)
    rows = db.execute(
        "SELECT seq, body, leaf, kind, message_id, task_id, trace_id FROM entries "
        "WHERE seq >= 50 ORDER BY seq DESC"
    ).fetchall()
    for row in rows:
        db.execute("UPDATE entries SET seq = ? WHERE seq = ?", (row[0] + 1, row[0]))
    forged = canonical({"v": 1, "seq": 50, "time": START + 50.5, "kind": "route", "dir": "local"})
    db.execute(
        "INSERT INTO entries VALUES (50, ?, ?, 'route', '', '', '')",
        (forged.decode(), leaf_hash(forged)),
    )
    db.commit()
    db.close()


def truncate_file(path: Path, keys: Keys) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def flip_byte_in_file(path: Path, keys: Keys) -> None:
    data = bytearray(path.read_bytes())
    at = data.index(b'"msg":"m-124"') + len(b'"msg":"m-1')
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def fork(path: Path, keys: Keys) -> None:
    edited = body(path, 20).replace('"peer":"', '"peer":"x')
    sql(path, ("UPDATE entries SET body = ? WHERE seq = 20", (edited,)))
    resign_all(path, keys.new)


def wrong_key(path: Path, keys: Keys) -> None:
    db = sqlite3.connect(path)
    [(note,)] = db.execute("SELECT note FROM checkpoints WHERE size = 300").fetchall()
    cp, _ = parse_note(note)
    forged = format_note(cp, [sign_note(cp, ORIGIN, signing_key_of(keys.stranger))])
    db.execute("UPDATE checkpoints SET note = ? WHERE size = 300", (forged,))
    db.commit()
    db.close()


def old_key_after_rotation(path: Path, keys: Keys) -> None:
    db = sqlite3.connect(path)
    [(note,)] = db.execute("SELECT note FROM checkpoints WHERE size = 300").fetchall()
    cp, _ = parse_note(note)
    stale = format_note(cp, [sign_note(cp, ORIGIN, signing_key_of(keys.old))])
    db.execute("UPDATE checkpoints SET note = ? WHERE size = 300", (stale,))
    db.commit()
    db.close()


def forged_cosignature(path: Path, keys: Keys) -> None:
    db = sqlite3.connect(path)
    [(note,)] = db.execute("SELECT note FROM checkpoints WHERE size = 128").fetchall()
    checkpoint = Checkpoint.parse(parse_note(note)[0])
    sig = cosign(checkpoint, log_origin(FED, "globex"), signing_key_of(keys.stranger), 1)
    db.execute(
        "UPDATE cosignatures SET line = ? WHERE size = 128 AND witness = 'globex'", (sig.line(),)
    )
    db.commit()
    db.close()


def drop_checkpoint_signature(path: Path, keys: Keys) -> None:
    db = sqlite3.connect(path)
    [(note,)] = db.execute("SELECT note FROM checkpoints WHERE size = 64").fetchall()
    db.execute("UPDATE checkpoints SET note = ? WHERE size = 64", (parse_note(note)[0] + "\n",))
    db.commit()
    db.close()


MUTATIONS: dict[str, tuple[Mutation, str]] = {
    "delete": (delete_entry, "entry 100: missing"),
    "delete the tail": (delete_last_entries, "checkpoint 300: covers 300 entries"),
    "edit one byte": (edit_one_byte, "entry 42: differs from its stored leaf hash"),
    "edit and rehash": (edit_and_rehash, "checkpoint 64: its root is not the root"),
    "reorder": (reorder, "entry 10: states position 11"),
    "insert": (insert_entry, "entry 51: states position 50"),
    "truncate the file": (truncate_file, "database"),
    "flip a byte in the file": (flip_byte_in_file, "entry 124"),
    "wrong key": (wrong_key, "checkpoint 300: is not signed by a key acme held"),
    "old key after rotation": (old_key_after_rotation, "checkpoint 300: is not signed"),
    "forged cosignature": (forged_cosignature, "cosignature of checkpoint 128 by globex"),
    "unsigned checkpoint": (drop_checkpoint_signature, "checkpoint 64: cannot be read: note"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_every_mutation_is_detected(name: str, pristine: tuple[Path, Keys], copy: Path) -> None:
    mutate, expected = MUTATIONS[name]
    mutate(copy, pristine[1])
    report = verify(copy, pristine[1])
    assert not report.ok
    assert any(e.startswith(expected) for e in errors(report)), errors(report)


def test_a_damaged_log_refuses_to_be_appended_to(pristine: tuple[Path, Keys], copy: Path) -> None:
    edit_and_rehash(copy, pristine[1])
    with pytest.raises(AuditError, match="checkpoint 300 does not match the entries"):
        SqliteAuditLog(copy, federation_id=FED, org_id=ORG, key=lambda: pristine[1].new)


def test_a_fork_is_caught_by_the_witnesses(pristine: tuple[Path, Keys], copy: Path) -> None:
    """Rewritten and re-signed with the organization's own key, the log is consistent
    with itself; it has lost its cosignatures, and the entries do not give the root the
    witnesses cosigned."""
    path, keys = pristine
    db = sqlite3.connect(path)
    [(note,)] = db.execute("SELECT note FROM checkpoints WHERE size = 300").fetchall()
    db.close()
    seen = Checkpoint.parse(parse_note(note)[0])
    fork(copy, keys)
    assert verify(copy, keys).ok  # no witnessing asked: internally consistent
    unwitnessed = verify(copy, keys, witnessed_by=2)
    assert errors(unwitnessed) == ["log: no checkpoint has 2 cosignatures: never witnessed"]
    views = [WitnessView(w, seen.size, seen.root) for w in WITNESSES]
    forked = verify(copy, keys, witness_views=views)
    assert errors(forked) == [
        f"{w}'s record of this log: the entries do not give the root {w} cosigned: forked"
        for w in WITNESSES
    ]


def test_a_rollback_is_caught_by_the_witnesses(pristine: tuple[Path, Keys], copy: Path) -> None:
    keys = pristine[1]
    sql(
        copy,
        ("DELETE FROM entries WHERE seq >= 200", ()),
        ("DELETE FROM checkpoints WHERE size > 192", ()),
        ("DELETE FROM cosignatures WHERE size > 192", ()),
    )
    assert verify(copy, keys).ok  # an older state of the log is a valid log
    report = verify(copy, keys, witness_views=[WitnessView("globex", 300, b"\0" * 32)])
    assert errors(report) == [
        "globex's record of this log: globex cosigned 300 entries; the log has 200: rolled back"
    ]


def test_another_federations_log_is_named(pristine: tuple[Path, Keys], copy: Path) -> None:
    report = verify_log(copy, pristine[1].history(), origin=log_origin("other-fed", ORG), org=ORG)
    assert errors(report) == [f"database: is the log of {ORIGIN}, not consortium/other-fed/acme"]


def test_a_missing_or_foreign_file_is_a_finding(
    tmp_path: Path, pristine: tuple[Path, Keys]
) -> None:
    keys = pristine[1]
    missing = verify_log(tmp_path / "nope.sqlite3", keys.history(), origin=ORIGIN, org=ORG)
    assert errors(missing) == [f"database: no audit log at {tmp_path / 'nope.sqlite3'}"]
    text = tmp_path / "text.sqlite3"
    text.write_text("not a database\n")
    report = verify(text, keys)
    assert not report.ok and errors(report)[0].startswith("database: ")


def test_a_key_dropped_from_a_later_roster_ends_there(
    pristine: tuple[Path, Keys], copy: Path
) -> None:
    """Key history across roster versions: version 1 lists only acme's first key (no
    expiry), version 2, issued at ROTATED, only the new one. What the old key signed
    before version 2 verifies; what it signed after does not."""
    keys = pristine[1]
    witnesses = [Member(org_id=w, keys=[member_key(k)]) for w, k in keys.witness.items()]
    issued = datetime.fromtimestamp(ROTATED, UTC).isoformat()
    history = RosterHistory(
        [
            Roster(
                federation_id=FED,
                name="t",
                version=2,
                issued_at=issued,
                members=[Member(org_id=ORG, keys=[member_key(keys.new)]), *witnesses],
            ),
            Roster(
                federation_id=FED,
                name="t",
                version=1,
                members=[Member(org_id=ORG, keys=[member_key(keys.old)]), *witnesses],
            ),
        ]
    )
    assert verify_log(copy, history, origin=ORIGIN, org=ORG).ok
    old_key_after_rotation(copy, keys)
    report = verify_log(copy, history, origin=ORIGIN, org=ORG)
    assert [e for e in errors(report) if e.startswith("checkpoint 300: is not signed")]


@given(
    st.dictionaries(
        st.sampled_from(["kind", "dir", "peer", "msg", "digest", "seq", "time", "v", "x"]),
        st.one_of(
            st.text(),
            st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
            st.floats(allow_nan=False, allow_infinity=False),
            st.booleans(),
            st.none(),
            st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
        ),
    )
)
def test_an_entrys_bytes_are_rfc8785(entry: dict[str, object]) -> None:
    """The log's fast path for flat entries writes exactly what RFC 8785 writes."""
    import rfc8785

    from consortium.trust.audit.log import _canonical

    try:
        expected = bytes(rfc8785.dumps(entry))
    except (rfc8785.CanonicalizationError, ValueError, UnicodeEncodeError):
        return
    assert _canonical(entry) == expected
