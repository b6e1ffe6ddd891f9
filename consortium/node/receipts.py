"""Checking a redaction receipt: a signed message a node sent to a peer, and disclosures
of spans it withheld (`redaction.receipts`).

`check_receipt` is what an auditor runs (`consortium redact check`). It verifies the
message's signature against the key the roster lists for its sender at the time the
message was issued (`trust.admission.verify_authentic`: no freshness or replay check, the
message may be old), then, for each disclosure: that it is well formed, that its digest
is among the digests the signed message lists, and that its value appears nowhere in what
the peer received (the text and data parts and the metadata, compared case-insensitively).
A disclosure reveals only its own span: the other digests stay opaque.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from a2a.types import a2a_pb2
from google.protobuf.json_format import MessageToDict, SerializeToJsonError

from consortium.federation.roster import Roster
from consortium.redaction.receipts import (
    REDACTION_KEY,
    Disclosure,
    ReceiptError,
    digest_of,
    parse_disclosure,
    read_redaction_metadata,
)
from consortium.trust.admission import verify_authentic
from consortium.trust.claims import CLAIMS_KEY, SIGNATURE_KEY, Claims, read_signed
from consortium.trust.refusals import Rejected

# Metadata the signing and redaction layers write: identifiers, digests, the signature;
# never content the peer could read a value from.
_MACHINE_KEYS = frozenset({CLAIMS_KEY, SIGNATURE_KEY, REDACTION_KEY})


@dataclass(frozen=True)
class DisclosureCheck:
    """The verdict on one disclosure: `entity_type` and `value` are empty when it is
    malformed; `digest` is empty when it is not even ASCII."""

    encoded: str
    digest: str
    entity_type: str
    value: str
    ok: bool
    reason: str

    def __repr__(self) -> str:  # never show the value in logs or tracebacks
        return (
            f"DisclosureCheck(entity_type={self.entity_type!r}, digest={self.digest!r}, "
            f"ok={self.ok!r}, reason={self.reason!r})"
        )


@dataclass(frozen=True)
class ReceiptCheck:
    """The verdict on a receipt: the signature (and the claims, when they are readable)
    and each disclosure. `ok` when the signature verifies and every disclosure does."""

    signature_ok: bool
    signature_reason: str
    claims: Claims | None
    disclosures: tuple[DisclosureCheck, ...]

    @property
    def ok(self) -> bool:
        return self.signature_ok and all(d.ok for d in self.disclosures)


def check_receipt(
    message: a2a_pb2.Message, disclosures: Sequence[str], roster: Roster
) -> ReceiptCheck:
    """Checks `message` (as signed and sent) and each encoded disclosure against it."""
    claims: Claims | None = None
    try:
        claims = verify_authentic(message, roster).claims
        signature_ok, signature_reason = True, "verified"
    except Rejected as e:
        signature_ok, signature_reason = False, str(e)
        try:
            parts = read_signed(message)
            claims = parts.claims if parts else None
        except Rejected:
            claims = None
    digests: frozenset[str] = frozenset()
    listed_error = ""
    try:
        found = read_redaction_metadata(MessageToDict(message.metadata))
        if found is None:
            listed_error = "the message lists no redacted spans"
        else:
            digests = frozenset(found.digests)
    except ReceiptError as e:
        listed_error = f"the message's redaction metadata is malformed: {e}"
    except (SerializeToJsonError, ValueError, TypeError):
        listed_error = "the message's metadata has no JSON form"
    received = _received_text(message)
    return ReceiptCheck(
        signature_ok=signature_ok,
        signature_reason=signature_reason,
        claims=claims,
        disclosures=tuple(_check_one(e, digests, listed_error, received) for e in disclosures),
    )


def _check_one(
    encoded: str, digests: frozenset[str], listed_error: str, received: Sequence[str]
) -> DisclosureCheck:
    try:
        digest = digest_of(encoded)
    except (UnicodeEncodeError, AttributeError):
        digest = ""
    try:
        disclosure = parse_disclosure(encoded)
    except ReceiptError as e:
        return DisclosureCheck(encoded, digest, "", "", False, f"malformed: {e}")
    return DisclosureCheck(
        encoded,
        digest,
        disclosure.entity_type,
        disclosure.value,
        *_verdict(disclosure, digests, listed_error, received),
    )


def _verdict(
    disclosure: Disclosure, digests: frozenset[str], listed_error: str, received: Sequence[str]
) -> tuple[bool, str]:
    if listed_error:
        return False, listed_error
    if disclosure.digest not in digests:
        return False, "its digest is not among the message's signed digests"
    value = disclosure.value.casefold()
    if any(value in text.casefold() for text in received):
        return False, "its value appears in the message the peer received"
    return True, "withheld from the peer"


def _received_text(message: a2a_pb2.Message) -> list[str]:
    """Every string the peer received in which a value could appear: the text, data,
    file names and URLs of the parts (and raw parts as UTF-8), their metadata, and the
    message's metadata but for the signing and redaction keys."""
    try:
        form = MessageToDict(message)
    except (SerializeToJsonError, ValueError, TypeError):  # its signature fails as well
        form = {
            "parts": [{"text": p.text, "url": p.url, "filename": p.filename} for p in message.parts]
        }
    found: list[str] = []
    for part in form.get("parts", []):
        found += [part[k] for k in ("text", "url", "filename") if isinstance(part.get(k), str)]
        found += _strings([part.get("data"), part.get("metadata")])
    meta = form.get("metadata")
    if isinstance(meta, dict):
        found += _strings({k: v for k, v in meta.items() if k not in _MACHINE_KEYS})
    found += [p.raw.decode("utf-8", "replace") for p in message.parts if p.raw]
    return found


def _strings(value: Any) -> list[str]:
    """Every string in a JSON value, object keys included."""
    return list(_walk(value))


def _walk(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _walk(v)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)
