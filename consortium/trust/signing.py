"""Signing what an organization sends to another: requests, answers and task events
(`trust.claims` says what the signature covers) and call proofs (`trust.call_proof`).

Every function takes the organization's `SigningIdentity` (key, org id, federation id);
`Signer` holds one and is the one signer a node uses for everything it sends: its own
requests and call proofs, and the answers and events bound to a peer's verified request.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any, TypeVar

from a2a.types import a2a_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message as ProtoMessage
from jwcrypto import jwk

from consortium.trust.admission import Verified, hop_of, token_digest
from consortium.trust.audit import AuditLog, Hop, HopKind, NoOpAuditLog
from consortium.trust.call_proof import PROOF_TYPE, CallClaims, params_digest, read_call_claims
from consortium.trust.claims import (
    CLAIMS_KEY,
    EXTENSION_URI,
    MESSAGE_TYPE,
    SIGNATURE_KEY,
    Claims,
    Kind,
    Signable,
    TaskEvent,
    payload_digest,
)
from consortium.trust.jws import canonical, sign_compact, sign_payload
from consortium.trust.keys import key_id


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
    return _answer(message, signer, recipient, request_digest, traceparent, now)[0]


def _answer(
    message: a2a_pb2.Message,
    signer: SigningIdentity,
    recipient: str,
    request_digest: str,
    traceparent: str,
    now: float | None,
) -> tuple[a2a_pb2.Message, str]:
    if not request_digest:
        raise ValueError("an answer must be bound to its request's digest")
    if message.role != a2a_pb2.ROLE_AGENT:
        raise ValueError("an answer to sign must have role ROLE_AGENT")
    return _sign_message(message, signer, "answer", recipient, request_digest, traceparent, now)


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
    return _event(event, signer, recipient, request_digest, traceparent, now)[0]


def _event(
    event: TaskEvent,
    signer: SigningIdentity,
    recipient: str,
    request_digest: str,
    traceparent: str,
    now: float | None,
) -> tuple[TaskEvent, str]:
    if not request_digest:
        raise ValueError("a task event must be bound to its request's digest")
    signed: TaskEvent = type(event).FromString(event.SerializeToString())
    claims = _claims(
        "event", f"event-{uuid.uuid4()}", signer, recipient, request_digest, traceparent, now
    )
    return _sign(signed, claims, signer.key)


def sign_call(
    method: str,
    request: ProtoMessage,
    signer: SigningIdentity,
    *,
    recipient: str,
    now: float | None = None,
) -> str:
    """The proof (a compact JWS) for calling `method` with `request` on `recipient`'s
    node; it goes in the PROOF_HEADER metadata key or header."""
    if not method:
        raise ValueError("a call proof needs the method name")
    claims = CallClaims(
        sender=signer.sender,
        kid=key_id(signer.key),
        recipient=recipient,
        federation=signer.federation,
        method=method,
        params_digest=params_digest(request),
        issued_at=round(time.time() if now is None else now, 3),
        nonce=secrets.token_urlsafe(12),
    )
    return sign_compact(canonical(claims.as_dict()), signer.key, {"typ": PROOF_TYPE})


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
    return signed, payload_digest(payload)


class Signer:
    """An organization's one signer: its requests and call proofs, and the answers and
    task events it sends back, bound to a peer's verified request. Everything it signs
    for another organization is told to `audit` (trust.audit) before it is returned, so
    before it can be sent."""

    def __init__(self, identity: SigningIdentity, audit: AuditLog | None = None) -> None:
        self.identity = identity
        self.audit: AuditLog = audit or NoOpAuditLog()

    @property
    def org_id(self) -> str:
        return self.identity.sender

    def sign_request(
        self, message: a2a_pb2.Message, recipient: str, traceparent: str = ""
    ) -> tuple[a2a_pb2.Message, str]:
        """The signed request and its digest, which every answer to it must bind to."""
        signed, digest = sign_request(
            message, self.identity, recipient=recipient, traceparent=traceparent
        )
        self._sent("request", signed, digest)
        return signed, digest

    def sign_call(self, method: str, request: ProtoMessage, recipient: str) -> str:
        """A call proof for a task method (GetTask, ListTasks, ...) on `recipient`'s node."""
        token = sign_call(method, request, self.identity, recipient=recipient)
        if recipient != self.identity.sender:
            claims = read_call_claims(token)
            self.audit.sent(
                Hop(
                    kind="call",
                    peer=recipient,
                    message_id=f"call:{claims.nonce}",
                    kid=claims.kid,
                    digest=token_digest(token),
                    jws=token,
                    method=method,
                )
            )
        return token

    def sign_reply(self, message: a2a_pb2.Message, request: Verified) -> a2a_pb2.Message:
        """An answer to a peer's request, bound to it (and to its trace)."""
        signed, digest = _answer(
            message,
            self.identity,
            request.claims.sender,
            request.digest,
            request.claims.traceparent,
            None,
        )
        self._sent("answer", signed, digest)
        return signed

    def sign_event(self, event: TaskEvent, request: Verified) -> TaskEvent:
        """A task event streamed for a peer's request, bound to it (and to its trace)."""
        signed, digest = _event(
            event,
            self.identity,
            request.claims.sender,
            request.digest,
            request.claims.traceparent,
            None,
        )
        self._sent("event", signed, digest)
        return signed

    def _sent(self, kind: HopKind, signed: Signable, digest: str) -> None:
        hop = hop_of(kind, signed, digest)
        if hop.peer != self.identity.sender:  # the organization's own node is no hop
            self.audit.sent(hop)
