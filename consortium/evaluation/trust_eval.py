"""The simulated part of `consortium bench trust`: federations with honest and Byzantine
members, replayed over cached per-item model outputs.

The Byzantine behaviours here are benchmark scenarios (evaluation code that `consortium
bench` runs), not node behaviour: no node ships them. A peer's answer to a task is its
behaviour applied to the cached option scores of the model it runs on that item:

- honest: the declared model's scores;
- random: a uniformly random option; always_wrong: a wrong option;
- half_wrong: a wrong option on a random half of the tasks, else honest;
- substituted: SmolLM2's scores while declaring (and claiming) Gemma-3-270M;
- turncoat: honest for its first `TURN_AT` tasks, then half_wrong;
- selective: a wrong option only on one topic (`on_topic`: life-science questions);
- colluding: half_wrong, and p3 and `c1` (a member outside the vote) send false trust
  reports every `REPORT_EVERY` tasks: each other at 1.0, every honest member at 0.0;
  the honest reporters (p1, p2 and `h1`, outside the vote) rate the others 0.95 and p3
  0.5, what its half-wrong answers earn. Two colluders of five reporters: a minority.
  The origin folds the latest reports with the REAL fold (trust/reports.py) and hands
  the opinions to its engine, as node/reports.py does.

The evidence is what a node gathers: canary outcomes (kind "canary", judged by
`node.canaries.judge_scores`), protocol evidence per call (`ReputationAssessor.assess`:
a verified reply is good, a timeout bad) and the vote's own cross-checks
(trust/cross_checks.py: p1 and p3 declare the same model, so their answers are compared;
a disagreement raises the scheduler's alarm, and the next call to each carries a
canary). The vote's cross-checks cost no tokens: the answers are there anyway.

The federation: this node (the origin) and three peers, `p1` (gemma3-270m), `p2`
(smollm2-135m) and `p3` (gemma3-270m, the one whose behaviour varies), in a three-member
vote group. Each task goes to every allowed member (the real `vote` of
protocols/collaboration.py, weighted by `reputation_weights` of the members' scores, a
quarantined member dropped); before each call the REAL `CanaryScheduler` may send a
canary from the pool calibrated for the peer's declared model (from the cached items).
The REAL `ReputationAssessor` keeps the reputations in a temporary SQLite file; its clock
advances `STEP_S` seconds per task. Three arms run over the same tasks and draws: the
Byzantine federation with the trust layer, the same without (equal weights, nobody
dropped) and all-honest (p3 honest, equal weights).

The caches hold only ~60 ARC-Easy dev items per model: tasks are drawn from them with
replacement, and the canary pool is the calibrated items cloned (`CLONES` ids per item)
so that the scheduler's 7-day no-repeat window does not run the pool dry; canaries and
tasks are disjoint halves of the cached items. Token overhead counts a canary as an extra
call (the real task still needs its answer) costing the cached item's prompt tokens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from a2a.types import a2a_pb2
from google.protobuf import struct_pb2

from consortium.evaluation.canaries import cached_choices, calibrate, canaries_from_arc
from consortium.evaluation.datasets import Item, load_arc, split_path
from consortium.evaluation.outputs import ItemOutput, load_outputs, outputs_path
from consortium.node.canaries import choice_from_scores, judge_scores
from consortium.protocols.collaboration import Scored, reputation_weights, vote
from consortium.protocols.multiple_choice import OptionScores, Question
from consortium.trust.canaries import CanaryPool, MultipleChoiceCanary
from consortium.trust.canary_schedule import CanaryScheduler, CanarySettings
from consortium.trust.cross_checks import Answer, cross_check
from consortium.trust.reports import ReportEntry, ReportSettings, TrustReport, fold
from consortium.trust.reputation import Verdict
from consortium.trust.reputation_engine import ReputationAssessor, ReputationSettings
from consortium.trust.reputation_store import ReputationStore

GEMMA, SMOLLM = "gemma3-270m", "smollm2-135m"
PEERS: dict[str, str] = {"p1": GEMMA, "p2": SMOLLM, "p3": GEMMA}  # peer -> declared model
TARGET = "p3"
TURN_AT = 200
STEP_S = 60.0  # simulated seconds per task
CLONES = 40
REPORT_EVERY = 10  # tasks between two rounds of members' trust reports (600 s)
REPORTERS_OUTSIDE = ("c1", "h1")  # members outside the vote: a colluder, an honest one
COLLUDERS = ("p3", "c1")
TOPIC_WORDS = ("plant", "animal", "cell", "organism", "species", "body", "seed", "food")


def on_topic(item: Item) -> bool:
    """The selective peer's topic: life-science questions (by keyword)."""
    text = item.question.stem.lower()
    return any(w in text for w in TOPIC_WORDS)


