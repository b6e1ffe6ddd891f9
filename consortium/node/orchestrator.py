"""Routing and collaboration on a node: who answers a task, and with whom.

For a multiple-choice task (metadata `consortium.choices`) the local model scores the
options first (its draft), the configured router (protocols/routing.py) decides from it,
and the answer comes from the local model, one peer (a signed scoring request), or a
group running a horizontal protocol (protocols/collaboration.py), whose members are this
node's own model ("self") and peers. Free-text tasks are routed the same way between the
local model and one peer; groups answer multiple-choice tasks only. Every answer carries
its provenance: route, router and reason, members with tokens and cost, confidence,
latency, and each contributing peer's reputation and the verdicts on its replies.

Routing reads the trust layer's standings from the node's one `Assessor` (the one the
exchange in peers.py reports to): a quarantined peer is never a candidate nor a router's
target (the router answers locally and says why), and a group runs without its
quarantined members, each remaining member's vote weighted by its reputation. A group left
with fewer than `min_members` (or without its mixture aggregator) answers with the local
model or refuses the task, as its `on_short` says.

Answers are cross-checked where they should agree (trust/cross_checks.py): a group's
first-round answers against each other, an escalated answer against the local draft when
the local model is the model the peer says answered, and a sampled share
(`[trust] cross_check_rate`) of the other escalations against a second member serving
the same declared model, asked at the same time. The verdicts go into the answer's
provenance and the evidence to the assessor; a disagreement between two peers raises
the alarm (`alarm`: the next call to each carries a canary), since only a known answer
can tell which of the two is wrong.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import exc as sa_exc

from consortium.errors import BudgetError, ConfigError, RequestRejected, StorageUnavailable
from consortium.learning.records import RoutingDataError, RoutingRecord, RoutingRecords
from consortium.llm.base import Capability, ChatMessage, GenerationParams, ModelInfo, TokenLogprob
from consortium.llm.worker import GenerationRequest, ModelWorker
from consortium.logsafe import safe
from consortium.node.config import GroupSection, RoutingSection
from consortium.node.option_scoring import score_options
from consortium.node.peers import RETRYABLE_FAILURES, PeerClient, PeerError, PeerScores
from consortium.protocols.collaboration import (
    Failure,
    Limits,
    Member,
    Outcome,
    Scored,
    debate,
    mixture,
    reputation_weights,
    vote,
)
from consortium.protocols.multiple_choice import (
    OptionScores,
    Question,
    argmax,
    extract_choice,
    generative_prompt,
    routing_text,
    scoring_prompt,
)
from consortium.protocols.provenance import (
    BudgetLimits,
    Contribution,
    MemberUsage,
    PeerVerdict,
    Provenance,
    RoutingDecision,
)
from consortium.protocols.request_options import RequestOptions
from consortium.protocols.routing import (
    ESCALATION_TOKENS,
    QUARANTINED,
    AlwaysRouter,
    Budget,
    CascadeRouter,
    Decision,
    Draft,
    HeuristicRouter,
    LearnedRouter,
    LocalRouter,
    Peer,
    RandomRouter,
    Router,
    RoutingInput,
    SelfRouter,
    Signal,
    choose_peer,
    parse_node_router,
    top_entropy,
)
from consortium.protocols.routing_features import DRAFT_NORMALISATION, feature_names, features
from consortium.trust.audit import AuditLog, NoOpAuditLog
from consortium.trust.cross_checks import Answer, CrossCheck, cross_check
from consortium.trust.reputation import Assessor, Evidence, NoOpAssessor
from consortium.trust.reputation_engine import ReputationAssessor

log = logging.getLogger(__name__)
DRAFT = GenerationParams(max_tokens=4, temperature=0.0, logprobs=True, top_logprobs=5)


class LocalMember:
    """This node's own model as a collaboration member."""

    def __init__(self, name: str, worker: ModelWorker, price_per_1k: float = 0.0) -> None:
        self.name = name
        self._worker = worker
        self.price_per_1k = price_per_1k

    async def score(self, question: Question, context: str) -> Scored:
        scores: OptionScores = await self._worker.call(
            lambda b: score_options(b, question, context)
        )
        prompt_tokens = await self._worker.count_tokens(scoring_prompt(question, context))
        tokens = prompt_tokens + sum(scores.tokens)
        return Scored(scores, tokens, tokens * self.price_per_1k / 1000)


