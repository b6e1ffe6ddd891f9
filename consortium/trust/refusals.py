"""Why a signed message or call proof is refused: the reasons, the status class of each,
and what a refusal may tell its sender.

A reason is UNAUTHENTICATED when we cannot tell who sent the message, or it is stale,
replayed or turned around, and PERMISSION_DENIED when we know who sent it and they may
not. Outside the node, "not a member", "unknown key" and "bad signature" are one refusal
(`Rejected.external_reason`), so a refusal does not tell a stranger who belongs to the
federation.
"""

from __future__ import annotations

from typing import Literal

from consortium.errors import ConsortiumError

Code = Literal["UNAUTHENTICATED", "PERMISSION_DENIED"]
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
