"""Admission: every check a receiver makes before anything acts on a signed message or
call proof, in order, naming the first that fails.

`MessageVerifier.verify` reads a message's claims and signature (`trust.claims`) and
checks, in this order: what can be judged without knowing the sender (the signature's
form, its key id and type), the sender's key in the roster (or this organization's own
key), the signature, the expected sender (for an answer: the member that was asked), the
sender's status, federation, recipient, freshness, the message's direction (a request is
never an answer turned around), its binding to our request, and replay.
`verify_call` makes the same checks of a call proof (`trust.call_proof`) plus the method
and parameters it was made for. A refusal is `Rejected` (`trust.refusals`).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from a2a.types import a2a_pb2
from google.protobuf.message import Message as ProtoMessage
from jwcrypto import jwk
from nacl.signing import SigningKey

from consortium.errors import ConsortiumError
from consortium.trust.audit import AuditLog, Hop, HopKind, NoOpAuditLog, log_origin
from consortium.trust.audit.inclusion import RECEIPT_KEY, check_receipt
from consortium.trust.call_proof import VerifiedCall, params_digest, read_call_claims
from consortium.trust.claims import (
    CLAIMS_KEY,
    MESSAGE_TYPE,
    SIGNATURE_KEY,
    Claims,
    Kind,
    Signable,
    SignedParts,
    payload_digest,
    read_signed,
)
from consortium.trust.jws import (
    SignatureError,
    canonical,
    protected_header,
    verify_compact,
    verify_key_of,
    verify_payload,
)
from consortium.trust.keys import key_id
from consortium.trust.refusals import Rejected
from consortium.trust.replay import AnswerReplayCache, ReplayCache


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


@dataclass(frozen=True)
class Verified:
    """A message that passed every check: its claims and its digest (what an answer to it
    must bind to)."""

    claims: Claims
    digest: str


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


def _own_id(obj: Signable) -> str:
    """The object's own message id; '' for task events, which have none."""
    return str(obj.message_id) if isinstance(obj, a2a_pb2.Message) else ""


@functools.cache
def _decoy_key() -> jwk.JWK:
    """A public key nobody signs with: refusing a stranger costs one signature check too,
    so the time a refusal takes does not tell members from strangers either."""
    x = bytes(SigningKey(bytes(32)).verify_key)
    return jwk.JWK(kty="OKP", crv="Ed25519", x=base64.urlsafe_b64encode(x).rstrip(b"=").decode())


def token_digest(token: str) -> str:
    """The digest an audit entry keeps of a call proof: SHA-256 of the compact JWS."""
    return payload_digest(token.encode())


def hop_of(kind: HopKind, signed: Signable, digest: str) -> Hop:
    """The audit hop of a message this organization signed (its claims are as signed)."""
    claims: Any = signed.metadata[CLAIMS_KEY]  # a Struct, as signed
    return Hop(
        kind=kind,
        peer=str(claims["recipient"]),
        message_id=str(claims["messageId"]),
        kid=str(claims["kid"]),
        digest=digest,
        jws=str(signed.metadata[SIGNATURE_KEY]),
        request_digest=str(claims["requestDigest"]) if "requestDigest" in claims else "",
        task_id=str(signed.task_id),
    )


def signature_check(parts: SignedParts) -> tuple[bytes, Callable[[jwk.JWK], None]]:
    """What can be judged of a signed message without knowing its sender: the signature is
    a string, a detached JWS of type MESSAGE_TYPE made with the claimed key id. Returns
    the canonical bytes the signature covers and `check_signature(key)`, which raises
    SignatureError unless the signature verifies under `key`. Raises Rejected("malformed").
    """
    claims, token = parts.claims, parts.token
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

    return payload, check_signature