@dataclass(frozen=True)
class Ask:
    """What a behaviour sees: the item, the declared model, every model's cached outputs,
    how many tasks the peer has had before this one, and the run's generator."""

    item: Item
    model: str
    outputs: Mapping[str, Mapping[str, ItemOutput]]
    n: int
    rng: random.Random


Behaviour = Callable[[Ask], OptionScores]


def picked(choice: int, k: int) -> OptionScores:
    """Scores putting (almost) all the probability on `choice`: a confident liar."""
    lps = tuple(-0.05 if i == choice else -6.0 for i in range(k))
    return OptionScores(logprobs=lps, tokens=(1,) * k, chars=(1,) * k)


def _wrong(a: Ask) -> OptionScores:
    k = len(a.item.question.choices)
    return picked(a.rng.choice([i for i in range(k) if i != a.item.answer]), k)


def honest(a: Ask) -> OptionScores:
    return a.outputs[a.model][a.item.id].scores


def random_answers(a: Ask) -> OptionScores:
    k = len(a.item.question.choices)
    return picked(a.rng.randrange(k), k)


def always_wrong(a: Ask) -> OptionScores:
    return _wrong(a)


def half_wrong(a: Ask) -> OptionScores:
    return _wrong(a) if a.rng.random() < 0.5 else honest(a)


def substituted(a: Ask) -> OptionScores:
    return a.outputs[SMOLLM if a.model == GEMMA else GEMMA][a.item.id].scores


def turncoat(a: Ask) -> OptionScores:
    return honest(a) if a.n < TURN_AT else half_wrong(a)


def selective(a: Ask) -> OptionScores:
    return _wrong(a) if on_topic(a.item) else honest(a)


BEHAVIOURS: dict[str, Behaviour] = {
    "honest": honest,
    "random": random_answers,
    "always_wrong": always_wrong,
    "half_wrong": half_wrong,
    "substituted": substituted,
    "turncoat": turncoat,
    "selective": selective,
    "colluding": half_wrong,
}
BAD_FROM = {"turncoat": TURN_AT}  # the task (sent to the peer) its misbehaviour starts at


@dataclass(frozen=True)
class Replay:
    """The cached items both models have: tasks and (cloned) canaries."""

    tasks: list[Item]
    canaries: list[Item]
    outputs: dict[str, dict[str, ItemOutput]]
    pool: CanaryPool
    base: dict[str, str]  # canary id -> ARC item id


def replay_data(items: Sequence[Item], outputs: Mapping[str, Mapping[str, ItemOutput]]) -> Replay:
    """Splits the items cached for both models into task items (even positions) and
    canary items (odd), and calibrates the canaries for both models from the caches."""
    both = [it for it in items if all(it.id in outputs[m] for m in (GEMMA, SMOLLM))]
    if len(both) < 4:
        raise ValueError("fewer than 4 items are cached for both models")
    tasks, canary_items = both[0::2], both[1::2]
    pool: list[Any] = canaries_from_arc(canary_items)
    for model in (GEMMA, SMOLLM):
        pool, _ = calibrate(pool, model, choose=cached_choices(dict(outputs[model])))
    clones: list[MultipleChoiceCanary] = []
    base: dict[str, str] = {}
    for c in pool:
        for k in range(CLONES):
            clone = c.model_copy(update={"id": f"{c.id}#{k}"})
            clones.append(clone)
            base[clone.id] = c.id
    by_model = {m: dict(o) for m, o in outputs.items()}
    return Replay(tasks, canary_items, by_model, CanaryPool(tuple(clones)), base)


def cached_replay(split: str = "arc_easy_dev", cache: Path | None = None) -> Replay:
    """The replay data from what the evaluation caches hold (nothing is computed)."""
    items = load_arc(split_path(split))
    outputs = {m: load_outputs(outputs_path(split, m, cache)) for m in (GEMMA, SMOLLM)}
    return replay_data(items, outputs)


@contextmanager
def quiet_engine() -> Iterator[None]:
    """Thousands of simulated quarantines are not worth a warning line each."""
    engine = logging.getLogger("consortium.trust.reputation_engine")
    level = engine.level
    engine.setLevel(logging.ERROR)
    try:
        yield
    finally:
        engine.setLevel(level)


