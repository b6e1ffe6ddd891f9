"""The Consortium signed-message extension for A2A messages between organizations.

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

`MessageVerifier.verify` runs every check a receiver must make before anything acts on a
message, and names the first that fails (`Rejected.reason`), mapped to UNAUTHENTICATED
(we cannot tell who sent it, or it is stale, replayed or turned around) or
PERMISSION_DENIED (we know who sent it, and they may not). Outside the node, "not a
member", "unknown key" and "bad signature" are one refusal (`Rejected.external_reason`),
so a refusal does not tell a stranger who belongs to the federation.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import math
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from a2a.types import a2a_pb2
from google.protobuf.json_format import MessageToDict, SerializeToJsonError
from google.protobuf.message import Message as ProtoMessage
from jwcrypto import jwk
from nacl.signing import SigningKey

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

if TYPE_CHECKING:
    from consortium.trust.call_proof import VerifiedCall

EXTENSION_URI = "https://consortium.dev/a2a/ext/signed-message/v1"
CLAIMS_KEY = "consortium.signed"
SIGNATURE_KEY = "consortium.signature"
MESSAGE_TYPE = "consortium-message"  # the JWS `typ` of a message signature

Code = Literal["UNAUTHENTICATED", "PERMISSION_DENIED"]
Kind = Literal["request", "answer", "event"]
KINDS: tuple[Kind, ...] = ("request", "answer", "event")
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
    # An authentic message used as something it was not signed as (an answer sent back
    # as a request): a kind of replay.
    "wrong_direction": "UNAUTHENTICATED",
    "non_member": "PERMISSION_DENIED",
    "suspended": "PERMISSION_DENIED",
    "revoked": "PERMISSION_DENIED",
    "wrong_recipient": "PERMISSION_DENIED",
    "wrong_federation": "PERMISSION_DENIED",
    "wrong_request": "PERMISSION_DENIED",
    "wrong_sender": "PERMISSION_DENIED",
    "wrong_call": "PERMISSION_DENIED",
}
# Told apart inside the node (counts, logs), one refusal outside: otherwise whether a
# refusal says "non_member" or "bad_signature" tells a stranger who is a member.
SIGNATURE_NOT_ACCEPTED = frozenset({"non_member", "unknown_key", "bad_signature"})
MAX_CLAIM_CHARS = 256


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
    """A message failed verification; `reason` is one of REASON_CODES.

    `reason`, `code` and the text are precise, for the node's counts and logs; what a
    refusal may tell the sender is `external_reason`, `external_code` and
    `external_message`."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.code: Code = REASON_CODES[reason]
        super().__init__(f"{reason}: {detail}")

    @property
    def external_reason(self) -> str:
        return "bad_signature" if self.reason in SIGNATURE_NOT_ACCEPTED else self.reason

    @property
    def external_code(self) -> Code:
        return REASON_CODES[self.external_reason]

    @property
    def external_message(self) -> str:
        if self.reason in SIGNATURE_NOT_ACCEPTED:
            return "signature not accepted"
        return str(self)


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


@dataclass(frozen=True)
class SigningIdentity:
    """Who signs: an organization's private key, its org id and its federation's id."""

    key: jwk.JWK
    sender: str
    federation: str


def sign_request(
    message: a2a_pb2.Message,
    signer: SigningIdentity,
    *,
    recipient: str,
    traceparent: str = "",
    now: float | None = None,
) -> tuple[a2a_pb2.Message, str]:
    """A signed copy of a request (role user) for `recipient`, and its digest: what every
    answer and event for it must bind to. The extension is declared on it."""
    if message.role != a2a_pb2.ROLE_USER:
        raise ValueError("a request to sign must have role ROLE_USER")
    return _sign_message(message, signer, "request", recipient, "", traceparent, now)


def sign_answer(
    message: a2a_pb2.Message,
    signer: SigningIdentity,
    *,
    recipient: str,
    request_digest: str,
    traceparent: str = "",
    now: float | None = None,
) -> a2a_pb2.Message:
    """A signed copy of an answer (role agent) to the request with `request_digest`."""
    if not request_digest:
        raise ValueError("an answer must be bound to its request's digest")
    if message.role != a2a_pb2.ROLE_AGENT:
        raise ValueError("an answer to sign must have role ROLE_AGENT")
    return _sign_message(message, signer, "answer", recipient, request_digest, traceparent, now)[0]


