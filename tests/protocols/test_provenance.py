"""The Provenance model: its wire JSON (camelCase, absent fields left out, in the order the
node has always written them) and reading it back from a peer's metadata."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from consortium.protocols.provenance import (
    BudgetLimits,
    Contribution,
    MemberUsage,
    Provenance,
    RoutingDecision,
)
from consortium.protocols.routing import Budget


def test_a_local_answer_in_the_order_it_was_always_written() -> None:
    p = Provenance(
        org="acme",
        model="echo",
        backend="echo",
        input_tokens=13,
        output_tokens=4,
        finish_reason="stop",
        latency_ms=1.5,
        time_to_first_token_ms=0.0,
        decode_tokens_per_s=100.0,
    )
    assert json.dumps(p.wire()) == (
        '{"org": "acme", "model": "echo", "backend": "echo", "inputTokens": 13, '
        '"outputTokens": 4, "finishReason": "stop", "latencyMs": 1.5, '
        '"timeToFirstTokenMs": 0.0, "decodeTokensPerS": 100.0}'
    )


def test_a_group_answer_with_a_budget() -> None:
    p = Provenance(
        org="acme",
        route="acme->group:panel",
        router="vote",
        members={"acme": MemberUsage(tokens=21, cost=0.0, calls=1)},
        tokens=21,
        cost=0.0,
        confidence=0.25,
        latency_ms=2.0,
        decision=RoutingDecision.of("always: escalate to panel", float("inf")),
        protocol="vote",
        contributions=[Contribution(member="acme", round=0, choice=0, tokens=21)],
        stopped_by_budget=True,
        budget=BudgetLimits.of(Budget(max_peers=1)),
        choice=0,
        probabilities=[0.5, 0.5],
    )
    assert list(p.wire()) == [
        "org",
        "route",
        "router",
        "members",
        "tokens",
        "cost",
        "confidence",
        "latencyMs",
        "decision",
        "protocol",
        "contributions",
        "stoppedByBudget",
        "budget",
        "choice",
        "probabilities",
    ]
    assert p.wire()["decision"] == {"reason": "always: escalate to panel", "score": "inf"}
    assert p.wire()["budget"] == {"maxPeers": 1}
    assert p.wire()["members"] == {"acme": {"tokens": 21, "cost": 0.0, "calls": 1}}


def test_no_budget_no_limits() -> None:
    assert BudgetLimits.of(Budget()) is None
    assert RoutingDecision.of("r", -float("inf")).score == "-inf"
    assert RoutingDecision.of("r", 0.123456).score == 0.1235


def test_read_back_from_the_wire_where_every_number_is_a_double() -> None:
    decoded = {
        "org": "globex",
        "inputTokens": 12.0,
        "verifiedEvents": 5.0,
        "members": {"globex": {"tokens": 3.0, "cost": 0.0, "calls": 1.0}},
        "aNewerKey": {"kept": True},
    }
    p = Provenance.model_validate(decoded)
    assert p.input_tokens == 12 and p.verified_events == 5
    assert p.members == {"globex": MemberUsage(tokens=3, cost=0.0, calls=1)}
    assert p.wire()["aNewerKey"] == {"kept": True}  # passed on as it came


@pytest.mark.parametrize(
    "bad",
    [{"inputTokens": 1.5}, {"members": {"x": {"tokens": 1}}}, {"decision": {"score": "big"}}],
)
def test_malformed_provenance_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Provenance.model_validate(bad)