@dataclass
class _Member:
    """A vote member whose answer to the current task is already drawn."""

    name: str
    scores: OptionScores
    tokens: int
    price_per_1k: float = 0.0

    async def score(self, question: Question, context: str) -> Scored:
        return Scored(self.scores, self.tokens)


@dataclass
class RunResult:
    """One run (one behaviour of p3, one seed)."""

    quarantined_after: int | None  # tasks sent to p3 since it turned bad, at quarantine
    honest_quarantines: int
    correct: dict[str, int] = field(default_factory=lambda: {"trust": 0, "none": 0, "honest": 0})
    task_tokens: int = 0
    canary_tokens: int = 0
    canaries: int = 0
    tasks: int = 0


def _reply(model: str) -> a2a_pb2.Message:
    meta = struct_pb2.Struct()
    meta.update({"consortium": {"model": model}})
    return a2a_pb2.Message(metadata=meta)


class _Federation:
    """The origin's trust layer over the three peers in one run."""

    def __init__(
        self,
        data: Replay,
        behaviour: Behaviour,
        rng: random.Random,
        settings: ReputationSettings,
        canary: CanarySettings,
        timeout_rate: float,
        db: Path,
        reports: bool = False,
    ) -> None:
        self.data, self.behaviour, self.rng = data, behaviour, rng
        self.now = 0.0
        members = [*PEERS, *REPORTERS_OUTSIDE] if reports else list(PEERS)
        self.assessor = ReputationAssessor(
            ReputationStore(db), settings, clock=lambda: self.now, members=members
        )
        self.reports = reports
        self.scheduler = CanaryScheduler(data.pool, canary, random.Random(rng.random()))
        self.timeout_rate = timeout_rate
        self.sent = dict.fromkeys(PEERS, 0)
        self.request = a2a_pb2.Message()

    def fold_reports(self) -> None:
        """The members' latest reports folded into opinions, handed to the engine."""
        members = [*PEERS, *REPORTERS_OUTSIDE]
        reports = {}
        for reporter in members:
            entries = []
            for subject in members:
                if subject == reporter:
                    continue
                if reporter in COLLUDERS:
                    score = 1.0 if subject in COLLUDERS else 0.0
                else:
                    score = 0.5 if subject == TARGET else 0.95
                entries.append(ReportEntry(org=subject, score=score, evidence=20))
            reports[reporter] = TrustReport(
                v=1, reporter=reporter, issued_at=self.now, entries=entries
            )
        trust = {m: self.assessor.standing(m).score for m in members}
        settings = ReportSettings()
        folded = fold(me="origin", trust=trust, founders=(), reports=reports, now=self.now)
        self.assessor.set_opinions(
            {p: o.pseudo_counts(settings.report_weight) for p, o in folded.opinions.items()}
        )

    def answer(self, peer: str, item: Item) -> OptionScores:
        fn = self.behaviour if peer == TARGET else honest
        return fn(Ask(item, PEERS[peer], self.data.outputs, self.sent[peer], self.rng))

    def canary(self, peer: str, result: RunResult) -> None:
        """The scheduler's canary before a call, if any: answered, judged, recorded."""
        model = PEERS[peer]
        drawn = self.scheduler.instead_of_call(peer, model, self.now)
        if not isinstance(drawn, MultipleChoiceCanary):
            return
        item_id = self.data.base[drawn.id]
        item = next(it for it in self.data.canaries if it.id == item_id)
        scores = self.answer(peer, item)
        self.assessor.assess(Verdict(peer, self.request, _reply(model)))
        self.assessor.record(judge_scores(peer, drawn, scores, model))
        result.canaries += 1
        result.canary_tokens += self.data.outputs[model][item_id].prompt_tokens

    def call(self, peer: str, item: Item) -> OptionScores | None:
        """A real call: its answer, or None on a timeout; protocol evidence either way."""
        scores = self.answer(peer, item)
        self.sent[peer] += 1
        if self.rng.random() < self.timeout_rate:
            self.assessor.assess(Verdict(peer, self.request, None, failure="timeout"))
            return None
        self.assessor.assess(Verdict(peer, self.request, _reply(PEERS[peer])))
        return scores


async def _correct(members: list[_Member], item: Item, weights: dict[str, float] | None) -> int:
    if not members or (weights is not None and sum(weights.values()) <= 0):
        return 0
    outcome = await vote(members, item.question, weights=weights)
    return int(outcome.choice == item.answer)