def sign_task_event(
    event: TaskEvent,
    signer: SigningIdentity,
    *,
    recipient: str,
    request_digest: str,
    traceparent: str = "",
    now: float | None = None,
) -> TaskEvent:
    """A signed copy of a task status or artifact update streamed for the request with
    `request_digest`. Events have no message id of their own; the claims carry a fresh one
    (for the replay check)."""
    if not request_digest:
        raise ValueError("a task event must be bound to its request's digest")
    signed: TaskEvent = type(event).FromString(event.SerializeToString())
    claims = _claims(
        "event", f"event-{uuid.uuid4()}", signer, recipient, request_digest, traceparent, now
    )
    return _sign(signed, claims, signer.key)[0]


S = TypeVar("S", bound=ProtoMessage)


def _sign_message(
    message: a2a_pb2.Message,
    signer: SigningIdentity,
    kind: Kind,
    recipient: str,
    request_digest: str,
    traceparent: str,
    now: float | None,
) -> tuple[a2a_pb2.Message, str]:
    signed = a2a_pb2.Message()
    signed.CopyFrom(message)
    if not signed.message_id:
        raise ValueError("a message to sign needs a message id")
    if EXTENSION_URI not in signed.extensions:
        signed.extensions.append(EXTENSION_URI)
    claims = _claims(kind, signed.message_id, signer, recipient, request_digest, traceparent, now)
    return _sign(signed, claims, signer.key)


def _claims(
    kind: Kind,
    message_id: str,
    signer: SigningIdentity,
    recipient: str,
    request_digest: str,
    traceparent: str,
    now: float | None,
) -> Claims:
    return Claims(
        sender=signer.sender,
        kid=key_id(signer.key),
        recipient=recipient,
        federation=signer.federation,
        message_id=message_id,
        issued_at=round(time.time() if now is None else now, 3),
        nonce=secrets.token_urlsafe(12),
        kind=kind,
        request_digest=request_digest,
        traceparent=traceparent,
    )


def _sign(signed: S, claims: Claims, key: jwk.JWK) -> tuple[S, str]:
    target: Any = signed  # every Signable has a `metadata` Struct
    if SIGNATURE_KEY in target.metadata:
        del target.metadata[SIGNATURE_KEY]
    target.metadata.update({CLAIMS_KEY: claims.as_dict()})
    payload = canonical(MessageToDict(target))
    token = sign_payload(payload, key, {"typ": MESSAGE_TYPE})
    target.metadata.update({SIGNATURE_KEY: token})
    return signed, _digest_of(payload)


class Addressed(Protocol):
    """The claims every signed object states (Claims and call proofs' claims have them)."""

    @property
    def sender(self) -> str: ...

    @property
    def kid(self) -> str: ...

    @property
    def recipient(self) -> str: ...

    @property
    def federation(self) -> str: ...

    @property
    def issued_at(self) -> float: ...


