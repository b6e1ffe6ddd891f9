"""The audit hook of calls to peers: what a node records of the signed messages it sends
and the verified replies it receives, so an auditor can later check every hop.

`AuditLog` is the interface the outbound exchange (node/peers.py) calls; `NoOpAuditLog`
records nothing and is what a node without an audit log is wired with, so the exchange
never asks whether auditing is on.
"""

from __future__ import annotations

from typing import Protocol

from a2a.types import a2a_pb2

from consortium.trust.admission import Verified


class AuditLog(Protocol):
    """Where a node records its exchanges with peers."""

    def sent(self, peer: str, request: a2a_pb2.Message) -> None:
        """A request as it leaves for `peer`: redacted and signed."""
        ...

    def received(self, peer: str, reply: a2a_pb2.Message, verified: Verified) -> None:
        """`peer`'s reply once it is verified (its signed copy), with its claims and
        digest."""
        ...


class NoOpAuditLog:
    """Records nothing."""

    def sent(self, peer: str, request: a2a_pb2.Message) -> None:
        pass

    def received(self, peer: str, reply: a2a_pb2.Message, verified: Verified) -> None:
        pass
