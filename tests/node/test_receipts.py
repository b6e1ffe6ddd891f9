"""Checking redaction receipts (node/receipts.py) on really signed messages: a disclosure
of a withheld span verifies; a tampered disclosure (value, salt or type), one of another
message, or one whose value the peer did receive fails; a tampered message fails its
signature; an old message signed with a since-rotated key still verifies; and one
disclosed span tells nothing about the others."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime

from a2a.types import a2a_pb2
from google.protobuf.json_format import MessageToDict, ParseDict
from jwcrypto import jwk

from consortium.federation.roster import MemberKey, Roster
from consortium.node.client import text_message
from consortium.node.receipts import check_receipt
from consortium.redaction.pseudonyms import Replacement, Vault
from consortium.redaction.receipts import (
    REDACTION_KEY,
    Disclosure,
    digest_of,
    make_disclosure,
    redaction_metadata,
)
from consortium.trust.keys import generate_key, public_jwk
from consortium.trust.signing import SigningIdentity, sign_request
from tests.trust.test_admission import member

NOW = 1_800_000_000.0
TEXT = "Ann Lee wrote to bob@example.com; Ann Lee's IBAN is DE89370400440532013000."
SPANS = [
    ("Ann Lee", "PERSON"),
    ("bob@example.com", "EMAIL_ADDRESS"),
    ("DE89370400440532013000", "IBAN_CODE"),
]


class World:
    def __init__(self) -> None:
        self.acme, self.globex = generate_key(), generate_key()
        self.roster = Roster(
            federation_id="fed",
            name="Fed",
            members=[member("acme", self.acme), member("globex", self.globex)],
        )

    def send(
        self,
        text: str = TEXT,
        spans: list[tuple[str, str]] = SPANS,
        *,
        key: jwk.JWK | None = None,
        now: float = NOW,
        leak: str = "",
    ) -> tuple[a2a_pb2.Message, list[Disclosure]]:
        """What acme's node sends globex: every occurrence of each span pseudonymized, one
        disclosure per occurrence, the digests in the signed metadata. `leak`: a value
        left in the text (a missed span) although it is disclosed as withheld."""
        replacements: list[Replacement] = []
        for value, kind in spans:
            at = text.find(value)
            while at >= 0:
                replacements.append(Replacement(at, at + len(value), kind))
                at = text.find(value, at + 1)
        replacements.sort(key=lambda r: r.start)
        disclosures = [make_disclosure(r.entity_type, text[r.start : r.end]) for r in replacements]
        redacted = Vault().pseudonymize(text, replacements) + (f" {leak}" if leak else "")
        message = text_message(redacted)
        counts = Counter(r.entity_type for r in replacements)
        message.metadata.update({REDACTION_KEY: redaction_metadata(disclosures, counts)})
        signer = SigningIdentity(key or self.acme, "acme", "fed")
        return sign_request(message, signer, recipient="globex", now=now)[0], disclosures


def encoded(ds: list[Disclosure]) -> list[str]:
    return [d.encoded for d in ds]


def test_each_disclosure_of_a_withheld_span_verifies() -> None:
    w = World()
    message, ds = w.send()
    assert len(ds) == 4  # Ann Lee twice: two spans, two salts, two digests
    assert "Ann Lee" not in message.parts[0].text
    result = check_receipt(message, encoded(ds), w.roster)
    assert result.ok and result.signature_ok, result
    assert result.claims is not None and result.claims.sender == "acme"
    assert result.claims.recipient == "globex"
    assert [d.entity_type for d in result.disclosures] == [
        "PERSON",
        "EMAIL_ADDRESS",
        "PERSON",
        "IBAN_CODE",
    ]
    assert all(d.ok and d.digest == x.digest for d, x in zip(result.disclosures, ds, strict=True))
    assert result.disclosures[1].value == "bob@example.com"
    assert "bob@example.com" not in repr(result)


def test_tampered_disclosures_fail() -> None:
    w = World()
    message, ds = w.send()
    person = ds[0]
    forged = [
        replace(person, value="Bo Wu"),  # another value
        replace(person, value="ann lee"),
        make_disclosure("PERSON", "Ann Lee"),  # another salt
        replace(person, entity_type="ORGANIZATION"),  # another type
    ]
    result = check_receipt(message, [person.encoded, *encoded(forged)], w.roster)
    assert result.signature_ok and not result.ok
    assert [d.ok for d in result.disclosures] == [True, False, False, False, False]
    for d in result.disclosures[1:]:
        assert "not among the message's signed digests" in d.reason


def test_a_disclosure_of_another_message_fails() -> None:
    w = World()
    first, _ = w.send()
    _, other = w.send()  # the same text, sent again: fresh salts
    result = check_receipt(first, encoded(other[:1]), w.roster)
    assert not result.ok and "not among" in result.disclosures[0].reason


def test_a_tampered_message_fails_its_signature() -> None:
    w = World()
    message, ds = w.send()
    # A digest list edited to hold a forged disclosure's digest: the forgery "verifies"
    # against the list, but the list is no longer what acme signed.
    forged = make_disclosure("PERSON", "Somebody Else")
    edited = a2a_pb2.Message()
    edited.CopyFrom(message)
    meta = MessageToDict(edited.metadata)[REDACTION_KEY]
    meta["_sd"] = sorted([*meta["_sd"][1:], forged.digest])
    edited.metadata.update({REDACTION_KEY: meta})
    result = check_receipt(edited, [forged.encoded], w.roster)
    assert not result.signature_ok and "bad_signature" in result.signature_reason
    assert result.disclosures[0].ok and not result.ok  # only the signature is wrong
    # The text edited.
    text = a2a_pb2.Message()
    text.CopyFrom(message)
    text.parts[0].text = text.parts[0].text.replace("wrote", "sent money")
    result = check_receipt(text, encoded(ds), w.roster)
    assert not result.ok and "bad_signature" in result.signature_reason
    # Signed by acme's key, claimed by globex; and a stranger's signature.
    for key in (w.globex, generate_key()):
        message, ds = w.send(key=key)
        result = check_receipt(message, encoded(ds), w.roster)
        assert not result.ok and result.signature_reason.startswith("unknown_key")


def test_unsigned_and_unlisted_messages_fail() -> None:
    w = World()
    message, ds = w.send()
    unsigned = text_message(message.parts[0].text)
    unsigned.metadata.update({REDACTION_KEY: MessageToDict(message.metadata)[REDACTION_KEY]})
    result = check_receipt(unsigned, encoded(ds), w.roster)
    assert not result.ok and result.signature_reason.startswith("unsigned")
    assert result.claims is None and result.disclosures[0].ok
    plain, _ = w.send(spans=[])
    del plain.metadata[REDACTION_KEY]  # signature now fails too; the listing is the point
    result = check_receipt(plain, encoded(ds[:1]), w.roster)
    assert not result.ok and result.disclosures[0].reason == "the message lists no redacted spans"
    bad = ParseDict(MessageToDict(message), a2a_pb2.Message())
    bad.metadata.update({REDACTION_KEY: {"_sd_alg": "md5", "_sd": [], "entities": {}}})
    result = check_receipt(bad, encoded(ds[:1]), w.roster)
    assert "redaction metadata is malformed" in result.disclosures[0].reason


def test_a_value_the_peer_received_is_flagged() -> None:
    w = World()
    message, ds = w.send(leak="(ann LEE)")  # a missed span, any case
    result = check_receipt(message, encoded(ds), w.roster)
    assert result.signature_ok and not result.ok
    verdicts = {(d.entity_type, d.ok) for d in result.disclosures}
    assert verdicts == {("PERSON", False), ("EMAIL_ADDRESS", True), ("IBAN_CODE", True)}
    assert "appears in the message the peer received" in result.disclosures[0].reason
    # In message metadata too (but not in the signing and redaction keys).
    message, ds = w.send()
    leaked = a2a_pb2.Message()
    leaked.CopyFrom(message)
    leaked.metadata.update({"note": {"customer": "bob@example.com"}})
    result = check_receipt(leaked, encoded(ds), w.roster)
    assert [d.ok for d in result.disclosures] == [True, False, True, True]


def test_a_malformed_disclosure_is_reported_not_raised() -> None:
    w = World()
    message, ds = w.send()
    result = check_receipt(message, ["!!", ds[1].encoded, "\u00e9"], w.roster)
    assert [d.ok for d in result.disclosures] == [False, True, False]
    assert result.disclosures[0].reason.startswith("malformed:")
    assert result.disclosures[2].digest == "" and result.disclosures[2].entity_type == ""


def test_an_old_message_verifies_under_the_key_valid_when_it_was_issued() -> None:
    w = World()
    issued = 1_600_000_000.0  # years ago: no freshness window applies to an audit
    message, ds = w.send(now=issued)
    assert check_receipt(message, encoded(ds), w.roster).ok
    # acme rotated its key since: the old key is valid until a time after `issued`.
    pub = public_jwk(w.acme)
    new = generate_key()
    until = datetime.fromtimestamp(issued + 3600, UTC).isoformat()
    acme = member("acme", new, extra=[MemberKey(kid=pub["kid"], x=pub["x"], not_after=until)])
    rotated = w.roster.model_copy(update={"members": [acme, w.roster.members[1]]})
    assert check_receipt(message, encoded(ds), rotated).ok
    # A message signed with the old key after it expired does not verify.
    late, late_ds = w.send(now=issued + 7200)
    result = check_receipt(late, encoded(late_ds), rotated)
    assert not result.ok and result.signature_reason.startswith("unknown_key")
    # Nor does one from another federation's roster.
    other = w.roster.model_copy(update={"federation_id": "other"})
    result = check_receipt(message, encoded(ds), other)
    assert not result.ok and result.signature_reason.startswith("wrong_federation")


def test_one_disclosed_span_reveals_nothing_of_the_others() -> None:
    w = World()
    message, ds = w.send()
    email = ds[1]
    result = check_receipt(message, [email.encoded], w.roster)
    assert result.ok and len(result.disclosures) == 1
    # What the auditor holds: the signed message and this one disclosure. The other
    # spans' values appear in neither...
    seen = str(MessageToDict(message)) + email.encoded + repr(result)
    for value, _ in SPANS[::2]:
        assert value not in seen
    # ... and guessing a value does not confirm it: every disclosure has its own salt,
    # so the right value under the salt the auditor knows hashes to no listed digest.
    listed = set(MessageToDict(message.metadata)[REDACTION_KEY]["_sd"])
    assert len({d.salt for d in ds}) == len(ds)
    for value, kind in SPANS:
        if kind != "EMAIL_ADDRESS":
            guess = Disclosure(email.salt, kind, value)
            assert digest_of(guess.encoded) not in listed
    # The digests are sorted: their order says nothing of the spans' order.
    assert list(MessageToDict(message.metadata)[REDACTION_KEY]["_sd"]) == sorted(listed)
