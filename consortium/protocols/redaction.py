"""Redaction: what of a message may leave for another organization.

Every request a node sends to a peer passes its `Redactor` first, before it is signed
(node/peers.py), so the signature covers what the peer receives. A node without a
redaction policy uses `IdentityRedactor`, chosen where the node is wired, so the exchange
never asks whether redaction is on.
"""

from __future__ import annotations

from typing import Protocol

from a2a.types import a2a_pb2


class Redactor(Protocol):
    """A redaction policy for outgoing messages."""

    def redact(self, message: a2a_pb2.Message, recipient: str) -> a2a_pb2.Message:
        """What of `message` may go to `recipient`: the message itself or a redacted copy;
        `message` itself is left as it is."""
        ...


class IdentityRedactor:
    """Sends every message as it is."""

    def redact(self, message: a2a_pb2.Message, recipient: str) -> a2a_pb2.Message:
        return message