class PeerLedger:
    """What one task learned of the peers it asked, for its provenance: each contributing
    peer's reputation when it was chosen (given when a group chose it; otherwise read as
    it was asked) and the verdicts on its replies."""

    def __init__(self, chosen: Mapping[str, float] | None = None) -> None:
        self.chosen = dict(chosen or {})
        self.reputation: dict[str, float] = {}
        self.verdicts: dict[str, PeerVerdict] = {}
        self.models: dict[str, str] = {}  # the model each peer's first reply says answered

    def heard(self, scores: PeerScores) -> None:
        org = scores.org
        self.reputation.setdefault(org, round(self.chosen.get(org, scores.reputation), 4))
        self.models.setdefault(org, scores.model)
        before = self.verdicts.get(org)
        claim = (before.claim if before is not None else None) or scores.claim or None
        canary = before.canary if before is not None else scores.canary
        self.verdicts[org] = PeerVerdict(claim=claim, canary=canary)

    def cross_checked(self, org: str, verdict: CrossCheck) -> None:
        before = self.verdicts.get(org, PeerVerdict())
        self.verdicts[org] = before.model_copy(update={"cross_check": verdict})

    def provenance(self) -> dict[str, Any]:
        """The provenance fields: none when no peer contributed."""
        if not self.verdicts:
            return {}
        return {"reputation": self.reputation, "verdicts": self.verdicts}


class PeerMember:
    """A peer as a collaboration member: signed scoring requests, verified replies."""

    def __init__(
        self,
        org: str,
        peers: PeerClient,
        price_per_1k: float = 0.0,
        ledger: PeerLedger | None = None,
    ) -> None:
        self.name = org
        self._peers = peers
        self.price_per_1k = price_per_1k
        self._ledger = ledger if ledger is not None else PeerLedger()

    async def score(self, question: Question, context: str) -> Scored:
        answer = await self._peers.score(self.name, question, context)
        self._ledger.heard(answer)
        return Scored(answer.scores, answer.tokens, answer.tokens * self.price_per_1k / 1000)


@dataclass(frozen=True)
class GroupRound:
    """A group's members for one task, as the trust layer leaves them: those allowed (in
    the configured order, "self" as this node's org id), each peer's reputation, the
    quarantined ones dropped, and why the group cannot run as configured ("" if it can)."""

    names: list[str]
    aggregator: str
    reputation: dict[str, float]
    dropped: list[str] = field(default_factory=list)
    short: str = ""
    weights: dict[str, float] = field(default_factory=dict)  # routing weights, by peer


@dataclass(frozen=True)
class Routed:
    choice: int
    probabilities: tuple[float, ...]
    provenance: Provenance


