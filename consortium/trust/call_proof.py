"""Signed call proofs: how a member proves who calls a task method on another's node.

GetTask, ListTasks, CancelTask and SubscribeToTask carry no message to sign, so the
calling member attaches a proof in the `x-consortium-proof` gRPC metadata key or HTTP
header: a compact JWS (EdDSA, `typ` "consortium-call") whose payload is the RFC 8785
canonical JSON of the claims

    {kind: "call", sender, kid, recipient, federation, method, paramsDigest, issuedAt, nonce}

where `method` is the A2A method name and `paramsDigest` the SHA-256 (base64url) of the
canonical JSON of the request's protobuf JSON form. A proof therefore holds for one call
only: the method and the parameters it was made for (a proof for GetTask of task A is
refused for CancelTask, or for task B), to one recipient, once (the nonce goes into the
node's replay cache), within the clock skew.

A proof is made by `trust.signing.sign_call` (or the organization's `Signer`).
Verification is `MessageVerifier.verify_call` (`trust.admission`), which shares the
roster, key, status, federation, recipient, freshness and replay checks of messages, so
refusals carry the same reasons, plus `wrong_call` when the method or the parameters
differ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from google.protobuf.json_format import MessageToDict, SerializeToJsonError
from google.protobuf.message import Message as ProtoMessage

from consortium.trust.claims import instant_claim, payload_digest, text_claim
from consortium.trust.jws import SignatureError, canonical, read_compact
from consortium.trust.refusals import Rejected

PROOF_HEADER = "x-consortium-proof"
PROOF_TYPE = "consortium-call"  # the JWS `typ` of a call proof
TASK_METHODS = ("GetTask", "ListTasks", "CancelTask", "SubscribeToTask")
# A proof is a few hundred characters; anything much longer is refused unread.
MAX_PROOF_CHARS = 4096


@dataclass(frozen=True)
class CallClaims:
    """What a call proof states; `kind` is always "call" on the wire."""

    sender: str
    kid: str
    recipient: str
    federation: str
    method: str
    params_digest: str
    issued_at: float
    nonce: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": "call",
            "sender": self.sender,
            "kid": self.kid,
            "recipient": self.recipient,
            "federation": self.federation,
            "method": self.method,
            "paramsDigest": self.params_digest,
            "issuedAt": self.issued_at,
            "nonce": self.nonce,
        }

    @staticmethod
    def from_dict(d: Any) -> CallClaims:
        """Raises Rejected("malformed") for anything but well-typed, bounded claims."""
        if not isinstance(d, dict):
            raise Rejected("malformed", "call claims are not an object")
        if d.get("kind") != "call":
            raise Rejected("malformed", "claim kind is not call")
        return CallClaims(
            sender=text_claim(d, "sender"),
            kid=text_claim(d, "kid"),
            recipient=text_claim(d, "recipient"),
            federation=text_claim(d, "federation"),
            method=text_claim(d, "method"),
            params_digest=text_claim(d, "paramsDigest"),
            issued_at=instant_claim(d, "issuedAt"),
            nonce=text_claim(d, "nonce"),
        )


@dataclass(frozen=True)
class VerifiedCall:
    """A call whose proof passed every check."""

    claims: CallClaims


def params_digest(request: ProtoMessage) -> str:
    """SHA-256 (base64url) of the RFC 8785 canonical JSON of the request's protobuf JSON
    form (`MessageToDict`). Raises ValueError when the request has no JSON form."""
    try:
        form = MessageToDict(request)
    except (SerializeToJsonError, TypeError) as e:
        raise ValueError(f"the request has no JSON form: {e}") from None
    try:
        payload = canonical(form)
    except SignatureError as e:
        raise ValueError(str(e)) from None
    return payload_digest(payload)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read_call_claims(token: str) -> CallClaims:
    """The claims a proof states, unverified; raises Rejected("malformed")."""
    if len(token) > MAX_PROOF_CHARS:
        raise Rejected("malformed", f"the call proof exceeds {MAX_PROOF_CHARS} characters")
    try:
        header, payload = read_compact(token)
    except SignatureError as e:
        raise Rejected("malformed", str(e)) from None
    if header.get("typ") != PROOF_TYPE:
        raise Rejected("malformed", f"the JWS type is not {PROOF_TYPE}")
    try:
        # Python's json reads NaN and Infinity, which are not JSON.
        data = json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Rejected("malformed", "the call proof's payload is not JSON") from None
    claims = CallClaims.from_dict(data)
    if header.get("kid") != claims.kid:
        raise Rejected("malformed", "the JWS key id differs from the claimed key id")
    return claims
