"""Vertical collaboration: per task, answer with the local model or escalate to a peer.

Every router sits behind one interface. `score` says how much the router wants to
escalate (higher: escalate sooner); `decide` turns that into a `Decision` with its reason
against the router's threshold. The split is what makes routers comparable offline: the
evaluation harness replays `score` over cached model outputs and sweeps the threshold
(consortium/evaluation), and the node calls `decide` per task.

Routers:
- baselines `local`, `always:ORG`, `random:P` (escalate with probability P);
- `heuristic`: rules on the prompt (length, domain keywords, requested format);
- `self`: the local model's own confidence in its draft (mean or minimum token
  log-probability, entropy, or the margin between the top answer choices), with a threshold
  set directly or calibrated to a target escalation rate;
- `learned`: a classifier predicting whether the local answer is adequate, from features
  computed locally (sentence embedding and confidence signals); the model comes from a
  policy artifact (consortium/learning/policy.py), plugged in through `AdequacyModel`;
- `cascade`: answer locally, check the answer, escalate when the check fails.
Which peer to escalate to, among several, is `choose_peer`'s job (capability weighted by
reputation, price, latency), within the task's `Budget`. The node passes only the peers
its trust layer allows; a router whose configured target is quarantined
(`RoutingInput.quarantined`), or that the task may not reach under the node's redaction
policy (`RoutingInput.withheld`), answers locally and says why.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

Signal = Literal["mean_logprob", "min_logprob", "entropy", "margin"]
SIGNALS: tuple[Signal, ...] = ("mean_logprob", "min_logprob", "entropy", "margin")


@dataclass(frozen=True)
class Draft:
    """The local model's attempt, with what it says about its own confidence."""

    text: str = ""
    token_logprobs: tuple[float, ...] = ()
    # Entropy (nats) of the first generated token over its top alternatives.
    first_entropy: float = 0.0
    # For a multiple-choice question: the local model's probability of each option.
    option_probs: tuple[float, ...] = ()

    def signal(self, name: Signal) -> float:
        """A confidence value: higher means more confident, for every signal."""
        if name == "margin":
            if len(self.option_probs) < 2:
                raise ValueError("the margin needs the probabilities of two or more options")
            top = sorted(self.option_probs, reverse=True)
            return top[0] - top[1]
        if name == "entropy":
            if self.option_probs:
                return -_entropy(self.option_probs)
            return -self.first_entropy
        if not self.token_logprobs:
            if self.option_probs:  # a scored answer: the chosen option's log-probability
                return math.log(max(max(self.option_probs), 1e-12))
            raise ValueError(f"signal {name} needs the draft's token log-probabilities")
        if name == "mean_logprob":
            return sum(self.token_logprobs) / len(self.token_logprobs)
        return min(self.token_logprobs)


def _entropy(probs: Sequence[float]) -> float:
    return -sum(p * math.log(p) for p in probs if p > 0)


def top_entropy(top: Sequence[tuple[str, float]]) -> float:
    """Entropy (nats) of a token's top alternatives (token, log-probability), renormalised:
    the `first_entropy` of a draft."""
    ps = [math.exp(lp) for _, lp in top]
    total = sum(ps)
    return _entropy([p / total for p in ps]) if total > 0 else 0.0


@dataclass(frozen=True)
class Peer:
    """A member a task can be escalated to, as the roster describes it."""

    org: str
    models: tuple[str, ...] = ()
    context_size: int = 0
    price_per_1k_tokens: float = 0.0
    typical_latency_ms: float = 0.0
    # Reputation in [0, 1] from the trust layer; 1.0 until it scores peers.
    trust: float = 1.0


@dataclass(frozen=True)
class Budget:
    """Per-task limits; None means no limit."""

    max_cost: float | None = None
    deadline_s: float | None = None
    max_peers: int | None = None

    def admits(self, peer: Peer, tokens: int) -> bool:
        too_dear = (
            self.max_cost is not None and peer.price_per_1k_tokens * tokens / 1000 > self.max_cost
        )
        too_slow = self.deadline_s is not None and peer.typical_latency_ms / 1000 > self.deadline_s
        return not (too_dear or too_slow)