def verify_authentic(message: Signable, roster: MembershipView) -> Verified:
    """An auditor's check of a signed message, however old: its form, the sender's key
    that the roster lists as valid when the message was issued, the signature, the
    federation and the message's own id. Unlike `MessageVerifier.verify` it judges neither
    freshness, replay, recipient, direction nor the sender's current status: it says who
    signed exactly this message, not whether a node should act on it now. Raises Rejected.
    """
    parts = read_signed(message)
    if parts is None:
        raise Rejected("unsigned", "the message carries no Consortium signature")
    claims = parts.claims
    payload, check_signature = signature_check(parts)
    member = roster.member(claims.sender)
    if member is None:
        raise Rejected("non_member", f"{claims.sender} is not a member of {roster.federation_id}")
    try:
        key = member.key(claims.kid, datetime.fromtimestamp(claims.issued_at, UTC))
    except (ConsortiumError, OverflowError, OSError, ValueError) as e:
        raise Rejected("unknown_key", str(e)) from None
    if key is None:
        raise Rejected(
            "unknown_key", f"{claims.sender} had no valid key {claims.kid} when it was issued"
        )
    try:
        check_signature(key)
    except SignatureError as e:
        raise Rejected("bad_signature", str(e)) from None
    if claims.federation != roster.federation_id:
        raise Rejected("wrong_federation", f"message is for federation {claims.federation}")
    if _own_id(message) not in ("", claims.message_id):
        raise Rejected("malformed", "claimed message id differs from the message's id")
    return Verified(claims, payload_digest(payload))


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
        audit: AuditLog | None = None,
    ) -> None:
        self._org = org_id
        # Told of every message and call proof from another organization that passes or
        # is refused, before the caller can act on it.
        self.audit: AuditLog = audit or NoOpAuditLog()
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
        try:
            parts = read_signed(message)
        except Rejected as e:
            raise self.refused(message, e) from None
        if parts is None:
            unsigned = Rejected("unsigned", "the message carries no Consortium signature")
            raise self.refused(message, unsigned, sender=expected_sender or "")
        return self.check(
            message, parts, request_digest=request_digest, expected_sender=expected_sender
        )

    def refused(self, message: Signable, rejection: Rejected, *, sender: str = "") -> Rejected:
        """Records a refusal of a message whose claims could not be read (`sender`: who
        it is from, when known); returns `rejection` to raise."""
        self.audit.refused(
            sender=sender, message_id=_own_id(message), reason=rejection.reason, what="message"
        )
        return rejection

    def check(
        self,
        message: Signable,
        parts: SignedParts,
        *,
        request_digest: str | None = None,
        expected_sender: str | None = None,
    ) -> Verified:
        """`verify` for a message whose parts the caller has already read."""
        claims = parts.claims
        try:
            verified = self._check(
                message, parts, request_digest=request_digest, expected_sender=expected_sender
            )
        except Rejected as e:
            if claims.sender != self._org:
                self.audit.refused(
                    sender=claims.sender,
                    message_id=claims.message_id,
                    reason=e.reason,
                    what="message",
                )
            raise
        if claims.sender != self._org:  # the organization's own clients are no hop
            receipt = parts.form.get("metadata", {}).get(RECEIPT_KEY)
            inclusion = ""
            if receipt is not None and request_digest is not None:
                inclusion = self._inclusion(claims, receipt, request_digest)
            self.audit.received(
                Hop(
                    kind=claims.kind,
                    peer=claims.sender,
                    message_id=claims.message_id,
                    kid=claims.kid,
                    digest=verified.digest,
                    jws=str(parts.token),
                    request_digest=claims.request_digest,
                    task_id=str(message.task_id),
                    inclusion=inclusion,
                    receipt=receipt if inclusion else None,
                )
            )
        return verified

    def _inclusion(self, claims: Claims, receipt: object, request_digest: str) -> str:
        """What an answer's log receipt proves: "included" when the sender's log holds
        its entry of our request (trust.audit.inclusion), else why not."""
        roster = self._roster()
        member = roster.member(claims.sender)
        at = datetime.fromtimestamp(self._clock(), UTC)
        keys = []
        for k in getattr(member, "keys", ()):
            if k.valid_at(at):
                with contextlib.suppress(SignatureError, ConsortiumError):
                    keys.append(verify_key_of(k.jwk()))
        return check_receipt(
            receipt,
            origin=log_origin(roster.federation_id, claims.sender),
            keys=keys,
            request_digest=request_digest,
            asker=self._org,
        ).verdict

    def _check(
        self,
        message: Signable,
        parts: SignedParts,
        *,
        request_digest: str | None,
        expected_sender: str | None,
    ) -> Verified:
        claims = parts.claims
        # Everything that can be judged without knowing the sender comes first, so that
        # what is refused as malformed does not depend on who is a member.
        payload, check_signature = signature_check(parts)
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
        return Verified(claims, payload_digest(payload))

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
        try:
            verified = self._check_call(token, method, request)
        except Rejected as e:
            sender = ""
            with contextlib.suppress(Rejected):
                sender = read_call_claims(token).sender if isinstance(token, str) else ""
            if sender != self._org:
                self.audit.refused(sender=sender, message_id="", reason=e.reason, what="call")
            raise
        claims = verified.claims
        if claims.sender != self._org:
            self.audit.received(
                Hop(
                    kind="call",
                    peer=claims.sender,
                    message_id=f"call:{claims.nonce}",
                    kid=claims.kid,
                    digest=token_digest(str(token)),
                    jws=str(token),
                    method=method,
                )
            )
        return verified

    def _check_call(self, token: object, method: str, request: ProtoMessage) -> VerifiedCall:
        if token is None or token == "":
            raise Rejected("unsigned", "the call carries no proof")
        if not isinstance(token, str):
            raise Rejected("malformed", "the call proof is not a string")
        claims = read_call_claims(token)

        def check_signature(key: jwk.JWK) -> None:
            verify_compact(token, lambda kid: key if kid == claims.kid else None)

        self.admit(claims, check_signature)
        if claims.method != method:
            raise Rejected("wrong_call", f"the proof is for {claims.method}, not {method}")
        try:
            digest = params_digest(request)
        except ValueError as e:
            raise Rejected("malformed", str(e)) from None
        if claims.params_digest != digest:
            raise Rejected("wrong_call", f"the proof is for other {method} parameters")
        # Checked after the binding, so a proof tried on the wrong call is not used up.
        self.remember(claims.sender, f"call:{claims.nonce}", claims.issued_at)
        return VerifiedCall(claims)

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
