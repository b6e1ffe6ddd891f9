"""The Consortium signed-message extension for A2A messages between organizations.

A signed message carries, in its metadata:
- `consortium.signed`: the claims — sender org and key id, recipient org, federation id,
  message id, issued-at, nonce, and for a response the digest of the request it answers,
  plus the W3C traceparent;
- `consortium.signature`: a detached JWS (EdDSA) over the RFC 8785 canonical JSON of the
  message's protobuf JSON form without this one field.
So the signature covers the parts, the claims and all other metadata together.

`MessageVerifier.verify` runs every check a receiver must make before anything acts on a
message, and names the first that fails (`Rejected.reason`), mapped to UNAUTHENTICATED
(we cannot tell who sent it, or it is stale or replayed) or PERMISSION_DENIED (we know
who sent it, and they may not).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeVar

from a2a.types import a2a_pb2
from google.protobuf.json_format import MessageToDict, SerializeToJsonError
from google.protobuf.message import Message as ProtoMessage
from jwcrypto import jwk

from consortium.errors import ConsortiumError
from consortium.trust.jws import (
    SignatureError,
    canonical,
    protected_header,
    sign_payload,
    verify_payload,
)
from consortium.trust.keys import key_id
from consortium.trust.replay import AnswerReplayCache, ReplayCache

EXTENSION_URI = "https://consortium.dev/a2a/ext/signed-message/v1"
CLAIMS_KEY = "consortium.signed"
SIGNATURE_KEY = "consortium.signature"

Code = Literal["UNAUTHENTICATED", "PERMISSION_DENIED"]
TaskEvent = a2a_pb2.TaskStatusUpdateEvent | a2a_pb2.TaskArtifactUpdateEvent
Signable = a2a_pb2.Message | a2a_pb2.TaskStatusUpdateEvent | a2a_pb2.TaskArtifactUpdateEvent
REASON_CODES: dict[str, Code] = {
    "unsigned": "UNAUTHENTICATED",
    "malformed": "UNAUTHENTICATED",
    "bad_signature": "UNAUTHENTICATED",
    "unknown_key": "UNAUTHENTICATED",
    "stale": "UNAUTHENTICATED",
    "future": "UNAUTHENTICATED",
    "replay": "UNAUTHENTICATED",
    "non_member": "PERMISSION_DENIED",
    "suspended": "PERMISSION_DENIED",
    "revoked": "PERMISSION_DENIED",
    "wrong_recipient": "PERMISSION_DENIED",
    "wrong_federation": "PERMISSION_DENIED",
    "wrong_request": "PERMISSION_DENIED",
}


class MemberView(Protocol):
    """What verification needs to know of a member (federation.roster.Member has it)."""

    @property
    def status(self) -> str: ...

    def key(self, kid: str, when: datetime | None = None) -> jwk.JWK | None: ...


class MembershipView(Protocol):
    """What verification needs of the roster (federation.roster.Roster has it)."""

    @property
    def federation_id(self) -> str: ...

    def member(self, org_id: str) -> MemberView | None: ...


class Rejected(ConsortiumError):
    """A message failed verification; `reason` is one of REASON_CODES."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.code: Code = REASON_CODES[reason]
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class Claims:
    sender: str
    kid: str
    recipient: str
    federation: str
    message_id: str
    issued_at: float
    nonce: str
    request_digest: str = ""
    traceparent: str = ""

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
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
        if not isinstance(d, dict):
            raise Rejected("malformed", "claims are not an object")
        try:
            return Claims(
                sender=str(d["sender"]),
                kid=str(d["kid"]),
                recipient=str(d["recipient"]),
                federation=str(d["federation"]),
                message_id=str(d["messageId"]),
                issued_at=float(d["issuedAt"]),
                nonce=str(d["nonce"]),
                request_digest=str(d.get("requestDigest", "")),
                traceparent=str(d.get("traceparent", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise Rejected("malformed", f"claims lack or mistype {e}") from None


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


def _digest_of(payload: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(payload).digest()).rstrip(b"=").decode()


def digest(message: Signable) -> str:
    """SHA-256 (base64url) of the message's signed form: what a response binds to."""
    return _digest_of(canonical(signed_form(message)))


@dataclass(frozen=True)
class Verified:
    """A message that passed every check: its claims and its digest (what an answer to it
    must bind to)."""

    claims: Claims
    digest: str


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


def _own_id(obj: Signable) -> str:
    """The object's own message id; '' for task events, which have none."""
    return str(obj.message_id) if isinstance(obj, a2a_pb2.Message) else ""


def sign_event(
    event: TaskEvent,
    *,
    key: jwk.JWK,
    sender: str,
    recipient: str,
    federation: str,
    request_digest: str = "",
    traceparent: str = "",
    now: float | None = None,
) -> TaskEvent:
    """A copy of a task status or artifact update with claims and signature. Events have
    no message id of their own; the claims carry a fresh one (for the replay check)."""
    signed: TaskEvent = type(event).FromString(event.SerializeToString())
    claims = _claims(
        f"event-{uuid.uuid4()}",
        key,
        sender,
        recipient,
        federation,
        request_digest,
        traceparent,
        now,
    )
    return _sign(signed, claims, key)[0]


def sign_message(
    message: a2a_pb2.Message,
    *,
    key: jwk.JWK,
    sender: str,
    recipient: str,
    federation: str,
    request_digest: str = "",
    traceparent: str = "",
    now: float | None = None,
) -> a2a_pb2.Message:
    """A copy of `message` with claims and signature; the extension is declared on it."""
    return sign_message_and_digest(
        message,
        key=key,
        sender=sender,
        recipient=recipient,
        federation=federation,
        request_digest=request_digest,
        traceparent=traceparent,
        now=now,
    )[0]


def sign_message_and_digest(
    message: a2a_pb2.Message,
    *,
    key: jwk.JWK,
    sender: str,
    recipient: str,
    federation: str,
    request_digest: str = "",
    traceparent: str = "",
    now: float | None = None,
) -> tuple[a2a_pb2.Message, str]:
    """`sign_message`, and the signed message's digest (what the answers to a request must
    bind to), from the canonical bytes the signature already covers."""
    signed = a2a_pb2.Message()
    signed.CopyFrom(message)
    if not signed.message_id:
        raise ValueError("a message to sign needs a message id")
    if EXTENSION_URI not in signed.extensions:
        signed.extensions.append(EXTENSION_URI)
    claims = _claims(
        signed.message_id, key, sender, recipient, federation, request_digest, traceparent, now
    )
    return _sign(signed, claims, key)


S = TypeVar("S", bound=ProtoMessage)


def _claims(
    message_id: str,
    key: jwk.JWK,
    sender: str,
    recipient: str,
    federation: str,
    request_digest: str,
    traceparent: str,
    now: float | None,
) -> Claims:
    return Claims(
        sender=sender,
        kid=key_id(key),
        recipient=recipient,
        federation=federation,
        message_id=message_id,
        issued_at=round(time.time() if now is None else now, 3),
        nonce=secrets.token_urlsafe(12),
        request_digest=request_digest,
        traceparent=traceparent,
    )


def _sign(signed: S, claims: Claims, key: jwk.JWK) -> tuple[S, str]:
    target: Any = signed  # every Signable has a `metadata` Struct
    if SIGNATURE_KEY in target.metadata:
        del target.metadata[SIGNATURE_KEY]
    target.metadata.update({CLAIMS_KEY: claims.as_dict()})
    payload = canonical(MessageToDict(target))
    token = sign_payload(payload, key, {"typ": "consortium-message"})
    target.metadata.update({SIGNATURE_KEY: token})
    return signed, _digest_of(payload)


class MessageVerifier:
    """Checks incoming messages for one organization against the current roster."""

    def __init__(
        self,
        *,
        org_id: str,
        roster: Callable[[], MembershipView],
        replay: ReplayCache,
        skew_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        own_key: jwk.JWK | None = None,
    ) -> None:
        self._org = org_id
        # Requests the organization signs to its own node are checked against its own key,
        # whatever its roster status: a suspended member can still use its own node.
        self._own_key = own_key
        self._roster = roster
        self._replay = replay
        self._answers = AnswerReplayCache(clock)
        self._skew = skew_s
        self._clock = clock

    def verify(self, message: Signable, *, request_digest: str | None = None) -> Verified:
        """All checks, in order; raises Rejected with the first failing reason.

        `request_digest`: for a response, the digest of the request this node sent.
        """
        parts = read_signed(message)
        if parts is None:
            raise Rejected("unsigned", "the message carries no Consortium signature")
        return self.check(message, parts, request_digest=request_digest)

    def check(
        self, message: Signable, parts: SignedParts, *, request_digest: str | None = None
    ) -> Verified:
        """`verify` for a message whose parts the caller has already read."""
        claims, token = parts.claims, parts.token
        if not isinstance(token, str):
            raise Rejected("malformed", "the signature is not a string")
        roster = self._roster()
        own = self._own_key is not None and claims.sender == self._org
        member = roster.member(claims.sender)
        if member is None and not own:
            raise Rejected(
                "non_member", f"{claims.sender} is not a member of {roster.federation_id}"
            )
        try:
            header_kid = protected_header(token).get("kid")
        except SignatureError as e:
            raise Rejected("malformed", str(e)) from None
        if header_kid != claims.kid:
            raise Rejected("malformed", "the JWS key id differs from the claimed key id")
        now = self._clock()
        key: jwk.JWK | None
        if own:
            assert self._own_key is not None
            key = self._own_key if key_id(self._own_key) == claims.kid else None
        else:
            assert member is not None
            try:
                key = member.key(claims.kid, datetime.fromtimestamp(now, UTC))
            except ConsortiumError as e:
                raise Rejected("unknown_key", str(e)) from None
        if key is None:
            raise Rejected("unknown_key", f"{claims.sender} has no valid key {claims.kid}")
        try:
            payload = canonical(parts.form)
        except SignatureError as e:
            raise Rejected("malformed", str(e)) from None
        try:
            verify_payload(token, payload, lambda kid: key if kid == claims.kid else None)
        except SignatureError as e:
            raise Rejected("bad_signature", str(e)) from None
        # From here on the claims are authentic.
        status = "active" if own or member is None else member.status
        if status in ("suspended", "revoked"):
            raise Rejected(status, f"{claims.sender} is {status}")
        if claims.federation != roster.federation_id:
            raise Rejected("wrong_federation", f"message is for federation {claims.federation}")
        if claims.recipient != self._org:
            raise Rejected("wrong_recipient", f"message is for {claims.recipient}, not {self._org}")
        if _own_id(message) not in ("", claims.message_id):
            raise Rejected("malformed", "claimed message id differs from the message's id")
        if claims.issued_at < now - self._skew:
            raise Rejected(
                "stale", f"issued {now - claims.issued_at:.0f} s ago (skew {self._skew:.0f} s)"
            )
        if claims.issued_at > now + self._skew:
            raise Rejected("future", f"issued {claims.issued_at - now:.0f} s in the future")
        if request_digest is not None and claims.request_digest != request_digest:
            raise Rejected("wrong_request", "the response is bound to another request")
        # Requests are remembered on disk, across restarts; answers only need to be
        # remembered while their request's call is open (see AnswerReplayCache).
        seen = self._replay if request_digest is None else self._answers
        if not seen.first_sighting(claims.sender, claims.message_id, claims.issued_at + self._skew):
            raise Rejected(
                "replay", f"message {claims.message_id} from {claims.sender} was seen before"
            )
        return Verified(claims, _digest_of(payload))