@functools.cache
def _decoy_key() -> jwk.JWK:
    """A public key nobody signs with: refusing a stranger costs one signature check too,
    so the time a refusal takes does not tell members from strangers either."""
    x = bytes(SigningKey(bytes(32)).verify_key)
    return jwk.JWK(kty="OKP", crv="Ed25519", x=base64.urlsafe_b64encode(x).rstrip(b"=").decode())


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

    def verify(
        self,
        message: Signable,
        *,
        request_digest: str | None = None,
        expected_sender: str | None = None,
    ) -> Verified:
        """All checks, in order; raises Rejected with the first failing reason.

        For a request, leave `request_digest` None. For an answer or task event, pass the
        digest of the request this node sent and, as `expected_sender`, the organization
        it asked: an answer signed by any other member is refused (wrong_sender).
        """
        parts = read_signed(message)
        if parts is None:
            raise Rejected("unsigned", "the message carries no Consortium signature")
        return self.check(
            message, parts, request_digest=request_digest, expected_sender=expected_sender
        )

    def check(
        self,
        message: Signable,
        parts: SignedParts,
        *,
        request_digest: str | None = None,
        expected_sender: str | None = None,
    ) -> Verified:
        """`verify` for a message whose parts the caller has already read."""
        claims, token = parts.claims, parts.token
        # Everything that can be judged without knowing the sender comes first, so that
        # what is refused as malformed does not depend on who is a member.
        if not isinstance(token, str):
            raise Rejected("malformed", "the signature is not a string")
        try:
            header = protected_header(token)
            payload = canonical(parts.form)
        except SignatureError as e:
            raise Rejected("malformed", str(e)) from None
        if header.get("kid") != claims.kid:
            raise Rejected("malformed", "the JWS key id differs from the claimed key id")
        if header.get("typ") != MESSAGE_TYPE:
            raise Rejected("malformed", f"the JWS type is not {MESSAGE_TYPE}")

        def check_signature(key: jwk.JWK) -> None:
            verify_payload(token, payload, lambda kid: key if kid == claims.kid else None)

        self.admit(claims, check_signature, expected_sender=expected_sender)
        answering = request_digest is not None
        self._check_direction(message, claims.kind, answering)
        if _own_id(message) not in ("", claims.message_id):
            raise Rejected("malformed", "claimed message id differs from the message's id")
        if answering and claims.request_digest != request_digest:
            raise Rejected("wrong_request", "the response is bound to another request")
        # Requests are remembered on disk, across restarts; answers only need to be
        # remembered while their request's call is open (see AnswerReplayCache).
        self.remember(claims.sender, claims.message_id, claims.issued_at, durable=not answering)
        return Verified(claims, _digest_of(payload))

    @staticmethod
    def _check_direction(message: Signable, kind: Kind, answering: bool) -> None:
        """A request is a user message signed as a request; an answer, an agent message
        signed as an answer; a task event, an event signed as one, and never a request."""
        if isinstance(message, a2a_pb2.Message):
            expected: Kind = "answer" if answering else "request"
            role = a2a_pb2.ROLE_AGENT if answering else a2a_pb2.ROLE_USER
            if kind != expected:
                raise Rejected("wrong_direction", f"a {kind} was used as a {expected}")
            if message.role != role:
                raise Rejected(
                    "wrong_direction", f"a {kind} must have role {a2a_pb2.Role.Name(role)}"
                )
        elif not answering or kind != "event":
            used_as = "an event" if answering else "a request"
            raise Rejected(
                "wrong_direction", f"a task event signed as {kind} was used as {used_as}"
            )

    def verify_call(self, token: object, method: str, request: ProtoMessage) -> VerifiedCall:
        """Checks a signed call proof (trust.call_proof) for calling `method` with
        `request` on this node; raises Rejected like `verify`, or with `wrong_call` when the
        proof was made for another method or other parameters. `token` is the
        PROOF_HEADER value (None when absent: unsigned)."""
        from consortium.trust.call_proof import verify_call  # imports this module

        return verify_call(self, token, method, request)

    def admit(
        self,
        claims: Addressed,
        check_signature: Callable[[jwk.JWK], object],
        *,
        expected_sender: str | None = None,
    ) -> None:
        """The checks every signed object shares, in order: the sender's key (roster, or
        this organization's own key), the signature (`check_signature(key)` raises
        SignatureError when it does not verify), the expected sender, the sender's status,
        federation, recipient and freshness. Raises Rejected."""
        roster = self._roster()
        own = self._own_key is not None and claims.sender == self._org
        member = None if own else roster.member(claims.sender)
        now = self._clock()
        key: jwk.JWK | None = None
        refusal: Rejected | None = None
        if own:
            assert self._own_key is not None
            if key_id(self._own_key) == claims.kid:
                key = self._own_key
        elif member is None:
            refusal = Rejected(
                "non_member", f"{claims.sender} is not a member of {roster.federation_id}"
            )
        else:
            try:
                key = member.key(claims.kid, datetime.fromtimestamp(now, UTC))
            except ConsortiumError as e:
                refusal = Rejected("unknown_key", str(e))
        if key is None:
            with contextlib.suppress(SignatureError):
                check_signature(_decoy_key())
            raise refusal or Rejected(
                "unknown_key", f"{claims.sender} has no valid key {claims.kid}"
            )
        try:
            check_signature(key)
        except SignatureError as e:
            raise Rejected("bad_signature", str(e)) from None
        # From here on the claims are authentic.
        if expected_sender is not None and claims.sender != expected_sender:
            raise Rejected(
                "wrong_sender", f"signed by {claims.sender}, but {expected_sender} was asked"
            )
        status = "active" if member is None else member.status
        if status in ("suspended", "revoked"):
            raise Rejected(status, f"{claims.sender} is {status}")
        if claims.federation != roster.federation_id:
            raise Rejected("wrong_federation", f"message is for federation {claims.federation}")
        if claims.recipient != self._org:
            raise Rejected("wrong_recipient", f"message is for {claims.recipient}, not {self._org}")
        if claims.issued_at < now - self._skew:
            raise Rejected(
                "stale", f"issued {now - claims.issued_at:.0f} s ago (skew {self._skew:.0f} s)"
            )
        if claims.issued_at > now + self._skew:
            raise Rejected("future", f"issued {claims.issued_at - now:.0f} s in the future")

    def remember(self, sender: str, key: str, issued_at: float, *, durable: bool = True) -> None:
        """The replay check: records (sender, key) until it could no longer pass the
        freshness check; raises Rejected("replay") if it was seen before. `durable`: in
        the SQLite cache (requests, calls), else in memory (answers)."""
        seen = self._replay if durable else self._answers
        if not seen.first_sighting(sender, key, issued_at + self._skew):
            raise Rejected("replay", f"message {key} from {sender} was seen before")
