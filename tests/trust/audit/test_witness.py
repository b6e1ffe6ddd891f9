"""A witness's judgement (trust/audit/witness.py) and a log receipt's check
(trust/audit/inclusion.py), on real trees, notes and keys: the first checkpoint is taken
on trust, a consistent larger one is cosigned (and the cosignature verifies), a smaller
one is a rollback, another root at the same size or an inconsistent proof a fork, a
stale old size is answered with the size known; a receipt verifies only for the entry,
log, key and tree it claims."""

from __future__ import annotations

import json

import pytest
from nacl.signing import SigningKey

from consortium.trust.audit.inclusion import check_receipt, receipt
from consortium.trust.audit.merkle import Tree, leaf_hash
from consortium.trust.audit.notes import Checkpoint, format_note, sign_note, verify_cosignature
from consortium.trust.audit.witness import Seen, judge
from consortium.trust.jws import canonical

ORIGIN = "consortium/fed/acme"
WITNESS = "consortium/fed/globex"
OWNER, OTHER, GLOBEX = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()


def tree(n: int, salt: str = "") -> Tree:
    return Tree(leaf_hash(f"{salt}{i}".encode()) for i in range(n))


def note(t: Tree, size: int, key: SigningKey = OWNER, origin: str = ORIGIN) -> str:
    body = Checkpoint(origin, size, t.root(size)).body()
    return format_note(body, [sign_note(body, origin, key)])


def run(
    text: str,
    old: int,
    proof: list[bytes],
    seen: Seen | None,
    keys: tuple[SigningKey, ...] = (OWNER,),
) -> object:
    return judge(
        origin=ORIGIN,
        note=text,
        old_size=old,
        proof=proof,
        keys=[OWNER.verify_key],
        seen=seen,
        witness_name=WITNESS,
        witness_key=GLOBEX,
        now=1_800_000_000,
    )


def test_first_then_consistent_checkpoints_are_cosigned() -> None:
    t = tree(40)
    first = run(note(t, 10), 0, [], None)
    assert first.cosigned
    seen = Seen(10, t.root(10))
    later = run(note(t, 40), 10, t.consistency_proof(10, 40), seen)
    assert later.cosigned
    checkpoint = later.checkpoint
    assert later.cosignature is not None and checkpoint is not None
    assert verify_cosignature(checkpoint, later.cosignature, WITNESS, GLOBEX.verify_key) == (
        1_800_000_000
    )


def test_a_rollback_and_a_fork_are_refused() -> None:
    t = tree(40)
    seen = Seen(30, t.root(30))
    assert run(note(t, 20), 20, [], seen).verdict == "rollback"
    forked = tree(40, salt="x")
    same_size = run(note(forked, 30), 30, [], seen)
    assert same_size.verdict == "fork"
    larger = run(note(forked, 40), 30, forked.consistency_proof(30, 40), seen)
    assert larger.verdict == "fork"


def test_a_stale_old_size_gets_the_known_size() -> None:
    t = tree(40)
    answer = run(note(t, 40), 5, t.consistency_proof(5, 40), Seen(30, t.root(30)))
    assert (answer.verdict, answer.known_size) == ("old_size_mismatch", 30)


def test_foreign_or_forged_checkpoints_are_refused() -> None:
    t = tree(5)
    assert run(note(t, 5, origin="consortium/fed/initech"), 0, [], None).verdict == (
        "bad_checkpoint"
    )
    assert run(note(t, 5, key=OTHER), 0, [], None).verdict == "bad_signature"
    assert run("not a note", 0, [], None).verdict == "bad_checkpoint"
    assert run(note(t, 5), 0, [b"\0" * 32], None).verdict == "bad_checkpoint"


# -- log receipts ----------------------------------------------------------------------


def receipt_of(
    index: int = 3, size: int = 8, **entry_changes: object
) -> tuple[dict[str, object], Tree]:
    bodies = []
    for i in range(size):
        entry = {"v": 1, "seq": i, "kind": "route", "dir": "local", "time": i}
        if i == index:
            entry = {
                "v": 1,
                "seq": i,
                "kind": "request",
                "dir": "in",
                "peer": "globex",
                "msg": "m-1",
                "digest": "d-1",
                "time": i,
            }
        bodies.append(canonical(entry))
    t = Tree(leaf_hash(b) for b in bodies)
    return receipt(index, bodies[index].decode(), note(t, size), t.inclusion_proof(index, size)), t


def check(raw: object, **kwargs: object) -> str:
    args: dict[str, object] = {
        "origin": ORIGIN,
        "keys": [OWNER.verify_key],
        "request_id": "m-1",
        "request_digest": "d-1",
        "asker": "globex",
    }
    args.update(kwargs)
    return check_receipt(raw, **args).verdict  # type: ignore[arg-type]


def test_a_receipt_verifies_for_its_request_only() -> None:
    raw, _ = receipt_of()
    assert check(raw) == "included"
    assert check(json.loads(json.dumps(raw))) == "included"  # as it comes off the wire
    assert check(raw, request_id="m-2") == "wrong_entry"
    assert check(raw, request_digest="d-2") == "wrong_entry"
    assert check(raw, asker="initech") == "wrong_entry"
    assert check(raw, origin="consortium/fed/initech") == "wrong_log"
    assert check(raw, keys=[OTHER.verify_key]) == "bad_signature"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda r: r.update(index=2),
        lambda r: r.update(proof=list(reversed(r["proof"]))),
        lambda r: r.update(proof=[]),
        lambda r: r.update(entry=r["entry"].replace('"time":3', '"time":4')),
    ],
)
def test_a_tampered_receipt_fails(tamper: object) -> None:
    raw, _ = receipt_of()
    tamper(raw)  # type: ignore[operator]
    assert check(raw) != "included"


@pytest.mark.parametrize(
    "raw",
    [None, [], {"index": "3"}, {"index": -1, "entry": "", "checkpoint": ""}, {"index": True}],
)
def test_a_malformed_receipt_is_named(raw: object) -> None:
    assert check(raw) == "malformed"
