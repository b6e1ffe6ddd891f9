"""Redaction receipts (redaction/receipts.py): disclosures are RFC 9901 disclosures (their
digests computed here independently of the module), salted with 128 bits, parsed
strictly with one clear line per mistake; the metadata lists the digests sorted; the
disclosure store is private (0600, journal files too), round-trips what was sent, and is
safe to share between threads."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import threading
from pathlib import Path

import pytest
from a2a.types import a2a_pb2

from consortium.errors import ConfigError
from consortium.redaction.receipts import (
    REDACTION_KEY,
    Disclosure,
    DisclosureStore,
    ReceiptError,
    make_disclosure,
    parse_disclosure,
    read_redaction_metadata,
    redaction_metadata,
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rfc_digest(salt: str, kind: str, value: str) -> str:
    """RFC 9901 sections 4.2.1 and 4.2.3, by hand: base64url(SHA-256(ASCII(base64url(
    UTF-8(JSON array)))))."""
    array = '["' + salt + '","' + kind + '","' + value + '"]'  # no escapes needed here
    encoded = b64(array.encode("utf-8"))
    return b64(hashlib.sha256(encoded.encode("ascii")).digest())


def test_encoding_and_digest_follow_rfc_9901() -> None:
    d = Disclosure("_26bc4LT-ac6q2KI6cBW5es", "PERSON", "Zoë Müller")
    array = json.loads(base64.urlsafe_b64decode(d.encoded + "=" * (-len(d.encoded) % 4)))
    assert array == ["_26bc4LT-ac6q2KI6cBW5es", "PERSON", "Zoë Müller"]
    assert "=" not in d.encoded
    assert d.digest == rfc_digest("_26bc4LT-ac6q2KI6cBW5es", "PERSON", "Zoë Müller")
    # The example disclosure of RFC 9901 section 4.2.1 (claim name "family_name") hashes
    # to the digest the RFC gives for it in section 4.2.3 (digest_of is what we use).
    from consortium.redaction.receipts import digest_of

    rfc = "WyJfMjZiYzRMVC1hYzZxMktJNmNCVzVlcyIsICJmYW1pbHlfbmFtZSIsICJNw7ZiaXVzIl0"
    assert digest_of(rfc) == "X9yH0Ajrdm1Oij4tWso9UzzKJvPoDxwmuEcO3XAdRC0"


def test_make_and_parse_round_trip_with_a_fresh_128_bit_salt() -> None:
    a = make_disclosure("EMAIL_ADDRESS", 'bob@example.com "quoted" \\ \n ünï')
    b = make_disclosure("EMAIL_ADDRESS", 'bob@example.com "quoted" \\ \n ünï')
    assert parse_disclosure(a.encoded) == a
    assert len(base64.urlsafe_b64decode(a.salt + "==")) == 16
    assert a.salt != b.salt and a.digest != b.digest  # the same value: unlinkable digests
    assert "bob" not in repr(a)  # never shows the value


@pytest.mark.parametrize(
    ("encoded", "words"),
    [
        ("", "empty"),
        ("not base64!", "not unpadded base64url"),
        (b64(b"[1,2") + "=", "not unpadded base64url"),
        (b64(b"\xff\xfe"), "not UTF-8"),
        (b64(b"[1,2"), "not JSON"),
        (b64(b'{"a":1}'), "array of 3"),
        (b64(b'["a","b"]'), "array of 3"),
        (b64(b'["a","b","c","d"]'), "array of 3"),
        (b64(b'["' + b"A" * 22 + b'","PERSON",7]'), "not all strings"),
        (b64(b'["c2hvcnQ","PERSON","Ann"]'), "shorter than 128 bits"),
        (b64(b'["' + b"A" * 21 + b'=","PERSON","Ann"]'), "salt is not unpadded base64url"),
        (b64(b'["' + b"A" * 22 + b'","person","Ann"]'), "not UPPER_SNAKE"),
        (b64(b'["' + b"A" * 22 + b'","PERSON",""]'), "value is empty"),
        (b64(b'["' + b"A" * 22 + b'", "PERSON", "Ann"]'), "canonical compact JSON"),
    ],
)
def test_malformed_disclosures_are_refused_with_one_clear_line(encoded: str, words: str) -> None:
    with pytest.raises(ReceiptError, match=words) as info:
        parse_disclosure(encoded)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_non_canonical_base64_is_refused() -> None:
    d = make_disclosure("PERSON", "Ann")
    while len(d.encoded) % 4 == 0:  # a last character with unused bits
        d = make_disclosure("PERSON", d.value + "n")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    padding = "=" * (-len(d.encoded) % 4)
    # Other last characters that differ only in the unused bits: the same bytes.
    twins = [
        c
        for c in alphabet
        if c != d.encoded[-1]
        and base64.urlsafe_b64decode(d.encoded[:-1] + c + padding)
        == base64.urlsafe_b64decode(d.encoded + padding)
    ]
    assert twins
    for twin in twins:
        with pytest.raises(ReceiptError, match="canonical"):
            parse_disclosure(d.encoded[:-1] + twin)


def test_bad_entity_types_and_values_are_refused_when_made() -> None:
    with pytest.raises(ReceiptError, match="UPPER_SNAKE"):
        make_disclosure("Person", "Ann")
    with pytest.raises(ReceiptError, match="empty"):
        make_disclosure("PERSON", "")
    with pytest.raises(ReceiptError, match="Unicode"):
        make_disclosure("PERSON", "\ud800")


def test_metadata_lists_sorted_digests_and_reads_back() -> None:
    ds = [make_disclosure("PERSON", f"name {i}") for i in range(20)]
    meta = redaction_metadata(ds, {"PERSON": 20})
    assert meta["_sd_alg"] == "sha-256"
    assert meta["_sd"] == sorted(d.digest for d in ds)
    assert meta["entities"] == {"PERSON": 20}
    # Through a protobuf Struct (numbers become doubles) and back.
    msg = a2a_pb2.Message(message_id="m")
    msg.metadata.update({REDACTION_KEY: meta})
    from google.protobuf.json_format import MessageToDict

    claims = read_redaction_metadata(MessageToDict(msg.metadata))
    assert claims is not None
    assert claims.digests == tuple(meta["_sd"]) and claims.entities == {"PERSON": 20}
    assert read_redaction_metadata({}) is None
    assert read_redaction_metadata({"other": 1}) is None


def _meta(**changes: object) -> dict[str, object]:
    good: dict[str, object] = {
        "_sd_alg": "sha-256",
        "_sd": [make_disclosure("PERSON", "Ann").digest],
        "entities": {"PERSON": 1},
    }
    return {REDACTION_KEY: {**good, **changes}}


@pytest.mark.parametrize(
    ("meta", "words"),
    [
        ({REDACTION_KEY: []}, "not an object"),
        (_meta(_sd_alg="sha-1"), "_sd_alg"),
        (_meta(_sd="x"), "_sd is not a list"),
        (_meta(_sd=["abc"]), "not a SHA-256 digest"),
        (_meta(_sd=["!" * 43]), "not unpadded base64url"),
        (_meta(_sd=[b64(bytes(32))] * 2), "twice"),
        (_meta(entities={"person": 1}), "UPPER_SNAKE"),
        (_meta(entities={"PERSON": -1}), "non-negative integer"),
        (_meta(entities={"PERSON": 1.5}), "non-negative integer"),
        (_meta(entities={"PERSON": True}), "non-negative integer"),
        (_meta(entities=[]), "entities is not an object"),
        (_meta(extra=1), "unknown key 'extra'"),
    ],
)
def test_malformed_metadata_is_refused(meta: dict[str, object], words: str) -> None:
    with pytest.raises(ReceiptError, match=words):
        read_redaction_metadata(meta)


def signed_like(disclosures: list[Disclosure], message_id: str = "m-1") -> a2a_pb2.Message:
    """A message as a node would send it (the signature is not this module's concern)."""
    msg = a2a_pb2.Message(
        message_id=message_id, role=a2a_pb2.ROLE_USER, parts=[a2a_pb2.Part(text="<PERSON_1> hi")]
    )
    msg.metadata.update(
        {REDACTION_KEY: redaction_metadata(disclosures, {"PERSON": len(disclosures)})}
    )
    return msg


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_is_private_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "data" / "redaction.sqlite3"
    store = DisclosureStore(path, clock=lambda: 1234.5)
    ds = [make_disclosure("PERSON", "Ann Lee"), make_disclosure("EMAIL_ADDRESS", "a@b.example")]
    msg = signed_like(ds)
    store.record("m-1", "task-1", "globex", msg, ds)
    store.record("m-2", "task-1", "initech", signed_like([], "m-2"), [])
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        assert p.exists() and mode(p) == 0o600, p
    got = store.get("m-1")
    assert got is not None
    assert got.message == msg and got.recipient == "globex" and got.task_id == "task-1"
    assert got.disclosures == tuple(ds) and got.created_at == 1234.5
    assert store.get("nope") is None
    assert store.for_task("task-1") == ["m-1", "m-2"] and store.for_task("x") == []
    store.close()
    again = DisclosureStore(path, must_exist=True)
    assert again.get("m-1") == got
    again.close()


def test_an_existing_readable_store_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "redaction.sqlite3"
    DisclosureStore(path).close()
    path.chmod(0o644)
    DisclosureStore(path).close()
    assert mode(path) == 0o600


def test_store_refuses_what_it_should_not_keep(tmp_path: Path) -> None:
    store = DisclosureStore(tmp_path / "r.sqlite3")
    ds = [make_disclosure("PERSON", "Ann")]
    msg = signed_like(ds)
    with pytest.raises(ReceiptError, match="differs"):
        store.record("other", "t", "globex", msg, ds)
    with pytest.raises(ReceiptError, match="does not list"):
        store.record("m-1", "t", "globex", msg, [make_disclosure("PERSON", "Bo")])
    store.record("m-1", "t", "globex", msg, ds)
    with pytest.raises(ReceiptError, match="recorded already"):
        store.record("m-1", "t", "globex", msg, ds)
    got = store.get("m-1")
    assert got is not None and got.disclosures == tuple(ds)
    store.close()


def test_store_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="redacted nothing yet"):
        DisclosureStore(tmp_path / "missing.sqlite3", must_exist=True)
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(ConfigError, match="not a usable receipts database"):
        DisclosureStore(junk)
    with pytest.raises(ConfigError, match="cannot open the receipts database"):
        DisclosureStore(tmp_path)  # a directory


