"""Redaction: what of a message may leave for another organization.

Every request a node sends to a peer passes its `Redactor` first, before it is signed
(node/peers.py), so the signature covers what the peer receives. A node without a
redaction policy uses `IdentityRedactor`, chosen where the node is wired, so the exchange
never asks whether redaction is on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from a2a.types import a2a_pb2


class Redactor(Protocol):
    """A redaction policy for outgoing messages."""

    async def redact(self, message: a2a_pb2.Message, recipient: str) -> a2a_pb2.Message:
        """What of `message` may go to `recipient`: the message itself or a redacted copy;
        `message` itself is left as it is. Raises RequestRejected when the message must
        not leave (nothing is sent)."""
        ...

    def signed(self, recipient: str, request: a2a_pb2.Message) -> None:
        """The request as it left, signed (its receipts are kept with it)."""
        ...

    @property
    def may_block(self) -> bool:
        """Whether the policy blocks anything for any peer (else `blocks` is always ())."""
        ...

    async def blocks(self, recipient: str, texts: Sequence[str]) -> tuple[str, ...]:
        """The entity types found in `texts` that the policy for `recipient` blocks: a
        message holding them would not be sent."""
        ...


class IdentityRedactor:
    """Sends every message as it is."""

    async def redact(self, message: a2a_pb2.Message, recipient: str) -> a2a_pb2.Message:
        return message

    def signed(self, recipient: str, request: a2a_pb2.Message) -> None:
        pass

    @property
    def may_block(self) -> bool:
        return False

    async def blocks(self, recipient: str, texts: Sequence[str]) -> tuple[str, ...]:
        return ()
