"""The Consortium signed-message extension for A2A messages between organizations: what
a signed message states and what its signature covers.

A signed message carries, in its metadata:
- `consortium.signed`: the claims — what the message is (`kind`: a request, an answer to
  one, or a task event streamed for one), sender org and key id, recipient org,
  federation id, message id, issued-at, nonce, and for an answer or event the digest of
  the request it answers, plus the W3C traceparent;
- `consortium.signature`: a detached JWS (EdDSA) over the RFC 8785 canonical JSON of the
  message's protobuf JSON form without this one field.
So the signature covers the parts, the claims and all other metadata together.

The kind is signed so that a message cannot be turned around: an answer a node signed
for a peer is refused when it comes back to that node as a request within the skew
window, and an answer from a member other than the one that was asked is refused.

Signing is `trust.signing`; the checks a receiver makes are `trust.admission`.
"""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass
from typing import Any, Literal

from a2a.types import a2a_pb2
from google.protobuf.json_format import MessageToDict, SerializeToJsonError

from consortium.trust.jws import canonical
from consortium.trust.refusals import Rejected

EXTENSION_URI = "https://consortium.dev/a2a/ext/signed-message/v1"
CLAIMS_KEY = "consortium.signed"
SIGNATURE_KEY = "consortium.signature"
MESSAGE_TYPE = "consortium-message"  # the JWS `typ` of a message signature

Kind = Literal["request", "answer", "event"]
KINDS: tuple[Kind, ...] = ("request", "answer", "event")
TaskEvent = a2a_pb2.TaskStatusUpdateEvent | a2a_pb2.TaskArtifactUpdateEvent
Signable = a2a_pb2.Message | a2a_pb2.TaskStatusUpdateEvent | a2a_pb2.TaskArtifactUpdateEvent
MAX_CLAIM_CHARS = 256


def text_claim(d: dict[str, Any], name: str, *, optional: bool = False) -> str:
    """The claim `name`: a string of 1 to MAX_CLAIM_CHARS characters ('' when optional and
    absent); raises Rejected("malformed") otherwise. Never coerced: `str()` would accept
    any JSON value."""
    if optional and name not in d:
        return ""
    value = d.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_CLAIM_CHARS:
        raise Rejected(
            "malformed", f"claim {name} is not a string of 1 to {MAX_CLAIM_CHARS} characters"
        )
    return value


def instant_claim(d: dict[str, Any], name: str) -> float:
    """The claim `name`: a finite JSON number (seconds since the epoch); NaN, infinities,
    strings and booleans are malformed."""
    value = d.get(name)
    try:
        ok = (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )
    except OverflowError:  # an integer too large for a float
        ok = False
    if not ok:
        raise Rejected("malformed", f"claim {name} is not a finite number")
    return float(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Claims:
    sender: str
    kid: str
    recipient: str
    federation: str
    message_id: str
    issued_at: float
    nonce: str
    kind: Kind
    request_digest: str = ""
    traceparent: str = ""

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": self.kind,
            "sender": self.sender,
            "kid": self.kid,
            "recipient": self.recipient,
            "federation": self.federation,
            "messageId": self.message_id,
            "issuedAt": self.issued_at,
            "nonce": self.nonce,
        }
        if self.request_digest:
            d["requestDigest"] = self.request_digest
        if self.traceparent:
            d["traceparent"] = self.traceparent
        return d

    @staticmethod
    def from_dict(d: Any) -> Claims:
        """The claims of a signed message; raises Rejected("malformed") for anything but
        well-typed, bounded values, and for claims that contradict themselves (a request
        bound to a request digest, an answer or event bound to none)."""
        if not isinstance(d, dict):
            raise Rejected("malformed", "claims are not an object")
        kind = d.get("kind")
        if kind not in KINDS:
            raise Rejected("malformed", "claim kind is not one of request, answer, event")
        claims = Claims(
            sender=text_claim(d, "sender"),
            kid=text_claim(d, "kid"),
            recipient=text_claim(d, "recipient"),
            federation=text_claim(d, "federation"),
            message_id=text_claim(d, "messageId"),
            issued_at=instant_claim(d, "issuedAt"),
            nonce=text_claim(d, "nonce"),
            kind=kind,
            request_digest=text_claim(d, "requestDigest", optional=True),
            traceparent=text_claim(d, "traceparent", optional=True),
        )
        if (kind == "request") != (not claims.request_digest):
            raise Rejected(
                "malformed",
                "a request carries no requestDigest"
                if kind == "request"
                else f"an {kind} must carry the requestDigest it answers",
            )
        return claims


def signed_form(message: Signable) -> dict[str, Any]:
    """What the signature covers: the message's JSON form without the signature field."""
    return _split_signature(MessageToDict(message))[0]


def _split_signature(data: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The JSON form without its signature field, and that field's value (None if absent)."""
    meta = data.get("metadata")
    token = None
    if isinstance(meta, dict):
        token = meta.pop(SIGNATURE_KEY, None)
        if not meta:
            data.pop("metadata")
    return data, token


def payload_digest(payload: bytes) -> str:
    """SHA-256 (base64url, unpadded) of canonical bytes."""
    return base64.urlsafe_b64encode(hashlib.sha256(payload).digest()).rstrip(b"=").decode()


def digest(message: Signable) -> str:
    """SHA-256 (base64url) of the message's signed form: what a response binds to."""
    return payload_digest(canonical(signed_form(message)))


@dataclass(frozen=True)
class SignedParts:
    """A signed message taken apart, not yet verified: the signed JSON form, the claims it
    states and the detached signature."""

    form: dict[str, Any]
    claims: Claims
    token: Any


def read_signed(message: Signable) -> SignedParts | None:
    """The message's signed parts, or None when it carries no Consortium signature.
    Raises Rejected("malformed") when the claims cannot be read."""
    if SIGNATURE_KEY not in message.metadata or CLAIMS_KEY not in message.metadata:
        return None
    try:
        data = MessageToDict(message)
    except (SerializeToJsonError, ValueError, TypeError) as e:  # e.g. NaN in a Struct
        raise Rejected("malformed", f"the message has no JSON form: {e}") from None
    form, token = _split_signature(data)
    return SignedParts(form, Claims.from_dict(form["metadata"].get(CLAIMS_KEY)), token)