class Orchestrator:
    def __init__(
        self,
        *,
        org_id: str,
        worker: ModelWorker,
        routing: RoutingSection,
        groups: dict[str, GroupSection],
        peers: PeerClient | None = None,
        learned: Callable[[], LearnedRouter] | None = None,
        embed: Callable[[str], Awaitable[list[float]]] | None = None,
        records: RoutingRecords | None = None,
        assessor: Assessor | None = None,
        cross_check_rate: float = 0.0,
        alarm: Callable[[str], None] | None = None,
        rng: random.Random | None = None,
        audit: AuditLog | None = None,
        failover_peers: int = 2,
    ) -> None:
        self.org_id = org_id
        self._failover_peers = failover_peers
        # Told of every routing decision with its reason (trust.audit).
        self._audit: AuditLog = audit or NoOpAuditLog()
        self._cross_check_rate = cross_check_rate
        self._alarm = alarm
        self._rng = rng or random.Random()
        # The node's one assessor (by default the exchange's): standings and reputations.
        if assessor is None:
            assessor = peers.assessor if peers is not None else NoOpAssessor()
        self._assessor: Assessor = assessor
        self._worker = worker
        self._routing = routing
        self._groups = groups
        self._peers = peers
        self._learned = learned
        self._embed = embed
        self.records = records

    # -- routers ---------------------------------------------------------------------

    def router(self, spec: str | None) -> Router:
        spec = spec or self._routing.router
        try:
            kind, arg = parse_node_router(spec)
        except ValueError as e:
            raise RequestRejected(str(e)) from None
        threshold, target = self._routing.threshold, self._routing.target
        if kind == "local":
            return LocalRouter()
        if kind == "always":
            return AlwaysRouter(arg)
        if kind == "random":
            return RandomRouter(float(arg), target=target)
        if kind == "heuristic":
            return HeuristicRouter(threshold, target)
        if kind == "self":
            signal: Signal = arg or "margin"  # type: ignore[assignment]
            return SelfRouter(signal, threshold, target)
        if kind == "cascade":
            return CascadeRouter("confidence", "margin", threshold, target)
        if self._learned is None:
            raise RequestRejected("the learned router needs [routing] policy in node.toml")
        return self._learned()

    def peers(self) -> tuple[Peer, ...]:
        return self._peers.candidates() if self._peers is not None else ()

    def budget(self, options: RequestOptions) -> Budget:
        r = self._routing
        return Budget(
            max_cost=options.max_cost if options.max_cost is not None else r.max_cost,
            deadline_s=options.deadline_s if options.deadline_s is not None else r.deadline_s,
            max_peers=options.max_peers if options.max_peers is not None else r.max_peers,
        )

    def _price(self, org: str) -> float:
        for p in self.peers():
            if p.org == org:
                return p.price_per_1k_tokens
        return 0.0

    def member(self, name: str, ledger: PeerLedger | None = None) -> Member:
        if name in ("self", self.org_id):
            return LocalMember(self.org_id, self._worker)
        if self._peers is None:
            raise RequestRejected(f"member {name} is a peer, and this node is not in a federation")
        return PeerMember(name, self._peers, self._price(name), ledger)

    def quarantined(self) -> frozenset[str]:
        return self._peers.quarantined() if self._peers is not None else frozenset()

    # -- free text -------------------------------------------------------------------

    def routes_text(self) -> bool:
        return self._routing.router != "local"

    async def route_text(self, question: str, options: RequestOptions) -> Decision:
        """Local or one peer, for a free-text task (the answer itself is generated by the
        caller, locally or by the peer). Routers that need a draft get a short one."""
        spec = options.route or self._routing.router
        if spec in self._groups:
            raise RequestRejected(
                f"group {spec} answers multiple-choice tasks: send the options in "
                "metadata.consortium.choices"
            )
        router = self.router(spec)
        draft: Draft | None = None
        task_features: dict[str, list[float]] = {}
        if router.needs_draft:
            params = GenerationParams(max_tokens=16, logprobs=True, top_logprobs=5)
            request = (
                GenerationRequest(params=params, messages=(ChatMessage("user", question),))
                if self._worker.info.chat
                else GenerationRequest(params=params, prompt=f"Question: {question}\nAnswer:")
            )
            completion = await self._worker.generate(request).collect()
            draft = Draft(
                text=completion.text,
                token_logprobs=tuple(t.logprob for t in completion.logprobs),
                first_entropy=_first_entropy(completion.logprobs),
            )
            if isinstance(router, LearnedRouter):
                if self._embed is None:
                    raise RequestRejected("the learned router needs the sentence encoder")
                task_features = {
                    "embedding": await self._embed(question),
                    "generated_choice": [-1.0],
                }
        withheld = await self.withheld([question], [p.org for p in self.peers()])
        return self._decide(router, question, draft, options, task_features, withheld)

    async def withheld(self, texts: Sequence[str], orgs: Sequence[str]) -> dict[str, str]:
        """The members of `orgs` that a message holding `texts` may not be sent to under
        the node's redaction policy, with why ({} when the policy blocks nothing)."""
        if self._peers is None or not self._peers.redactor.may_block:
            return {}
        out: dict[str, str] = {}
        for org in orgs:
            if org == self.org_id:
                continue
            types = await self._peers.redactor.blocks(org, texts)
            if types:
                out[org] = f"the redaction policy blocks {', '.join(types)}"
        return out

    def _decide(
        self,
        router: Router,
        prompt: str,
        draft: Draft | None,
        options: RequestOptions,
        task_features: dict[str, list[float]],
        withheld: Mapping[str, str] | None = None,
    ) -> Decision:
        withheld = withheld or {}
        try:
            decision = router.decide(
                RoutingInput(
                    prompt=prompt,
                    draft=draft,
                    peers=tuple(p for p in self.peers() if p.org not in withheld),
                    budget=self.budget(options),
                    features=task_features,
                    quarantined=self.quarantined(),
                    withheld=withheld,
                )
            )
        except ValueError as e:
            raise RequestRejected(f"router {router.name}: {e}") from None
        self.record_decision(router.name, decision)
        return decision

    async def retry(
        self,
        tried: Sequence[str],
        failure: str,
        texts: Sequence[str],
        options: RequestOptions,
        elapsed_s: float,
        decision: Decision | None,
    ) -> Decision | None:
        """Where an escalation goes after the peer it was sent to (`tried[-1]`; every
        peer asked so far, in order, in `tried`) failed with `failure` before any of its
        answer was shown: the same peer once more on a new connection when its
        connection failed and its circuit is still closed (a reset of one connection),
        otherwise, when a router chose the peer (`decision`; a peer the request named is
        not replaced), the next capable peer of those allowed, not tried, within the
        budget and that the task may be sent to, at most `failover_peers` of them. None:
        the task fails (a failure that is not RETRYABLE_FAILURES, the task's deadline
        passed, no peer left). Every failover is a routing decision in the audit log."""
        if failure not in RETRYABLE_FAILURES or self._peers is None or not tried:
            return None
        budget = self.budget(options)
        if budget.deadline_s is not None and elapsed_s >= budget.deadline_s:
            return None
        last = tried[-1]
        why = f"{last} did not answer ({failure})"
        if failure == "unreachable" and tried.count(last) == 1 and self._peers.available(last):
            if decision is None:
                return Decision("escalate", last, f"{why}; asked again", 0.0)
            return Decision(
                "escalate", last, f"{decision.reason}; {why}; asked again", decision.score
            )
        if decision is None or len(set(tried)) > self._failover_peers:
            return None
        left = [p for p in self.peers() if p.org not in tried]
        withheld = await self.withheld(texts, [p.org for p in left])
        target = choose_peer([p for p in left if p.org not in withheld], budget, ESCALATION_TOKENS)
        if not target:
            return None
        failover = Decision(
            "escalate", target, f"{decision.reason}; {why}: failover", decision.score
        )
        self.record_decision("failover", failover)
        return failover

    def record_decision(self, router: str, decision: Decision) -> None:
        """Every routing decision goes to the audit log with its reason."""
        self._audit.record(
            "route",
            peer=decision.target,
            detail={
                "router": router,
                "route": decision.route,
                "reason": decision.reason,
                "score": decision.score,
            },
        )

    # -- multiple choice --------------------------------------------------------------

    async def answer_choice(
        self, question: Question, options: RequestOptions, *, task_id: str = "", owner: str = ""
    ) -> Routed:
        """The routed answer; with `task_id`, and recording on, also its routing record."""
        record = _RecordDraft(task_id, owner) if task_id and self._recording() else None
        routed = await self._answer_choice(question, options, record)
        routed = self.with_budget(routed, options)
        if record is not None and record.features is not None:
            records = self.records
            if records is not None and records.remote:  # PostgreSQL: off the event loop
                await records.db.run(lambda: self._record(record, routed))
            else:
                self._record(record, routed)
        return routed

    def _recording(self) -> bool:
        return self.records is not None and self._routing.record and self._embed is not None

    async def _answer_choice(
        self, question: Question, options: RequestOptions, record: _RecordDraft | None = None
    ) -> Routed:
        started = time.perf_counter()
        spec = options.route or self._routing.router
        if spec in self._groups:
            return await self._group_answer(spec, question, options, started)
        router = self.router(spec)
        local = LocalMember(self.org_id, self._worker)
        draft_scores = await local.score(question, "")
        probs = tuple(draft_scores.scores.probabilities(DRAFT_NORMALISATION))
        draft = Draft(option_probs=probs)
        task_features: dict[str, list[float]] = {}
        if isinstance(router, LearnedRouter):
            draft, task_features = await self._learned_inputs(question, probs)
        if record is not None and not isinstance(router, LocalRouter):
            rec_draft, rec_inputs = (
                (draft, task_features)
                if task_features
                else await self._learned_inputs(question, probs)
            )
            choice = int(rec_inputs["generated_choice"][0])
            record.router = router.name
            record.local_choice = argmax(probs)
            record.features = features(
                routing_text(question),
                rec_draft,
                rec_inputs["embedding"],
                None if choice < 0 else choice,
            )
        texts = [question.stem, *question.choices]
        withheld = await self.withheld(texts, [p.org for p in self.peers()])
        decision = self._decide(
            router, routing_text(question), draft, options, task_features, withheld
        )
        local_row = {self.org_id: MemberUsage(tokens=draft_scores.tokens, cost=0.0, calls=1)}
        if decision.route == "local":
            return Routed(
                argmax(probs),
                probs,
                self._provenance("local", router.name, decision, local_row, max(probs), started),
            )
        if decision.target in self._groups:
            routed = await self._group_answer(
                decision.target, question, options, started, decision, router.name, draft_scores
            )
            members = routed.provenance.members or {}
            if self.org_id in members:
                return routed
            provenance = routed.provenance.model_copy(update={"members": members | local_row})
            return Routed(routed.choice, routed.probabilities, provenance)
        return await self._escalate(
            question, decision, router.name, local_row, started, argmax(probs), withheld, options
        )

    async def _escalate(
        self,
        question: Question,
        decision: Decision,
        router: str,
        local_row: dict[str, MemberUsage],
        started: float,
        draft_choice: int,
        withheld: Mapping[str, str],
        options: RequestOptions,
    ) -> Routed:
        """The peer the router chose answers (after the local draft in `local_row`); a
        sampled share of escalations also asks a second member serving the same model,
        concurrently, for a cross-check. A peer that cannot be reached is replaced as
        `retry` says (the provenance names the peer that answered)."""
        ledger = PeerLedger()
        tried: list[str] = []
        while True:
            target = decision.target
            tried.append(target)
            peer = PeerMember(target, self._require_peers(), self._price(target), ledger)
            second = self._second_opinion(target, withheld) if len(tried) == 1 else None
            try:
                if second is None:
                    scored, checked = await peer.score(question, ""), None
                else:
                    helper = PeerMember(second, self._require_peers(), self._price(second), ledger)
                    scored, checked = await _with_second(peer.score(question, ""), helper, question)
                break
            except PeerError as e:
                texts = [question.stem, *question.choices]
                elapsed = time.perf_counter() - started
                retry = await self.retry(tried, e.failure, texts, options, elapsed, decision)
                if retry is None:
                    raise
                log.warning(
                    "escalation to %s failed (%s): %s", safe(target), e.failure, retry.reason
                )
                decision = retry
        peer_probs = tuple(scored.scores.probabilities(DRAFT_NORMALISATION))
        members = {
            **local_row,
            target: MemberUsage(tokens=scored.tokens, cost=scored.cost, calls=1),
        }
        answers = [Answer(target, ledger.models.get(target, ""), argmax(peer_probs))]
        answers.append(Answer(self.org_id, self._worker.info.name, draft_choice, own=True))
        if second is not None and checked is not None:
            members[second] = MemberUsage(tokens=checked.tokens, cost=checked.cost, calls=1)
            choice = argmax(checked.scores.probabilities(DRAFT_NORMALISATION))
            answers.append(Answer(second, ledger.models.get(second, ""), choice))
        await self._cross_check(answers, ledger)
        provenance = self._provenance(
            f"{self.org_id}->{decision.target}",
            router,
            decision,
            members,
            max(peer_probs),
            started,
        )
        return Routed(
            argmax(peer_probs), peer_probs, provenance.model_copy(update=ledger.provenance())
        )

    def _second_opinion(self, target: str, withheld: Mapping[str, str]) -> str | None:
        """For a sampled share of escalations, another allowed member that declares a
        model `target` declares (the first such in roster order); None otherwise."""
        if self._cross_check_rate <= 0 or self._rng.random() >= self._cross_check_rate:
            return None
        peers = {p.org: p for p in self.peers()}
        declared = set(peers[target].models) if target in peers else set()
        for org, p in peers.items():
            if org != target and org not in withheld and declared & set(p.models):
                return org
        return None

    async def _record_evidence(self, evidence: Evidence) -> None:
        """Tells the assessor; a reputation store on PostgreSQL is written off the loop."""
        assessor = self._assessor
        if isinstance(assessor, ReputationAssessor):
            await assessor.off_loop(lambda: assessor.record(evidence))
        else:
            assessor.record(evidence)

    async def _cross_check(self, answers: Sequence[Answer], ledger: PeerLedger) -> None:
        """Judges the answers that should agree; the verdicts go to the provenance, the
        evidence to the assessor, and a disagreement between peers raises the alarm."""
        scores = {a.member: self._assessor.standing(a.member).score for a in answers if not a.own}
        for judged in cross_check(answers, scores):
            ledger.cross_checked(judged.peer, judged.verdict)
            for evidence in judged.evidence:
                await self._record_evidence(evidence)
            if judged.verdict == "disagreed" and judged.reference == "peers" and self._alarm:
                self._alarm(judged.peer)

    async def _learned_inputs(
        self, question: Question, probs: tuple[float, ...]
    ) -> tuple[Draft, dict[str, list[float]]]:
        """The draft with its generated answer, as the policy was trained on it."""
        request = GenerationRequest(
            params=DRAFT,
            messages=(ChatMessage("user", generative_prompt(question)),)
            if self._worker.info.chat
            else (),
            prompt=None if self._worker.info.chat else generative_prompt(question),
        )
        completion = await self._worker.generate(request).collect()
        draft = Draft(
            text=completion.text,
            token_logprobs=tuple(t.logprob for t in completion.logprobs),
            first_entropy=_first_entropy(completion.logprobs),
            option_probs=probs,
        )
        if self._embed is None:
            raise RequestRejected("the learned router needs the sentence encoder")
        choice = extract_choice(completion.text, question)
        return draft, {
            "generated_choice": [float(-1 if choice is None else choice)],
            "embedding": await self._embed(routing_text(question)),
        }

    def _record(self, record: _RecordDraft, routed: Routed) -> None:
        """Stores the task's routing record; an escalated task is labelled at once by
        whether the local draft agreed with the answer. Never fails the task."""
        assert self.records is not None and record.features is not None
        escalated = routed.provenance.route != "local"
        try:
            self.records.add(
                RoutingRecord(
                    record_id=record.task_id,
                    owner=record.owner,
                    features=tuple(record.features),
                    router=record.router,
                    route="escalated" if escalated else "local",
                    local_choice=record.local_choice,
                    final_choice=routed.choice,
                    local_adequate=(record.local_choice == routed.choice) if escalated else None,
                    label_source="agreement" if escalated else None,
                ),
                feature_names(len(record.features) - len(feature_names(0))),
            )
        except StorageUnavailable:
            pass  # best effort; the full disk is logged once per interval where it was met
        except (ValueError, OSError, RoutingDataError, sa_exc.DBAPIError) as e:
            log.warning("task %s: routing record not stored: %s", record.task_id, safe(e, 300))

    def _require_peers(self) -> PeerClient:
        if self._peers is None:
            raise RequestRejected("escalation needs a federation: this node has no [federation]")
        return self._peers

    def group_round(self, name: str, withheld: Mapping[str, str] | None = None) -> GroupRound:
        """The group's members as the trust layer allows them now, without those the
        task may not be sent to (`withheld`, from `withheld()`)."""
        withheld = withheld or {}
        group = self._groups[name]
        names = [self.org_id if m == "self" else m for m in group.members]
        aggregator = group.aggregator or group.members[-1]
        aggregator = self.org_id if aggregator == "self" else aggregator
        standings = {m: self._assessor.standing(m) for m in names if m != self.org_id}
        dropped = [m for m in names if m in standings and not standings[m].allowed]
        kept_back = [m for m in names if m in withheld and m not in dropped]
        allowed = [m for m in names if m not in dropped and m not in kept_back]
        why = [f"{m} {QUARANTINED}" for m in dropped]
        why += [f"{m}: {withheld[m]}" for m in kept_back]
        reputation = {m: s.score for m, s in standings.items() if s.allowed}
        weights = {m: s.routing_weight for m, s in standings.items() if s.allowed}
        short = ""
        if group.protocol == "mixture" and aggregator in dropped:
            short = f"its aggregator {aggregator} is {QUARANTINED}"
        elif group.protocol == "mixture" and aggregator in kept_back:
            short = f"its aggregator {aggregator} may not be sent the task: {withheld[aggregator]}"
        elif len(allowed) < group.min_members:
            short = (
                f"{len(allowed)} of {len(names)} members allowed, fewer than min_members "
                f"{group.min_members} ({'; '.join(why)})"
            )
        return GroupRound(allowed, aggregator, reputation, dropped + kept_back, short, weights)

    def group_runs(self, name: str) -> bool:
        """Whether the group answers a task now: with the members the trust layer allows,
        or, short of them, by falling back to the local model (`on_short = "local"`)."""
        return self._groups[name].on_short != "refuse" or not self.group_round(name).short

    async def _group_answer(
        self,
        name: str,
        question: Question,
        options: RequestOptions,
        started: float,
        decision: Decision | None = None,
        router: str = "",
        draft: Scored | None = None,
    ) -> Routed:
        """The group's answer; a group the trust layer left short falls back as its
        `on_short` says: the local model's answer (its `draft` if scored already), with
        the reason in the decision, or RequestRejected."""
        group = self._groups[name]
        names = [self.org_id if m == "self" else m for m in group.members]
        members = self.group_round(
            name, await self.withheld([question.stem, *question.choices], names)
        )
        if not members.short:
            ledger = PeerLedger(members.reputation)
            outcome = await self._run_group(name, question, options, members, ledger)
            await self._cross_check(
                [
                    Answer(
                        c.member,
                        self._model_of(c.member, ledger),
                        c.choice,
                        c.member == self.org_id,
                    )
                    for c in outcome.contributions
                    if c.round == 0
                ],
                ledger,
            )
            routed = self._from_outcome(outcome, f"group:{name}", decision, started)
            provenance = routed.provenance.model_copy(update=ledger.provenance())
            return Routed(routed.choice, routed.probabilities, provenance)
        if group.on_short == "refuse":
            raise RequestRejected(f"group {name}: {members.short}")
        if draft is None:
            draft = await LocalMember(self.org_id, self._worker).score(question, "")
        probs = tuple(draft.scores.probabilities(DRAFT_NORMALISATION))
        reason = f"group {name}: {members.short}; answered by the local model"
        fallback = Decision(
            "local",
            "",
            reason if decision is None else f"{decision.reason}; {reason}",
            -math.inf if decision is None else decision.score,
        )
        self.record_decision(router or group.protocol, fallback)
        row = {self.org_id: MemberUsage(tokens=draft.tokens, cost=0.0, calls=1)}
        provenance = self._provenance(
            "local", router or group.protocol, fallback, row, max(probs), started
        )
        return Routed(argmax(probs), probs, provenance)

    async def _run_group(
        self,
        name: str,
        question: Question,
        options: RequestOptions,
        chosen: GroupRound,
        ledger: PeerLedger,
    ) -> Outcome:
        """Runs the group's protocol over the members the trust layer allowed (`chosen`),
        each vote weighted by the member's reputation; `ledger` hears every reply."""
        group = self._groups[name]
        members = [self.member(m, ledger) for m in chosen.names]
        budget = self.budget(options)
        if budget.max_peers is not None:  # this node's own model is not a peer
            own = [m for m in members if m.name == self.org_id]
            members = own + [m for m in members if m.name != self.org_id][: budget.max_peers]
        limits = Limits(group.max_tokens, budget.max_cost, budget.deadline_s)
        configured = {(self.org_id if k == "self" else k): v for k, v in group.weights.items()}
        weights = reputation_weights([m.name for m in members], configured or None, chosen.weights)
        quorum = group.answers_needed
        try:
            if group.protocol == "vote":
                return await vote(members, question, weights=weights, limits=limits, quorum=quorum)
            if group.protocol == "debate":
                return await debate(
                    members,
                    question,
                    rounds=group.rounds,
                    topology=group.topology,
                    weights=weights,
                    limits=limits,
                    quorum=quorum,
                )
            aggregator = self.member(chosen.aggregator, ledger)
            proposers = [m for m in members if m.name != aggregator.name]
            return await mixture(proposers, aggregator, question, limits=limits, quorum=quorum)
        except BudgetError as e:
            raise RequestRejected(f"group {name}: {e}") from None

    def _model_of(self, member: str, ledger: PeerLedger) -> str:
        if member == self.org_id:
            return self._worker.info.name
        return ledger.models.get(member, "")

    def _from_outcome(
        self, outcome: Outcome, route: str, decision: Decision | None, started: float
    ) -> Routed:
        members = {
            k: MemberUsage(tokens=int(v["tokens"]), cost=v["cost"], calls=int(v["calls"]))
            for k, v in outcome.by_member().items()
        }
        prov = self._provenance(
            f"{self.org_id}->{route}",
            outcome.protocol,
            decision,
            members,
            outcome.confidence,
            started,
        ).model_copy(
            update={
                "protocol": outcome.protocol,
                "contributions": [
                    Contribution(member=c.member, round=c.round, choice=c.choice, tokens=c.tokens)
                    for c in outcome.contributions
                ],
                "stopped_by_budget": True if outcome.stopped_by_budget else None,
                "failed": first_failures(outcome.failures) or None,
            }
        )
        return Routed(outcome.choice, outcome.probabilities, prov)

    def _provenance(
        self,
        route: str,
        router: str,
        decision: Decision | None,
        members: dict[str, MemberUsage],
        confidence: float,
        started: float,
    ) -> Provenance:
        return Provenance(
            org=self.org_id,
            route=route,
            router=router,
            members=members,
            tokens=sum(m.tokens for m in members.values()),
            cost=round(sum(m.cost for m in members.values()), 6),
            confidence=round(confidence, 4),
            latency_ms=round((time.perf_counter() - started) * 1000, 1),
            decision=None
            if decision is None
            else RoutingDecision.of(decision.reason, decision.score),
        )

    def with_budget(self, routed: Routed, options: RequestOptions) -> Routed:
        """The routed answer with the task's budget, when it has one, in its provenance."""
        limits = BudgetLimits.of(self.budget(options))
        if limits is None:
            return routed
        provenance = routed.provenance.model_copy(update={"budget": limits})
        return Routed(routed.choice, routed.probabilities, provenance)


