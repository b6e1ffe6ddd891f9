"""Protocol mechanics with scripted members (fixed option scores, so every outcome can be
computed by hand); the same protocols run with real models in
tests/integration/test_collaboration.py and tests/evaluation/test_collab_eval.py."""

from __future__ import annotations

import math

import pytest

from consortium.errors import BudgetError
from consortium.protocols.collaboration import (
    Limits,
    Scored,
    combine,
    debate,
    majority,
    mixture,
    neighbours,
    reputation_weights,
    vote,
)
from consortium.protocols.multiple_choice import OptionScores, Question

Q = Question("Which is largest?", ("a mouse", "an elephant", "a cat"))


class Scripted:
    """Answers with fixed probabilities; switches to the majority it is shown, if any."""

    def __init__(self, name: str, probs: tuple[float, ...], price: float = 0.0) -> None:
        self.name = name
        self.probs = probs
        self.price_per_1k = price
        self.contexts: list[str] = []

    async def score(self, question: Question, context: str) -> Scored:
        self.contexts.append(context)
        probs = self.probs
        if context:
            shown = [i for i, c in enumerate(question.choices) if c in context]
            if shown:
                probs = tuple(0.9 if i == shown[0] else 0.05 for i in range(len(probs)))
        lps = tuple(math.log(p) for p in probs)
        scores = OptionScores(lps, (1,) * len(lps), (1,) * len(lps))
        return Scored(scores, 100, 100 * self.price_per_1k / 1000)


def members() -> list[Scripted]:
    return [
        Scripted("a", (0.6, 0.3, 0.1)),
        Scripted("b", (0.2, 0.7, 0.1)),
        Scripted("c", (0.1, 0.8, 0.1)),
    ]


async def test_vote_averages_probabilities_with_weights() -> None:
    out = await vote(members(), Q, norm="none")
    assert out.choice == 1 and out.probabilities == pytest.approx((0.3, 0.6, 0.1))
    heavy_a = await vote(members(), Q, norm="none", weights={"a": 10, "b": 1, "c": 1})
    assert heavy_a.choice == 0
    assert out.by_member()["b"] == {"tokens": 100, "cost": 0.0, "calls": 1}


def test_combine_majority_and_topologies() -> None:
    assert majority([2, 1, 2, 1]) == 1 and majority([0, 2, 2]) == 2
    assert neighbours("full", 4, 1) == [0, 2, 3]
    assert neighbours("ring", 4, 0) == [1, 3]
    assert neighbours("star", 4, 0) == [1, 2, 3] and neighbours("star", 4, 2) == [0]
    with pytest.raises(ValueError):
        combine([])


async def test_debate_shows_neighbours_their_previous_answers() -> None:
    ms = members()
    out = await debate(ms, Q, rounds=2, topology="star", norm="none")
    assert [c.round for c in out.contributions] == [0, 0, 0, 1, 1, 1]
    # The hub (a) sees b and c; the spokes see only the hub's round-0 answer (a mouse).
    assert "an elephant" in ms[0].contexts[1] and "a mouse" in ms[1].contexts[1]
    assert ms[0].contexts[0] == ""
    assert out.protocol == "debate:star"


async def test_mixture_aggregator_sees_the_proposals() -> None:
    a, b, c = members()
    out = await mixture([a, b], c, Q, norm="none")
    assert "a: " not in c.contexts[0] and "a answered" in c.contexts[0]
    assert [x.member for x in out.contributions] == ["a", "b", "c"]


async def test_budgets_stop_protocols_before_they_are_exceeded() -> None:
    by_tokens = await vote(members(), Q, limits=Limits(max_tokens=250))
    assert len(by_tokens.contributions) == 2 and by_tokens.stopped_by_budget
    priced = [Scripted("a", (0.6, 0.3, 0.1), 1.0), Scripted("b", (0.2, 0.7, 0.1), 1.0)]
    by_cost = await vote(priced, Q, limits=Limits(max_cost=0.15))  # 0.1 per call
    assert len(by_cost.contributions) == 1 and by_cost.cost <= 0.15
    debate_cut = await debate(members(), Q, rounds=3, limits=Limits(max_tokens=450))
    assert debate_cut.tokens <= 450 and debate_cut.stopped_by_budget
    with pytest.raises(BudgetError):
        await vote(members(), Q, limits=Limits(max_tokens=10), estimate=100)


def test_reputation_weights_multiply_the_configured_weights() -> None:
    names = ["acme", "globex", "initech"]
    # Nothing configured, every reputation 1.0: equal weights, as before reputations.
    assert reputation_weights(names, None, {"globex": 1.0, "initech": 1.0}) is None
    assert reputation_weights(names, None, {"globex": 0.5}) == {
        "acme": 1.0,
        "globex": 0.5,
        "initech": 1.0,
    }
    # Configured weights times reputation; a member the weights leave out stays at 0.
    configured = {"acme": 0.3, "initech": 0.7}
    assert reputation_weights(names, configured, {"initech": 0.5}) == {
        "acme": 0.3,
        "globex": 0.0,
        "initech": 0.35,
    }
    assert reputation_weights(names, configured, {}) == {
        "acme": 0.3,
        "globex": 0.0,
        "initech": 0.7,
    }


async def test_a_distrusted_member_loses_the_tie_it_would_win() -> None:
    # Mirror-image members tie; the tie goes to the first option, the peer's choice.
    two = Question("Which is larger?", ("a mouse", "an elephant"))
    me, peer = Scripted("me", (0.4, 0.6)), Scripted("peer", (0.6, 0.4))
    tie = await vote([me, peer], two, weights=reputation_weights(["me", "peer"], None, {}))
    assert tie.choice == 0 and tie.probabilities[0] == tie.probabilities[1]
    weights = reputation_weights(["me", "peer"], None, {"peer": 0.1})
    distrusted = await vote([me, peer], two, weights=weights)
    assert distrusted.choice == 1
    assert distrusted.probabilities[1] == pytest.approx((0.6 + 0.1 * 0.4) / 1.1)
