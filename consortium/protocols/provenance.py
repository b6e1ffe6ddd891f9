"""Provenance: how a node arrived at an answer, sent with it in `metadata["consortium"]`.

One model covers every kind of answer; which fields are present says which kind it was:
- generated locally: org, model, backend, input/output tokens, finish reason, latency,
  time to first token, decode rate;
- a peer asked (free text): the peer's own provenance, with the route (`A->B`), whether
  its answer was verified and how many of its signed events were;
- a multiple-choice answer: route (`local`, `A->B`, `A->group:NAME`), router, the members
  with their tokens, cost and calls, totals, confidence, the router's decision, and for a
  group its protocol, every contribution and the members that failed (`failed`); the
  task's budget; the choice and the probabilities of all options;
- whenever peers contributed (asked, escalated, a group): each contributing peer's
  `reputation` when it was chosen (what weighed its vote) and the `verdicts` on its
  replies. Both are absent from an answer no peer contributed to;
- whenever this node's redaction policy acted on a message to a peer: `redaction`, the
  entity types and counts each peer was sent in place of values, the types that kept a
  message from a peer, and the ids of the messages whose receipts this node keeps.

`wire()` is the JSON that goes into the metadata: camelCase keys, absent fields left out.
Fields are declared in the order the node has always added them (wire order follows
insertion order within a process). Keys this version does not know (a peer's newer
provenance) are kept and passed on.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from consortium.protocols.routing import Budget


class WireModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    def wire(self) -> dict[str, Any]:
        """The JSON object sent in metadata: camelCase, without absent fields."""
        return self.model_dump(by_alias=True, exclude_none=True)


class MemberUsage(WireModel):
    """What one member of an answer spent."""

    tokens: int
    cost: float
    calls: int


class RoutingDecision(WireModel):
    """Why the router chose the route: its reason and score (a non-finite score as the
    string "inf" or "-inf", which JSON cannot carry as a number)."""

    reason: str
    score: float | Literal["inf", "-inf"]

    @classmethod
    def of(cls, reason: str, score: float) -> RoutingDecision:
        if math.isfinite(score):
            return cls(reason=reason, score=round(score, 4))
        return cls(reason=reason, score="inf" if score > 0 else "-inf")


class Contribution(WireModel):
    """One member's answer in one round of a group's protocol."""

    member: str
    round: int
    choice: int
    tokens: int


class BudgetLimits(WireModel):
    """The limits of a task's budget that were set."""

    max_cost: float | None = None
    deadline_s: float | None = None
    max_peers: int | None = None

    @classmethod
    def of(cls, budget: Budget) -> BudgetLimits | None:
        """None when the budget sets no limit."""
        if budget.max_cost is None and budget.deadline_s is None and budget.max_peers is None:
            return None
        return cls(
            max_cost=budget.max_cost, deadline_s=budget.deadline_s, max_peers=budget.max_peers
        )


class PeerVerdict(WireModel):
    """What verification found of a peer's replies to one task: the signature verified
    (an unverified reply is never used), a claim the roster does not allow
    ("unlisted_model", "bad_token_count"), if any reply made one, the cross-check of its
    answer against a same-model reference, if there was one, and the verdict of the
    latest canary (known-answer task) this node sent it before it was asked, if any."""

    signature: Literal["verified"] = "verified"
    claim: str | None = None
    cross_check: Literal["agreed", "disagreed"] | None = None
    canary: Literal["passed", "failed"] | None = None


class RedactionReport(WireModel):
    """What this node's redaction policy did to a task's messages to peers: per peer, the
    spans replaced per entity type; the types that blocked a message to a peer (it was not
    sent); the ids of the signed messages whose receipts this node keeps. Never values."""

    peers: dict[str, dict[str, int]] | None = None
    blocked: dict[str, list[str]] | None = None
    receipts: list[str] | None = None


class Provenance(WireModel):
    model_config = ConfigDict(extra="allow")

    org: str | None = None
    model: str | None = None
    backend: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    route: str | None = None
    router: str | None = None
    members: dict[str, MemberUsage] | None = None
    tokens: int | None = None
    cost: float | None = None
    confidence: float | None = None
    verified: bool | None = None
    verified_events: int | None = None
    latency_ms: float | None = None
    time_to_first_token_ms: float | None = None
    decode_tokens_per_s: float | None = None
    decision: RoutingDecision | None = None
    protocol: str | None = None
    contributions: list[Contribution] | None = None
    # Set (true) only when the group's protocol stopped early for its budget.
    stopped_by_budget: bool | None = None
    # The group's members whose call failed, and why (`kind: message`, the first failure
    # of each): the group answered without them, its quorum met.
    failed: dict[str, str] | None = None
    budget: BudgetLimits | None = None
    choice: int | None = None
    probabilities: list[float] | None = None
    # Keyed by organization: only the peers that contributed (never this node).
    reputation: dict[str, float] | None = None
    verdicts: dict[str, PeerVerdict] | None = None
    # What this node's redaction policy withheld from the peers (types and counts).
    redaction: RedactionReport | None = None