@dataclass(frozen=True)
class RoutingInput:
    prompt: str
    draft: Draft | None = None
    peers: tuple[Peer, ...] = ()
    budget: Budget = field(default_factory=Budget)
    # Features computed locally for learned routers (e.g. a sentence embedding).
    features: Mapping[str, Sequence[float]] = field(default_factory=dict)
    # Members the node's trust layer has quarantined: never a target.
    quarantined: frozenset[str] = frozenset()
    # Members this task may not be sent to (the redaction policy blocks what it holds),
    # with why: never a target, and not among `peers`.
    withheld: Mapping[str, str] = field(default_factory=dict)


# Why a quarantined peer is not asked, as decisions and refusals say it.
QUARANTINED = "quarantined by this node's trust layer"

# Tokens an escalated task is expected to use (prompt and answer): what a peer's price is
# weighed at when a router chooses among peers within the budget.
ESCALATION_TOKENS = 512


@dataclass(frozen=True)
class Decision:
    route: Literal["local", "escalate"]
    target: str  # the peer (or group) escalated to; "" for local
    reason: str
    score: float


class Router(Protocol):
    name: str
    # Whether `score` needs the local model's draft (the node drafts first if so).
    needs_draft: bool

    def score(self, task: RoutingInput) -> float: ...

    def decide(self, task: RoutingInput) -> Decision: ...


class _ThresholdRouter:
    """Escalates when the score exceeds the threshold, to the target or the best peer."""

    name = "router"
    needs_draft = False

    def __init__(self, threshold: float, target: str = "") -> None:
        self.threshold = threshold
        self.target = target

    def score(self, task: RoutingInput) -> float:
        raise NotImplementedError

    def explain(self, task: RoutingInput, score: float) -> str:
        return f"{self.name} score {score:.3f} vs threshold {self.threshold:.3f}"

    def decide(self, task: RoutingInput) -> Decision:
        s = self.score(task)
        reason = self.explain(task, s)
        if s <= self.threshold:
            return Decision("local", "", reason, s)
        if task.budget.max_peers == 0:
            return Decision("local", "", reason + "; the budget allows no peer", s)
        if self.target in task.quarantined:
            return Decision("local", "", f"{reason}; {self.target} is {QUARANTINED}", s)
        if self.target in task.withheld:
            why = task.withheld[self.target]
            return Decision("local", "", f"{reason}; not sent to {self.target}: {why}", s)
        target = self.target or choose_peer(task.peers, task.budget, ESCALATION_TOKENS)
        if not target:
            return Decision("local", "", reason + "; no peer within the budget", s)
        return Decision("escalate", target, reason, s)


class LocalRouter(_ThresholdRouter):
    name = "local"

    def __init__(self) -> None:
        super().__init__(threshold=0.0)

    def score(self, task: RoutingInput) -> float:
        return -math.inf

    def explain(self, task: RoutingInput, score: float) -> str:
        return "local: always answer locally"


class AlwaysRouter(_ThresholdRouter):
    name = "always"

    def __init__(self, target: str) -> None:
        super().__init__(threshold=0.0, target=target)

    def score(self, task: RoutingInput) -> float:
        return math.inf

    def explain(self, task: RoutingInput, score: float) -> str:
        return f"always: escalate to {self.target}"