def test_store_is_safe_to_share_between_threads(tmp_path: Path) -> None:
    store = DisclosureStore(tmp_path / "r.sqlite3")
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                ds = [make_disclosure("PERSON", f"p{n}-{i}")]
                mid = f"m-{n}-{i}"
                store.record(mid, f"t{n}", "globex", signed_like(ds, mid), ds)
                assert store.get(mid) is not None
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(len(store.for_task(f"t{n}")) == 20 for n in range(4))
    store.close()


def test_old_receipts_are_pruned_with_their_disclosures(tmp_path: Path) -> None:
    path = tmp_path / "redaction.sqlite3"
    now = [1000.0]
    store = DisclosureStore(path, clock=lambda: now[0])
    old = [make_disclosure("PERSON", "Ann Lee")]
    store.record("m-old", "task-1", "globex", signed_like(old, "m-old"), old)
    now[0] = 2000.0
    young = [make_disclosure("PERSON", "Bo Yi")]
    store.record("m-new", "task-2", "globex", signed_like(young, "m-new"), young)
    assert store.prune(1500.0) == 1
    assert store.get("m-old") is None and store.for_task("task-1") == []
    kept = store.get("m-new")
    assert kept is not None and kept.disclosures == tuple(young)
    assert store.prune(1500.0) == 0  # nothing more that old
    store.close()
    # The value is gone from the file, not left in a free page (secure_delete).
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith(path.name))
    assert old[0].encoded.encode() not in raw and b"Ann Lee" not in raw
    assert young[0].encoded.encode() in raw
