"""Routers, confidence signals, calibration, budgets and peer choice."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from consortium.protocols.routing import (
    AlwaysRouter,
    Budget,
    CascadeRouter,
    Draft,
    HeuristicRouter,
    LocalRouter,
    Peer,
    RandomRouter,
    RoutingInput,
    SelfRouter,
    calibrate,
    choose_peer,
    parse_router,
)

PEERS = (
    Peer("cheap", context_size=2048, price_per_1k_tokens=0.1, typical_latency_ms=200),
    Peer("strong", context_size=8192, price_per_1k_tokens=2.0, typical_latency_ms=900),
    Peer("slow", context_size=8192, price_per_1k_tokens=0.5, typical_latency_ms=5000),
)


def test_confidence_signals_by_hand() -> None:
    d = Draft(token_logprobs=(-0.5, -1.5), first_entropy=0.7, option_probs=(0.6, 0.3, 0.1))
    assert d.signal("margin") == pytest.approx(0.3)
    assert d.signal("entropy") == pytest.approx(
        0.6 * math.log(0.6) + 0.3 * math.log(0.3) + 0.1 * math.log(0.1)
    )
    assert d.signal("mean_logprob") == pytest.approx(-1.0)
    assert d.signal("min_logprob") == pytest.approx(-1.5)
    free_text = Draft(token_logprobs=(-0.2,), first_entropy=0.9)
    assert free_text.signal("entropy") == pytest.approx(-0.9)
    with pytest.raises(ValueError, match="margin needs"):
        free_text.signal("margin")


def test_calibration_hits_the_target_escalation_rate() -> None:
    scores = [i / 100 for i in range(100)]
    for rate in (0.0, 0.1, 0.25, 0.5, 1.0):
        threshold = calibrate(scores, rate)
        assert sum(s > threshold for s in scores) == round(rate * 100)
    with pytest.raises(ValueError):
        calibrate(scores, 1.5)


def test_self_router_escalates_low_confidence_drafts_with_a_reason() -> None:
    router = SelfRouter("margin", target="strong")
    router.calibrate([-0.9, -0.8, -0.1, -0.05], 0.5)  # negated margins: escalate the bottom half
    sure = router.decide(RoutingInput("q", draft=Draft(option_probs=(0.95, 0.05))))
    unsure = router.decide(RoutingInput("q", draft=Draft(option_probs=(0.5, 0.45, 0.05))))
    assert (sure.route, sure.target) == ("local", "")
    assert (unsure.route, unsure.target) == ("escalate", "strong")
    assert "margin" in unsure.reason and unsure.score == pytest.approx(-0.05)
    with pytest.raises(ValueError, match="draft"):
        router.score(RoutingInput("q"))


def test_baselines() -> None:
    task = RoutingInput("q", peers=PEERS)
    assert LocalRouter().decide(task).route == "local"
    always = AlwaysRouter("cheap").decide(task)
    assert (always.route, always.target) == ("escalate", "cheap")
    router = RandomRouter(0.3, seed=7)
    share = sum(router.decide(task).route == "escalate" for _ in range(2000)) / 2000
    assert 0.25 < share < 0.35
    with pytest.raises(ValueError):
        RandomRouter(1.2)


def test_heuristic_rules() -> None:
    router = HeuristicRouter(threshold=0.5)
    assert router.rules("What colour is the sky?") == []
    assert router.rules("Calculate the integral and give it as JSON") == ["domain", "format"]
    assert router.rules("x" * 700) == ["length"]
    decision = router.decide(RoutingInput("Prove this theorem", peers=PEERS))
    assert decision.route == "escalate" and "domain" in decision.reason


def test_budget_and_peer_choice() -> None:
    # The most capable, and among equals the cheaper: slow costs a quarter of strong.
    assert choose_peer(PEERS, Budget(), 1000) == "slow"
    assert choose_peer(PEERS, Budget(deadline_s=1.0), 1000) == "strong"
    assert choose_peer(PEERS, Budget(max_cost=1.0), 1000) == "slow"  # strong costs 2.0
    assert choose_peer(PEERS, Budget(max_cost=1.0, deadline_s=1.0), 1000) == "cheap"
    assert choose_peer(PEERS, Budget(max_cost=0.01), 1000) == ""
    low = Draft(option_probs=(0.4, 0.35, 0.25))
    decision = SelfRouter("margin", threshold=-0.5).decide(
        RoutingInput("q", draft=low, peers=PEERS, budget=Budget(max_cost=0.01))
    )
    assert decision.route == "local" and "no peer within the budget" in decision.reason


def test_cascade_checks_the_local_answer() -> None:
    by_confidence = CascadeRouter("confidence", "margin", threshold=-0.3, target="strong")
    assert by_confidence.decide(RoutingInput("q", draft=Draft(option_probs=(0.9, 0.1)))).route == (
        "local"
    )
    by_check = CascadeRouter("self_check", threshold=-0.5, target="strong")
    failed = RoutingInput("q", draft=Draft(), features={"self_check": [0.2]})
    assert by_check.decide(failed).route == "escalate"
    assert "failed" in by_check.decide(failed).reason


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("magic", "unknown router"),
        ("always", "needs the organization"),
        ("random:lots", "needs a probability"),
        ("random:2", "0 <= P <= 1"),
        ("self:vibes", "unknown confidence signal"),
        ("cascade:maybe", "cascade takes"),
    ],
)
def test_bad_router_specs_name_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_router(spec)


def test_good_router_specs() -> None:
    assert parse_router("always:globex") == ("always", "globex")
    assert parse_router("self:entropy") == ("self", "entropy")
    assert parse_router("learned") == ("learned", "")


def test_reputation_weights_the_peer_choice() -> None:
    # Every trust 1.0: today's choice (the most capable, the cheaper among equals).
    assert choose_peer(PEERS, Budget(), 1000) == "slow"
    # slow's reputation 0.2 weighs its 8192 tokens of context down to 1638: strong wins.
    distrusted = tuple(replace(p, trust=0.2) if p.org == "slow" else p for p in PEERS)
    assert choose_peer(distrusted, Budget(), 1000) == "strong"
    # Equally capable after weighting: the more trusted first, before price.
    halves = (
        Peer("a", context_size=4096, trust=1.0, price_per_1k_tokens=9.0),
        Peer("b", context_size=8192, trust=0.5, price_per_1k_tokens=0.1),
    )
    assert choose_peer(halves, Budget(), 1000) == "a"
    # No capabilities in the roster: reputation alone decides.
    bare = (Peer("x", trust=0.6), Peer("y", trust=0.9), Peer("z", trust=0.3))
    assert choose_peer(bare, Budget(), 1000) == "y"


def test_a_quarantined_target_is_answered_locally_with_the_reason() -> None:
    task = RoutingInput("Prove this theorem", peers=PEERS, quarantined=frozenset({"strong"}))
    for router in (AlwaysRouter("strong"), HeuristicRouter(0.5, target="strong")):
        decision = router.decide(task)
        assert (decision.route, decision.target) == ("local", "")
        assert decision.reason.endswith("; strong is quarantined by this node's trust layer")
    # Another target, or a peer chosen among the candidates, is unaffected.
    assert AlwaysRouter("cheap").decide(task).target == "cheap"
    assert HeuristicRouter(0.5).decide(task).target == "slow"