class RandomRouter(_ThresholdRouter):
    """Escalates a random share `p` of tasks: the baseline every router must beat."""

    name = "random"

    def __init__(self, p: float, target: str = "", seed: int | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError("random:P needs 0 <= P <= 1")
        super().__init__(threshold=1.0 - p, target=target)
        self._rng = random.Random(seed)

    def score(self, task: RoutingInput) -> float:
        return self._rng.random()

    def explain(self, task: RoutingInput, score: float) -> str:
        return f"random: escalates {1 - self.threshold:.0%} of tasks"


DOMAIN_KEYWORDS = (
    "prove",
    "proof",
    "derive",
    "calculate",
    "equation",
    "integral",
    "theorem",
    "legal",
    "contract",
    "diagnos",
    "dosage",
    "regulation",
    "compile",
    "algorithm",
)
FORMAT_PATTERN = re.compile(r"\b(json|yaml|csv|table|code|sql|regex|latex|markdown)\b", re.I)


class HeuristicRouter(_ThresholdRouter):
    """Rules on the prompt: each that fires adds its weight to the score."""

    name = "heuristic"

    def __init__(
        self,
        threshold: float = 0.5,
        target: str = "",
        *,
        long_prompt_chars: int = 600,
        keywords: Sequence[str] = DOMAIN_KEYWORDS,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(threshold, target)
        self.long_prompt_chars = long_prompt_chars
        self.keywords = tuple(k.lower() for k in keywords)
        self.weights = {"length": 0.4, "domain": 0.6, "format": 0.3, **(weights or {})}

    def rules(self, prompt: str) -> list[str]:
        fired = []
        if len(prompt) > self.long_prompt_chars:
            fired.append("length")
        lowered = prompt.lower()
        if any(k in lowered for k in self.keywords):
            fired.append("domain")
        if FORMAT_PATTERN.search(prompt):
            fired.append("format")
        return fired

    def score(self, task: RoutingInput) -> float:
        return sum(self.weights[r] for r in self.rules(task.prompt))

    def explain(self, task: RoutingInput, score: float) -> str:
        fired = self.rules(task.prompt)
        return f"heuristic: {', '.join(fired) or 'no rule'} fired ({score:.2f} vs {self.threshold})"


class SelfRouter(_ThresholdRouter):
    """Self-routing: escalate when the local model's confidence in its draft is low."""

    name = "self"
    needs_draft = True

    def __init__(self, signal: Signal = "margin", threshold: float = 0.0, target: str = "") -> None:
        if signal not in SIGNALS:
            raise ValueError(f"unknown confidence signal {signal!r}; one of {', '.join(SIGNALS)}")
        super().__init__(threshold, target)
        self.signal = signal

    def score(self, task: RoutingInput) -> float:
        if task.draft is None:
            raise ValueError("self-routing needs the local model's draft")
        return -task.draft.signal(self.signal)

    def explain(self, task: RoutingInput, score: float) -> str:
        return f"self: {self.signal} {-score:.3f} (escalate below {-self.threshold:.3f})"

    def calibrate(self, scores: Sequence[float], rate: float) -> float:
        """Sets the threshold so that a share `rate` of these scores escalates."""
        self.threshold = calibrate(scores, rate)
        return self.threshold


def calibrate(scores: Sequence[float], rate: float) -> float:
    """The threshold above which a share `rate` of `scores` lies."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError("an escalation rate is between 0 and 1")
    if not scores:
        raise ValueError("calibration needs scores")
    ordered = sorted(scores, reverse=True)
    k = round(rate * len(ordered))
    if k <= 0:
        return ordered[0]
    if k >= len(ordered):
        return ordered[-1] - 1.0
    return (ordered[k - 1] + ordered[k]) / 2


class AdequacyModel(Protocol):
    """P(the local answer is adequate) from a feature vector (a trained policy)."""

    version: str
    feature_names: tuple[str, ...]

    def adequacy(self, features: Sequence[float]) -> float: ...


class LearnedRouter(_ThresholdRouter):
    """Escalates when the policy thinks the local answer is likely inadequate."""

    name = "learned"

    def __init__(
        self,
        model: AdequacyModel,
        featurize: FeatureFunction,
        threshold: float = 0.5,
        target: str = "",
    ) -> None:
        super().__init__(threshold, target)
        self.model = model
        self.featurize = featurize
        self.needs_draft = featurize.needs_draft

    def score(self, task: RoutingInput) -> float:
        return 1.0 - self.model.adequacy(self.featurize(task))

    def explain(self, task: RoutingInput, score: float) -> str:
        return (
            f"learned (policy {self.model.version}): P(local inadequate) {score:.3f} "
            f"vs {self.threshold:.3f}"
        )


class FeatureFunction(Protocol):
    needs_draft: bool

    def __call__(self, task: RoutingInput) -> Sequence[float]: ...


class CascadeRouter(_ThresholdRouter):
    """Answer locally, check the answer, escalate when the check fails. The check is the
    draft's confidence, or a self-check score the node computed (`features["self_check"]`:
    the local model's probability that its own answer is right)."""

    name = "cascade"
    needs_draft = True

    def __init__(
        self,
        check: Literal["confidence", "self_check"] = "confidence",
        signal: Signal = "margin",
        threshold: float = 0.0,
        target: str = "",
    ) -> None:
        super().__init__(threshold, target)
        self.check = check
        self.signal = signal

    def score(self, task: RoutingInput) -> float:
        if self.check == "self_check":
            value = task.features.get("self_check")
            if not value:
                raise ValueError("the self-check needs the local model's verdict")
            return -float(value[0])
        if task.draft is None:
            raise ValueError("the cascade needs the local model's draft")
        return -task.draft.signal(self.signal)

    def explain(self, task: RoutingInput, score: float) -> str:
        return (
            f"cascade: {self.check} {-score:.3f} "
            f"{'failed' if score > self.threshold else 'passed'} (needs {-self.threshold:.3f})"
        )


def choose_peer(peers: Sequence[Peer], budget: Budget, tokens: int) -> str:
    """The peer to escalate to, of those the budget admits: the most capable weighted by
    reputation (context size times trust), then the most trusted, the cheaper and faster
    first among equals; '' if none. With every trust 1.0 this is the most capable."""
    admitted = [p for p in peers if budget.admits(p, tokens)]
    if not admitted:
        return ""
    best = max(
        admitted,
        key=lambda p: (
            p.context_size * p.trust,
            p.trust,
            -p.price_per_1k_tokens,
            -p.typical_latency_ms,
        ),
    )
    return best.org


def parse_router(spec: str) -> tuple[str, str]:
    """`local`, `always:ORG`, `random:P`, `heuristic`, `self[:SIGNAL]`, `learned`,
    `cascade[:self_check]` -> (kind, argument); raises ValueError naming what is wrong."""
    kind, _, arg = spec.partition(":")
    known = ("local", "always", "random", "heuristic", "self", "learned", "cascade")
    if kind not in known:
        raise ValueError(f"unknown router {spec!r}; one of {', '.join(known)}")
    if kind == "always" and not arg:
        raise ValueError("always:ORG needs the organization to escalate to")
    if kind == "random":
        try:
            p = float(arg)
        except ValueError:
            raise ValueError(f"random:P needs a probability, not {arg!r}") from None
        if not 0 <= p <= 1:
            raise ValueError("random:P needs 0 <= P <= 1")
    if kind == "self" and arg and arg not in SIGNALS:
        raise ValueError(f"unknown confidence signal {arg!r}; one of {', '.join(SIGNALS)}")
    if kind == "cascade" and arg not in ("", "confidence", "self_check"):
        raise ValueError("cascade takes :confidence or :self_check")
    return kind, arg


def parse_node_router(spec: str) -> tuple[str, str]:
    """`parse_router` for a router a node runs: a node scores its draft's confidence but
    computes no self-check score, so `cascade:self_check` would silently fall back to the
    confidence; it is refused instead."""
    kind, arg = parse_router(spec)
    if kind == "cascade" and arg == "self_check":
        raise ValueError(
            "cascade:self_check needs a self-check score, which a node does not compute; "
            "use cascade (the draft's confidence)"
        )
    return kind, arg