async def _task(fed: _Federation, item: Item, result: RunResult) -> None:
    allowed = {p: fed.assessor.standing(p) for p in PEERS}
    answers: dict[str, OptionScores | None] = {}
    for peer in PEERS:
        if not allowed[peer].allowed:
            answers[peer] = fed.answer(peer, item)  # drawn (same draws), not sent
            continue
        fed.canary(peer, result)
        answers[peer] = fed.call(peer, item)
    honest_p3 = honest(Ask(item, PEERS[TARGET], fed.data.outputs, 0, fed.rng))
    tokens = {p: fed.data.outputs[m][item.id].prompt_tokens for p, m in PEERS.items()}
    result.task_tokens += sum(tokens[p] for p in PEERS if allowed[p].allowed)
    up = {p: s for p, s in answers.items() if s is not None}
    every = [_Member(p, s, tokens[p]) for p, s in up.items()]
    trusted = [m for m in every if allowed[m.name].allowed]
    scores = {p: allowed[p].score for p in PEERS}
    routing = {p: allowed[p].routing_weight for p in PEERS}
    # The vote's answers are cross-checks of each other (same declared model only).
    compared = [Answer(m.name, PEERS[m.name], choice_from_scores(m.scores)) for m in trusted]
    for judged in cross_check(compared, scores):
        for evidence in judged.evidence:
            fed.assessor.record(evidence)
        if judged.verdict == "disagreed" and judged.reference == "peers":
            fed.scheduler.alarm(judged.peer)
    weights = reputation_weights([m.name for m in trusted], None, routing)
    result.correct["trust"] += await _correct(trusted, item, weights)
    result.correct["none"] += await _correct(every, item, None)
    all_honest = [replace(m, scores=honest_p3) if m.name == TARGET else m for m in every]
    result.correct["honest"] += await _correct(all_honest, item, None)
    result.tasks += 1


def _quarantines(assessor: ReputationAssessor) -> dict[str, int]:
    return {r.peer: r.offences for r in assessor.reputations() if not r.model}


async def _run(fed: _Federation, tasks: int, bad_from: int) -> RunResult:
    result = RunResult(None, 0)
    for n in range(tasks):
        fed.now += STEP_S
        if fed.reports and n % REPORT_EVERY == 0:
            fed.fold_reports()
        await _task(fed, fed.rng.choice(fed.data.tasks), result)
        if result.quarantined_after is None and fed.assessor.standing(TARGET).state == (
            "quarantined"
        ):
            result.quarantined_after = max(fed.sent[TARGET] - bad_from, 0)
    return result


def simulate(
    data: Replay,
    behaviour: str,
    seed: int,
    tasks: int,
    *,
    settings: ReputationSettings | None = None,
    canary: CanarySettings | None = None,
    timeout_rate: float = 0.02,
) -> RunResult:
    """One run: p3 behaving as `behaviour`, `tasks` tasks, deterministic per seed."""
    rng = random.Random(f"{behaviour}/{seed}")
    with tempfile.TemporaryDirectory(prefix="consortium-benchtrust-") as tmp:
        fed = _Federation(
            data,
            BEHAVIOURS[behaviour],
            rng,
            settings or ReputationSettings(),
            canary or CanarySettings(),
            timeout_rate,
            Path(tmp) / "trust.sqlite3",
            reports=behaviour == "colluding",
        )
        try:
            result = asyncio.run(_run(fed, tasks, BAD_FROM.get(behaviour, 0)))
            offences = _quarantines(fed.assessor)
        finally:
            fed.assessor.close()
    honest_peers = [p for p in PEERS if p != TARGET or behaviour == "honest"]
    result.honest_quarantines = sum(offences.get(p, 0) for p in honest_peers)
    return result