def first_failures(failures: Sequence[Failure]) -> dict[str, str]:
    """Each failed member's first failure, in the order they failed."""
    out: dict[str, str] = {}
    for f in failures:
        out.setdefault(f.member, f.reason)
    return out


async def _with_second(
    main: Awaitable[Scored], second: PeerMember, question: Question
) -> tuple[Scored, Scored | None]:
    """The main call's answer and, asked at the same time, the second member's (None when
    it failed: a cross-check never fails the task; the exchange assessed the failure)."""
    results = await asyncio.gather(main, second.score(question, ""), return_exceptions=True)
    first, other = results
    if isinstance(first, BaseException):
        raise first
    if isinstance(other, BaseException):
        if not isinstance(other, Exception):
            raise other
        log.info("cross-check by %s failed: %s", safe(second.name), type(other).__name__)
        return first, None
    return first, other


@dataclass
class _RecordDraft:
    """What the routing record of a task collects while it is answered."""

    task_id: str
    owner: str
    router: str = ""
    local_choice: int | None = None
    features: list[float] | None = None


def _first_entropy(logprobs: Sequence[TokenLogprob]) -> float:
    """Entropy (nats) of the first generated token over its top alternatives."""
    return top_entropy(logprobs[0].top) if logprobs else 0.0


def check_groups(groups: dict[str, GroupSection], org_id: str, federated: bool) -> None:
    """At start-up: a group naming peers needs a federation; a mixture's aggregator must
    be one of its members."""
    for name, g in groups.items():
        if not federated and any(m not in ("self", org_id) for m in g.members):
            raise ConfigError(
                "a group with peers needs [federation] in node.toml", key=f"groups.{name}.members"
            )
        if g.aggregator and g.aggregator not in g.members:
            raise ConfigError(
                f"aggregator {g.aggregator} is not a member", key=f"groups.{name}.aggregator"
            )


