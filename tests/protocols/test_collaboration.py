"""Protocol mechanics with scripted members (fixed option scores, so every outcome can be
computed by hand); the same protocols run with real models in
tests/integration/test_collaboration.py and tests/evaluation/test_collab_eval.py."""

from __future__ import annotations

import math

import pytest

from consortium.errors import (
    BudgetError,
    NodeUnavailableError,
    QuorumError,
    RequestRejected,
    UntrustedAnswer,
)
from consortium.protocols.collaboration import (
    Failure,
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


class Failing(Scripted):
    """A scripted member whose calls from the `from_call`-th on (0-based) raise `error`."""

    def __init__(self, name: str, error: Exception, from_call: int = 0) -> None:
        super().__init__(name, (0.1, 0.1, 0.8))
        self.error = error
        self.from_call = from_call

    async def score(self, question: Question, context: str) -> Scored:
        if len(self.contexts) >= self.from_call:
            self.contexts.append(context)
            raise self.error
        return await super().score(question, context)


def reasons(failures: list[Failure]) -> list[tuple[str, int, str]]:
    return [(f.member, f.round, f.reason) for f in failures]


async def test_a_vote_goes_on_without_a_failed_member_if_the_quorum_allows() -> None:
    a, b, _ = members()
    down = Failing("c", NodeUnavailableError("c did not answer within 10 s"))
    out = await vote([a, down, b], Q, norm="none", quorum=2)
    assert [c.member for c in out.contributions] == ["a", "b"]
    assert out.probabilities == pytest.approx((0.4, 0.5, 0.1))  # a and b only
    assert reasons(out.failures) == [("c", 0, "unavailable: c did not answer within 10 s")]
    with pytest.raises(QuorumError) as e:
        await vote([a, down, b], Q, norm="none", quorum=3)
    assert str(e.value) == (
        "2 member(s) answered, fewer than the group's quorum of 3 "
        "(c unavailable: c did not answer within 10 s)"
    )
    # Without a quorum, the member's failure is the task's, as before.
    with pytest.raises(NodeUnavailableError, match="within 10 s"):
        await vote([a, down, b], Q, norm="none")
    # A fault that is not a member's (a bug here) is never swallowed.
    with pytest.raises(KeyError):
        await vote([a, Failing("x", KeyError("bug"))], Q, quorum=1)


async def test_every_kind_of_member_failure_is_named() -> None:
    failing = [
        Failing("u", UntrustedAnswer("the signature does not verify")),
        Failing("r", RequestRejected("x is quarantined by this node's trust layer")),
    ]
    out = await vote([*failing, members()[0]], Q, norm="none", quorum=1)
    assert reasons(out.failures) == [
        ("u", 0, "untrusted: the signature does not verify"),
        ("r", 0, "refused: x is quarantined by this node's trust layer"),
    ]
    assert out.choice == 0


async def test_a_debate_drops_a_member_that_failed_and_ends_on_the_others() -> None:
    a, _, c = members()
    flaky = Failing("b", NodeUnavailableError("b is unreachable"), from_call=1)
    out = await debate([a, flaky, c], Q, rounds=3, topology="ring", norm="none", quorum=2)
    rounds = [(x.member, x.round) for x in out.contributions]
    assert rounds == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("c", 1), ("a", 2), ("c", 2)]
    assert len(flaky.contexts) == 2  # asked in rounds 0 and 1, not again
    assert reasons(out.failures) == [("b", 1, "unavailable: b is unreachable")]
    # Round 2 of a and c: each shown only the other (the ring of the two left).
    assert "c answered" in a.contexts[2] and "b answered" not in a.contexts[2]
    with pytest.raises(QuorumError, match="1 member"):
        await debate([members()[0], Failing("b", NodeUnavailableError("down"))], Q, quorum=2)


async def test_a_mixture_without_its_aggregator_combines_the_proposals() -> None:
    a, b, _ = members()
    aggregator = Failing("c", UntrustedAnswer("wrong sender"))
    out = await mixture([a, b], aggregator, Q, norm="none", quorum=2)
    assert [x.member for x in out.contributions] == ["a", "b"]
    assert out.probabilities == pytest.approx((0.4, 0.5, 0.1))
    assert reasons(out.failures) == [("c", 1, "untrusted: wrong sender")]
    assert not out.stopped_by_budget
    with pytest.raises(QuorumError):
        await mixture([a, b], aggregator, Q, norm="none", quorum=3)