def _quantile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (nearest rank); None when it falls on a run that never quarantined."""
    ranked = sorted(values)
    value = ranked[min(len(ranked) - 1, max(0, math.ceil(q * len(ranked)) - 1))]
    return None if value == float("inf") else value


def _behaviour_figures(runs: Sequence[RunResult]) -> dict[str, Any]:
    after = [float("inf") if r.quarantined_after is None else r.quarantined_after for r in runs]
    acc = {
        arm: round(100 * sum(r.correct[arm] for r in runs) / sum(r.tasks for r in runs), 2)
        for arm in ("trust", "none", "honest")
    }
    return {
        "honest_peer_quarantines": sum(r.honest_quarantines for r in runs),
        "quarantined_share": round(sum(a != float("inf") for a in after) / len(runs), 3),
        "tasks_to_quarantine_median": _quantile(after, 0.5),
        "tasks_to_quarantine_p95": _quantile(after, 0.95),
        "vote_accuracy_with_trust": acc["trust"],
        "vote_accuracy_without_trust": acc["none"],
        "vote_accuracy_all_honest": acc["honest"],
        "trust_minus_all_honest_points": round(acc["trust"] - acc["honest"], 2),
    }


def _within(value: float | None, limit: float) -> bool:
    return value is not None and value <= limit


def _targets(figures: dict[str, Any], false_rate: float, overhead: float) -> dict[str, Any]:
    byzantine = [b for b in BEHAVIOURS if b != "honest"]
    worst = min(figures[b]["trust_minus_all_honest_points"] for b in byzantine)
    sub = figures["substituted"]
    return {
        "half_wrong_p95_within_40": _within(figures["half_wrong"]["tasks_to_quarantine_p95"], 40),
        "turncoat_p95_within_60": _within(figures["turncoat"]["tasks_to_quarantine_p95"], 60),
        "substitution_detected": sub["quarantined_share"] == 1.0,
        "substitution_tasks_median": sub["tasks_to_quarantine_median"],
        "false_quarantine_at_most_1pct": false_rate <= 0.01,
        "vote_within_1_point_of_all_honest": worst >= -1.0,
        "vote_worst_points": worst,
        "canary_overhead_at_most_10pct": overhead <= 0.10,
        "colluding_minority_quarantines_no_honest_peer": figures["colluding"][
            "honest_peer_quarantines"
        ]
        == 0,
        "colluding_minority_does_not_shield_its_member": figures["colluding"]["quarantined_share"]
        == 1.0,
    }


def evaluate_trust(
    data: Replay,
    *,
    tasks: int = 5000,
    seeds: int = 20,
    settings: ReputationSettings | None = None,
    canary: CanarySettings | None = None,
    timeout_rate: float = 0.02,
    behaviours: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Every behaviour over `seeds` seeds of `tasks` tasks: the figures, as a dict."""
    names = list(behaviours or BEHAVIOURS)
    with quiet_engine():
        runs = {
            b: [
                simulate(
                    data, b, s, tasks, settings=settings, canary=canary, timeout_rate=timeout_rate
                )
                for s in range(seeds)
            ]
            for b in names
        }
    figures = {b: _behaviour_figures(r) for b, r in runs.items()}
    every = [r for rs in runs.values() for r in rs]
    honest_peer_tasks = sum(
        r.tasks * (len(PEERS) if b == "honest" else len(PEERS) - 1)
        for b, rs in runs.items()
        for r in rs
    )
    false_rate = 5000 * sum(r.honest_quarantines for r in every) / max(honest_peer_tasks, 1)
    overhead = sum(r.canary_tokens for r in every) / max(sum(r.task_tokens for r in every), 1)
    result: dict[str, Any] = {
        **figures,
        "_summary": {
            "false_quarantines_per_honest_peer_per_5000_tasks": round(false_rate, 4),
            "canary_token_overhead": round(overhead, 4),
            "canaries_per_task_per_peer": round(
                sum(r.canaries for r in every) / max(sum(r.tasks for r in every) * len(PEERS), 1),
                4,
            ),
            # The vote's answers cross-check each other: no call is added for them.
            "cross_check_token_overhead": 0.0,
        },
        "_setup": {
            "tasks": tasks,
            "seeds": seeds,
            "task_items": len(data.tasks),
            "canary_items": len(data.canaries),
            "canaries_calibrated": {
                m: len(data.pool.for_model(m)) // CLONES for m in (GEMMA, SMOLLM)
            },
            "resampled_with_replacement": True,
            "step_s": STEP_S,
            "timeout_rate": timeout_rate,
            "reputation": {
                k: sorted(v) if isinstance(v, frozenset) else v
                for k, v in dataclasses.asdict(settings or ReputationSettings()).items()
            },
            "canary": dataclasses.asdict(canary or CanarySettings()),
            "not_simulated": [
                "sampled escalation cross-checks (a vote needs none)",
                "real node processes (the live run)",
            ],
        },
    }
    if set(names) == set(BEHAVIOURS):
        result["_targets"] = _targets(figures, false_rate, overhead)
    return result
