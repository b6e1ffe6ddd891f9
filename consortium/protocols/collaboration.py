"""Horizontal collaboration: several members work on one task.

- `vote`: each member's answer probabilities, averaged with weights (for multiple choice),
  or a majority over extracted answers (self-consistency, `majority`);
- `debate`: R rounds; in each, a member answers again having seen the previous answers of
  its neighbours: everyone (`full`), its two ring neighbours (`ring`), or the hub and the
  spokes of a `star`;
- `mixture`: mixture-of-agents: proposers answer, an aggregator answers having seen the
  proposals.
Members are anything that can score the options of a question given some context (a local
model, a peer over A2A); every call is recorded with its tokens, cost and latency, and a
protocol stops calling when its token budget would be exceeded.

A member whose call fails (`MEMBER_FAILURES`: it cannot be reached, refuses, or answers
what fails verification) is recorded as a `Failure` and the protocol goes on without it
(in a debate, it is not asked again) — if the `quorum` allows: a round with failures
answers only when at least `quorum` members' answers are left, else QuorumError. Without
a quorum (None) the first failure fails the task, as it is raised.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from consortium.errors import (
    BudgetError,
    ModelError,
    NodeUnavailableError,
    QuorumError,
    RequestRejected,
    UntrustedAnswer,
)
from consortium.protocols.multiple_choice import (
    Normalisation,
    OptionScores,
    Question,
    argmax,
)

Topology = Literal["full", "ring", "star"]


@dataclass(frozen=True)
class Scored:
    scores: OptionScores
    tokens: int
    cost: float = 0.0


class Member(Protocol):
    name: str
    price_per_1k: float

    async def score(self, question: Question, context: str) -> Scored:
        """Scores the options of `question`, with `context` (others' answers) shown first."""
        ...


@dataclass(frozen=True)
class Contribution:
    member: str
    round: int
    choice: int
    probabilities: tuple[float, ...]
    tokens: int
    cost: float
    latency_s: float


# What a member's call may fail with and the group go on without it; anything else is a
# fault of this node and fails the task.
MEMBER_FAILURES = (NodeUnavailableError, UntrustedAnswer, RequestRejected, ModelError)
_FAILURE_KINDS: tuple[tuple[type[Exception], str], ...] = (
    (NodeUnavailableError, "unavailable"),
    (UntrustedAnswer, "untrusted"),
    (RequestRejected, "refused"),
    (ModelError, "model_error"),
)
MAX_REASON_CHARS = 200


@dataclass(frozen=True)
class Failure:
    """A member's call that failed, and why (`kind: message`)."""

    member: str
    round: int
    reason: str
    error: Exception = field(repr=False, compare=False)

    @classmethod
    def of(cls, member: str, round_: int, error: Exception) -> Failure:
        kind = next(k for t, k in _FAILURE_KINDS if isinstance(error, t))
        return cls(member, round_, f"{kind}: {str(error)[:MAX_REASON_CHARS]}", error)


@dataclass
class Outcome:
    protocol: str
    choice: int
    probabilities: tuple[float, ...]
    contributions: list[Contribution] = field(default_factory=list)
    stopped_by_budget: bool = False
    failures: list[Failure] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(c.tokens for c in self.contributions)

    @property
    def cost(self) -> float:
        return sum(c.cost for c in self.contributions)

    @property
    def confidence(self) -> float:
        return max(self.probabilities) if self.probabilities else 0.0

    def by_member(self) -> dict[str, dict[str, float]]:
        """Tokens, cost and calls per member: the provenance of the answer."""
        out: dict[str, dict[str, float]] = {}
        for c in self.contributions:
            row = out.setdefault(c.member, {"tokens": 0, "cost": 0.0, "calls": 0})
            row["tokens"] += c.tokens
            row["cost"] += c.cost
            row["calls"] += 1
        return out


@dataclass(frozen=True)
class Limits:
    """A protocol's budget: tokens, cost and wall time across all its calls (None: no
    limit). A call is made only if its estimated tokens and cost still fit."""

    max_tokens: int | None = None
    max_cost: float | None = None
    deadline_s: float | None = None


class _Budget:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.used = 0
        self.cost = 0.0
        self.started = time.monotonic()
        self.exceeded = False
        self.last_tokens = 0

    def allows(self, member: Member, estimate: int) -> bool:
        guess = max(estimate, self.last_tokens)
        lim = self.limits
        over = (
            (lim.max_tokens is not None and self.used + guess > lim.max_tokens)
            or (
                lim.max_cost is not None
                and self.cost + guess * member.price_per_1k / 1000 > lim.max_cost
            )
            or (lim.deadline_s is not None and time.monotonic() - self.started > lim.deadline_s)
        )
        if over:
            self.exceeded = True
        return not over

    def spend(self, tokens: int, cost: float) -> None:
        self.used += tokens
        self.cost += cost
        self.last_tokens = tokens


async def _ask(
    member: Member,
    question: Question,
    context: str,
    round_: int,
    norm: Normalisation,
    budget: _Budget,
    estimate: int,
    quorum: int | None = None,
) -> Contribution | Failure | None:
    """The member's answer; None when the budget allows no call; a Failure when the call
    failed and a quorum is set (without one, the failure is raised)."""
    if not budget.allows(member, estimate):
        return None
    started = time.perf_counter()
    try:
        scored = await member.score(question, context)
    except MEMBER_FAILURES as e:
        if quorum is None:
            raise
        return Failure.of(member.name, round_, e)
    budget.spend(scored.tokens, scored.cost)
    probs = tuple(scored.scores.probabilities(norm))
    return Contribution(
        member.name,
        round_,
        argmax(probs),
        probs,
        scored.tokens,
        scored.cost,
        time.perf_counter() - started,
    )


def combine(
    contributions: Sequence[Contribution], weights: dict[str, float] | None = None
) -> tuple[float, ...]:
    """Weighted average of the members' probabilities (equal weights by default)."""
    if not contributions:
        raise ValueError("nothing to combine")
    n = len(contributions[0].probabilities)
    total = [0.0] * n
    weight_sum = 0.0
    for c in contributions:
        w = 1.0 if weights is None else weights.get(c.member, 0.0)
        weight_sum += w
        for i, p in enumerate(c.probabilities):
            total[i] += w * p
    if weight_sum <= 0:
        raise ValueError("the weights of the contributing members sum to zero")
    return tuple(t / weight_sum for t in total)


def reputation_weights(
    members: Sequence[str],
    weights: Mapping[str, float] | None,
    reputation: Mapping[str, float],
) -> dict[str, float] | None:
    """The vote's weights: each member's configured weight (1.0 each when none are
    configured, 0 for a member the configured weights leave out) times its reputation
    (1.0 for a member without one, e.g. this node's own model). None, equal weights, when
    nothing is configured and every reputation is 1.0: the vote is then what it was
    before reputations."""
    if weights is None and all(reputation.get(m, 1.0) == 1.0 for m in members):
        return None
    base = {m: 1.0 for m in members} if weights is None else weights
    return {m: base.get(m, 0.0) * reputation.get(m, 1.0) for m in members}


def majority(choices: Sequence[int]) -> int:
    """The most frequent choice; ties go to the earliest (lowest) option."""
    counts = Counter(choices)
    return min(counts, key=lambda c: (-counts[c], c))


def describe_answers(question: Question, answers: Sequence[tuple[str, int]]) -> str:
    """What a member is shown of others' answers: who chose which option."""
    labels = question.shown_labels
    lines = [
        f"{name} answered: {labels[choice]}. {question.choices[choice].strip()}"
        for name, choice in answers
    ]
    return "\n".join(lines)


async def _alone(
    members: Sequence[Member],
    question: Question,
    norm: Normalisation,
    budget: _Budget,
    estimate: int,
    quorum: int | None,
) -> tuple[list[Contribution], list[Failure]]:
    """Each member's answer on its own (round 0), in order, until the budget stops; the
    answers and the failures."""
    answers: list[Contribution] = []
    failures: list[Failure] = []
    for m in members:
        c = await _ask(m, question, "", 0, norm, budget, estimate, quorum)
        if c is None:
            break
        if isinstance(c, Failure):
            failures.append(c)
        else:
            answers.append(c)
    return answers, failures


def _check_quorum(answered: int, quorum: int | None, failures: Sequence[Failure]) -> None:
    """Raises QuorumError when members failed and fewer than `quorum` answered."""
    if failures and answered < (quorum or 0):
        why = "; ".join(f"{f.member} {f.reason}" for f in failures)
        raise QuorumError(
            f"{answered} member(s) answered, fewer than the group's quorum of {quorum} ({why})"
        )


async def vote(
    members: Sequence[Member],
    question: Question,
    *,
    weights: dict[str, float] | None = None,
    norm: Normalisation = "tokens",
    limits: Limits = Limits(),
    estimate: int = 0,
    quorum: int | None = None,
) -> Outcome:
    budget = _Budget(limits)
    contributions, failures = await _alone(members, question, norm, budget, estimate, quorum)
    _check_quorum(len(contributions), quorum, failures)
    if not contributions:
        raise BudgetError("the budget allows no call to any member")
    probs = combine(contributions, weights)
    return Outcome("vote", argmax(probs), probs, contributions, budget.exceeded, failures)


def neighbours(topology: Topology, n: int, i: int) -> list[int]:
    if topology == "full":
        return [j for j in range(n) if j != i]
    if topology == "ring":
        return sorted({(i - 1) % n, (i + 1) % n} - {i})
    # star: member 0 is the hub
    return [j for j in range(1, n)] if i == 0 else [0]


async def debate(
    members: Sequence[Member],
    question: Question,
    *,
    rounds: int = 2,
    topology: Topology = "full",
    weights: dict[str, float] | None = None,
    norm: Normalisation = "tokens",
    limits: Limits = Limits(),
    estimate: int = 0,
    quorum: int | None = None,
) -> Outcome:
    """Round 0: everyone answers alone; rounds 1..R-1: everyone answers again, shown the
    previous round's answers of its neighbours. The answer: the last round, combined. A
    member that failed is not asked again; a round everyone failed ends the debate."""
    if rounds < 1:
        raise ValueError("a debate needs at least one round")
    budget = _Budget(limits)
    all_contributions: list[Contribution] = []
    failures: list[Failure] = []
    active = list(members)  # previous[i] is active[i]'s answer
    previous: list[Contribution] = []
    for r in range(rounds):
        current: list[Contribution] = []
        answered: list[Member] = []
        stopped = False
        for i, m in enumerate(active):
            context = ""
            if r > 0 and previous:
                shown = [
                    (previous[j].member, previous[j].choice)
                    for j in neighbours(topology, len(previous), i)
                    if j < len(previous)
                ]
                context = describe_answers(question, shown)
            c = await _ask(m, question, context, r, norm, budget, estimate, quorum)
            if c is None:
                stopped = True
                break
            if isinstance(c, Failure):
                failures.append(c)
                continue
            current.append(c)
            answered.append(m)
        all_contributions += current
        if stopped:
            if current and not previous:
                previous = current
            break
        if not current:
            break
        previous, active = current, answered
    final = previous
    _check_quorum(len(final), quorum, failures)
    if not final:
        raise BudgetError("the budget allows no call to any member")
    probs = combine(final, weights)
    return Outcome(
        f"debate:{topology}", argmax(probs), probs, all_contributions, budget.exceeded, failures
    )


async def mixture(
    proposers: Sequence[Member],
    aggregator: Member,
    question: Question,
    *,
    norm: Normalisation = "tokens",
    limits: Limits = Limits(),
    estimate: int = 0,
    quorum: int | None = None,
) -> Outcome:
    """Proposers answer alone; the aggregator answers shown their proposals. Without the
    aggregator's answer (the budget, or its failure) the proposals are combined."""
    budget = _Budget(limits)
    proposals, failures = await _alone(proposers, question, norm, budget, estimate, quorum)
    context = describe_answers(question, [(p.member, p.choice) for p in proposals])
    final = await _ask(aggregator, question, context, 1, norm, budget, estimate, quorum)
    if isinstance(final, Failure):
        failures.append(final)
        final = None
    _check_quorum(len(proposals) + (final is not None), quorum, failures)
    if final is None:
        if not proposals:
            raise BudgetError("the budget allows no call to any member")
        probs = combine(proposals)
        return Outcome("mixture", argmax(probs), probs, proposals, budget.exceeded, failures)
    return Outcome(
        "mixture",
        final.choice,
        final.probabilities,
        [*proposals, final],
        budget.exceeded,
        failures,
    )