def required_capabilities(
    routing: RoutingSection, groups: Mapping[str, GroupSection], org_id: str
) -> dict[Capability, str]:
    """What this node's routing, as node.toml configures it, needs from its model beyond
    generating text, each capability with the setting that needs it:
    - `self`, `cascade` and `learned` routers draft with token log-probabilities (free
      text) and score the options of a multiple-choice task (`token_logprobs`,
      `option_scoring`);
    - a group with this node's own model as a member, or falling back to it
      (`on_short = "local"`), scores the options with it (`option_scoring`).
    Every multiple-choice task scores its options with the local model first, and its
    routing record (`record`) generates a draft with token log-probabilities; a backend
    without them refuses such a task (UnsupportedByModel: the task is rejected with the
    reason), which needs no start-up check: a node may serve free text only."""
    need: dict[Capability, str] = {}
    kind = routing.router.partition(":")[0]
    if kind in ("self", "cascade", "learned"):
        setting = f"routing.router = {routing.router!r}"
        need["token_logprobs"] = setting
        need["option_scoring"] = setting
    for name, g in groups.items():
        if "self" in g.members or org_id in g.members or g.on_short == "local":
            need.setdefault("option_scoring", f"[groups.{name}] (its own model scores options)")
    return need


def check_capabilities(
    info: ModelInfo, routing: RoutingSection, groups: Mapping[str, GroupSection], org_id: str
) -> None:
    """At start-up, once the model is loaded: ConfigError, one line, when the backend
    lacks a capability the configured routing needs (`required_capabilities`)."""
    need = required_capabilities(routing, groups, org_id)
    missing = [f"{c} (needed by {need[c]})" for c in need if c not in info.capabilities]
    if missing:
        raise ConfigError(
            f"the model {info.name} ({info.backend} backend) lacks {' and '.join(missing)}; "
            "change that setting or use a model server that supports it"
        )
