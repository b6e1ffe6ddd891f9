"""How much a node believes each peer: the assess hook of calls to peers.

After every reply from a peer the outbound exchange (node/peers.py) tells the node's
`Assessor` what it found (`Verdict`): a verified reply, which the assessor may judge
(a canary whose answer is known, a cross-check), or a reply that failed verification. The
assessor keeps each peer's reputation, from 0 (never ask it) to 1. `NoOpAssessor` gives
every peer 1.0 and learns nothing; a node without reputation is wired with it, so the
exchange never asks whether reputation is on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from a2a.types import a2a_pb2


@dataclass(frozen=True)
class Verdict:
    """What the exchange found of one reply: `reply` is the verified reply, or None when
    the reply was refused, and then `refusal` says why (a `Rejected` reason)."""

    peer: str
    request: a2a_pb2.Message
    reply: a2a_pb2.Message | None
    refusal: str = ""

    @property
    def trusted(self) -> bool:
        return self.reply is not None


class Assessor(Protocol):
    """Judges peers' replies and keeps their reputations."""

    def reputation(self, peer: str) -> float:
        """How much this node believes `peer`: 0 (never ask it) to 1."""
        ...

    def assess(self, verdict: Verdict) -> None:
        """Learns from one reply of `verdict.peer`."""
        ...


class NoOpAssessor:
    """Believes every peer fully and learns nothing."""

    def reputation(self, peer: str) -> float:
        return 1.0

    def assess(self, verdict: Verdict) -> None:
        pass
