"""How much a node believes each peer: the assess hook of calls to peers.

After every reply from a peer the outbound exchange (node/peers.py) tells the node's
`Assessor` what it found (`Verdict`): a verified reply, which the assessor may judge
(a canary whose answer is known, a cross-check), or a reply that failed verification. The
assessor keeps each peer's reputation, from 0 (never ask it) to 1. `NoOpAssessor` gives
every peer 1.0 and learns nothing; a node without reputation is wired with it, so the
exchange never asks whether reputation is on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from a2a.types import a2a_pb2

PeerState = Literal["healthy", "probation", "quarantined"]
# What a piece of evidence about a peer comes from, strongest first: a known-answer task,
# a second member's (or the local model's) answer to the same task, what the protocol
# shows (verification, timeouts, malformed or empty answers, claims the roster does not
# allow), and another member's signed trust report.
EvidenceKind = Literal["canary", "cross_check", "protocol", "report"]

# Failures of a call that say something about the network between two nodes, or the
# peer's load, not about its honesty: a connection refused or reset ("unreachable"), no
# answer before the deadline ("timeout"), a peer refusing work it has no room for
# ("busy"). They are kept out of the reputation (node/breaker.py hears them instead): a
# peer that was down, or behind a bad link, is as trustworthy when it comes back.
NETWORK_FAILURES = frozenset({"unreachable", "timeout", "busy"})


@dataclass(frozen=True)
class Verdict:
    """What the exchange found of one call: `reply` is the verified reply, or None when
    there is none to believe; then `refusal` says why verification refused it (a
    `Rejected` reason) or `failure` why there was nothing to verify ("timeout",
    "unreachable", "busy": NETWORK_FAILURES, which say nothing of the peer's honesty;
    "no_reply"). `claim` is set on a verified reply that claims what the
    roster does not allow ("unlisted_model": a model the member does not list;
    "bad_token_count": a negative, non-integer or absurd token count): the reply was
    signed by the member and is still used; the claim is evidence against it."""

    peer: str
    request: a2a_pb2.Message
    reply: a2a_pb2.Message | None
    refusal: str = ""
    failure: str = ""
    claim: str = ""

    @property
    def trusted(self) -> bool:
        return self.reply is not None


@dataclass(frozen=True)
class Evidence:
    """One observation about a peer: good or bad, of a kind, with a reason code
    ("verified", "bad_signature", "timeout", "canary_passed", "canary_failed", ...);
    `model` is the model it concerns when known; `weight` scales the kind's weight."""

    peer: str
    kind: EvidenceKind
    good: bool
    reason: str
    model: str = ""
    weight: float = 1.0


@dataclass(frozen=True)
class Standing:
    """A peer's reputation as routing reads it: its state, the posterior mean `score`
    and the lower credible `bound` the state is decided on (both 0..1), and `weight`, what
    routing weighs it by in a peer choice or a vote (the score, less on probation: see
    `routing_weight`; the score when not given)."""

    peer: str
    state: PeerState
    score: float
    bound: float
    weight: float | None = None
    canary: Literal["passed", "failed"] | None = None  # its latest canary's verdict

    @property
    def routing_weight(self) -> float:
        return self.score if self.weight is None else self.weight

    @property
    def allowed(self) -> bool:
        """Whether routing may choose it (a quarantined peer is never chosen)."""
        return self.state != "quarantined"


class Assessor(Protocol):
    """Judges peers' replies and keeps their reputations."""

    def reputation(self, peer: str) -> float:
        """How much this node believes `peer`: 0 (never ask it) to 1."""
        ...

    def standing(self, peer: str) -> Standing:
        """The peer's state and scores, as routing reads them."""
        ...

    def assess(self, verdict: Verdict) -> None:
        """Learns from one call to `verdict.peer`."""
        ...

    def record(self, evidence: Evidence) -> Standing:
        """Learns from one piece of evidence (a canary, a cross-check, a report)."""
        ...


class NoOpAssessor:
    """Believes every peer fully and learns nothing."""

    def reputation(self, peer: str) -> float:
        return 1.0

    def standing(self, peer: str) -> Standing:
        return Standing(peer, "healthy", 1.0, 1.0)

    def assess(self, verdict: Verdict) -> None:
        pass

    # What ReputationAssessor (trust/reputation_engine.py) offers besides the protocol, so
    # the wiring treats both alike.

    def record(self, evidence: Evidence) -> Standing:
        return self.standing(evidence.peer)

    def set_members(self, peers: Iterable[str]) -> None:
        pass

    def close(self) -> None:
        pass
