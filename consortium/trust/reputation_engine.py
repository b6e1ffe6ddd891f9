"""Beta reputations with forgetting, and the peer states routing reads.

Each peer, and each (peer, model), has two Beta(alpha, beta) posteriors: one over "its
next answer is right" fed by answer evidence (canaries, cross-checks, members' reports),
one over "its next call goes through the protocol cleanly" fed by protocol evidence (a
verified reply is good; a refused reply, an empty one, a claim the roster does not allow
are bad). They are kept apart because a signature says who answered, not how well:
counted in one posterior, hundreds of verified replies would drown the few canaries that
show a peer answering wrong. A call that never reached the peer or timed out is evidence
about the network, not the peer (`NETWORK_FAILURES`): it enters neither posterior (the
node's circuit breaker, node/breaker.py, deals with it).

A piece of evidence of kind k weighs u = w_k (times its own weight); a bad outcome of a
check an honest peer passes with probability e weighs u * rho(e), with
rho(e) = e (1 - m) / ((1 - e) m) and m the prior mean, so that a peer failing exactly as
often as an honest one is expected to keeps the prior's mean and a peer failing more
often falls fast (e: `canary_pass_rate` for canaries, `agreement_rate` for cross-checks;
protocol evidence and reports are not rescaled). Then, with g = f**u:

    alpha <- g * alpha + (1 - g) * prior_good + u * good
    beta  <- g * beta  + (1 - g) * prior_bad  + u * bad

so old evidence fades toward the prior (not toward nothing) by f per answer's worth of
new evidence (about 1 / (1 - f) answers' worth is remembered) and a peer that turns bad
after a long honest record is caught within a bounded number of calls. The score is the
lower of the two posterior means; the state is decided on the lower of the two lower
credible bounds (the (1 - credible_level) quantiles), so a peer with little evidence is
not judged on a lucky or unlucky mean:

    healthy --bound < probation_bound--> probation
    healthy | probation --bound < quarantine_bound, >= min_evidence pieces--> quarantined
    quarantined --quarantine time over--> probation (posteriors back to the prior)
    probation --bound >= probation_bound--> healthy

The n-th quarantine of a peer lasts quarantine_s * quarantine_growth**(n-1), at most
max_quarantine_s. A quarantine that would leave more than max_quarantined_fraction of the
federation quarantined is not imposed: the peer stays on probation and it is logged.
Per-model records keep their own posteriors and counts; states are the peer's.

Other members' trust reports enter as an opinion per peer (trust/reports.py): `good` and
`bad` pseudo-answers added to the peer's own answers posterior wherever it is read (score, bound,
state), never stored into it, so forgetting and local evidence stay the node's own. A
quarantine still needs `min_evidence` pieces of local evidence: reports alone can put a
peer on probation (and lower its routing weight), never quarantine it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from opentelemetry import metrics

from consortium.logsafe import safe
from consortium.trust.audit import AuditLog, NoOpAuditLog
from consortium.trust.reputation import (
    NETWORK_FAILURES,
    Evidence,
    EvidenceKind,
    PeerState,
    Standing,
    Verdict,
)
from consortium.trust.reputation_store import Key, Locked, Record, ReputationStore

log = logging.getLogger(__name__)

_T = TypeVar("_T")
STATE_NUMBER: dict[PeerState, int] = {"healthy": 0, "probation": 1, "quarantined": 2}
METER_NAME = "consortium.trust"


@dataclass(frozen=True)
class ReputationSettings:
    """The model's parameters; node.toml's [trust] (node/config.py) makes one."""

    prior_good: float = 9.0
    prior_bad: float = 1.0
    forgetting: float = 0.97
    credible_level: float = 0.9
    probation_bound: float = 0.7
    quarantine_bound: float = 0.55
    min_evidence: int = 10
    quarantine_s: float = 600.0
    quarantine_growth: float = 2.0
    max_quarantine_s: float = 86400.0
    max_quarantined_fraction: float = 0.34
    weight_canary: float = 1.0
    weight_cross_check: float = 0.5
    weight_protocol: float = 0.3
    weight_report: float = 0.2
    # Multiples of weight_protocol for a refused reply (bad signature, wrong sender...)
    # and for a reply that gave nothing to verify (no status message).
    refusal_factor: float = 3.0
    failure_factor: float = 0.5
    # How often an honest peer passes a canary calibrated for its declared model, and
    # agrees with a reference answer of the same declared model (a cross-check): what a
    # failure is weighed against.
    canary_pass_rate: float = 0.95
    agreement_rate: float = 0.95
    # A peer on probation counts this much of its score in a vote or a peer choice: it
    # is still allowed, but a suspect outvoting the members in good standing is how a
    # peer released from quarantine does its damage before it is caught again.
    probation_weight: float = 0.3
    # Peers never quarantined ([trust.peers.ORG] exempt): scored, weighed and logged like
    # any other, held on probation where another would be quarantined.
    exempt: frozenset[str] = frozenset()

    def weight(self, kind: EvidenceKind) -> float:
        return {
            "canary": self.weight_canary,
            "cross_check": self.weight_cross_check,
            "protocol": self.weight_protocol,
            "report": self.weight_report,
        }[kind]

    @property
    def prior_mean(self) -> float:
        return self.prior_good / (self.prior_good + self.prior_bad)

    def bad_factor(self, kind: EvidenceKind) -> float:
        """rho(e): what a failed check weighs against a passed one, so that failing as
        often as an honest peer is expected to keeps the prior's mean."""
        e = {"canary": self.canary_pass_rate, "cross_check": self.agreement_rate}.get(kind)
        if e is None:
            return 1.0
        m = self.prior_mean
        return e * (1 - m) / ((1 - e) * m)

    def quarantine_duration(self, offence: int) -> float:
        """How long the `offence`-th quarantine (1, 2, ...) lasts."""
        growth = self.quarantine_growth ** min(offence - 1, 64)  # no float overflow
        return min(self.quarantine_s * growth, self.max_quarantine_s)


def lower_bound(alpha: float, beta: float, credible_level: float) -> float:
    """The (1 - credible_level) quantile of Beta(alpha, beta)."""
    # Imported here: scipy.stats takes a while to import, and node.toml's schema (read
    # by every CLI command) imports this module for the defaults.
    from scipy.stats import beta as beta_distribution

    value = float(beta_distribution.ppf(1.0 - credible_level, alpha, beta))
    return min(max(value, 0.0), alpha / (alpha + beta)) if math.isfinite(value) else 0.0


@dataclass(frozen=True)
class Reputation:
    """A record as the CLI and tests read it."""

    peer: str
    model: str
    state: PeerState
    score: float
    bound: float
    alpha: float
    beta: float
    offences: int
    quarantined_until: float
    evidence: int
    changed_at: float
    reason: str
    counts: dict[tuple[EvidenceKind, bool], int]
    # The protocol posterior, and the two bounds `bound` is the lower of.
    protocol_alpha: float = 0.0
    protocol_beta: float = 0.0
    answers_bound: float = 0.0
    protocol_bound: float = 0.0
    # The members' reports' opinion (good, bad pseudo-answers), already in score and
    # bound; alpha and beta are the node's own evidence. Peers only (model "").
    opinion: tuple[float, float] = (0.0, 0.0)


class _Metrics:
    """Gauges per peer (score, bound, state number) and evidence counters."""

    def __init__(self, provider: metrics.MeterProvider | None) -> None:
        meter = (provider or metrics.NoOpMeterProvider()).get_meter(METER_NAME)
        self.score = meter.create_gauge("consortium.trust.score", description="posterior mean")
        self.bound = meter.create_gauge(
            "consortium.trust.bound", description="lower credible bound"
        )
        self.state = meter.create_gauge(
            "consortium.trust.state", description="0 healthy, 1 probation, 2 quarantined"
        )
        self.evidence = meter.create_counter(
            "consortium.trust.evidence", description="pieces of evidence by kind and outcome"
        )

    def publish(self, rec: Record, score: float, bound: float) -> None:
        attrs = {"consortium.peer": rec.peer}
        self.score.set(score, attrs)
        self.bound.set(bound, attrs)
        self.state.set(STATE_NUMBER[rec.state], attrs)

    def count(self, evidence: Evidence) -> None:
        self.evidence.add(
            1,
            {
                "consortium.peer": evidence.peer,
                "consortium.evidence.kind": evidence.kind,
                "consortium.evidence.outcome": "good" if evidence.good else "bad",
            },
        )


@dataclass(frozen=True)
class _Change:
    """A peer's change of state, logged and audited once committed."""

    peer: str
    old: PeerState
    to: PeerState
    reason: str


def reply_model(verdict: Verdict) -> str:
    """The model a verified reply says answered (metadata.consortium.model), or ""."""
    if verdict.reply is None:
        return ""
    try:
        meta = verdict.reply.metadata.fields.get("consortium")
        if meta is None or not meta.HasField("struct_value"):
            return ""
        model = meta.struct_value.fields.get("model")
        if model is None or not model.HasField("string_value"):
            return ""
        return str(model.string_value)[:128]
    except (AttributeError, ValueError):
        return ""


class ReputationAssessor:
    """The node's `Assessor`: Beta reputations per peer and per (peer, model), kept in
    `store`. Thread-safe. `record(evidence)` takes evidence from canaries, cross-checks
    and reports; `assess(verdict)` turns the exchange's verdicts into protocol evidence.
    `members`: the federation's other members (the roster), for the quarantine cap; until
    `set_members` is called, the peers the store knows."""

    def __init__(
        self,
        store: ReputationStore,
        settings: ReputationSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
        meter_provider: metrics.MeterProvider | None = None,
        members: Iterable[str] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings or ReputationSettings()
        self._clock = clock
        self._metrics = _Metrics(meter_provider)
        self._members: frozenset[str] | None = None if members is None else frozenset(members)
        # Guards the records kept in memory; never held across a database call, so a
        # reader on the event loop never waits for another thread's transaction.
        self._lock = threading.Lock()
        # Told of every change of a peer's state (trust.audit).
        self.audit: AuditLog = NoOpAuditLog()
        self._records = store.load()
        self._opinions = store.load_opinions()
        self._capped: set[str] = set()  # peers whose capped quarantine was logged

    @classmethod
    def open(
        cls,
        path: Path,
        settings: ReputationSettings | None = None,
        **kwargs: Any,
    ) -> ReputationAssessor:
        """Opens (or creates) `path` (DATA_DIR/trust.sqlite3)."""
        return cls(ReputationStore(path), settings, **kwargs)

    def close(self) -> None:
        self.store.close()

    def set_members(self, peers: Iterable[str]) -> None:
        """The federation's other members, after the roster changes."""
        with self._lock:
            self._members = frozenset(peers)

    async def off_loop(self, call: Callable[[], _T]) -> _T:
        """`call()` (which uses the store) off the event loop when the store is a
        server's (PostgreSQL); inline on SQLite, where a call costs microseconds."""
        if self.store.remote:
            return await self.store.db.run(call)
        return call()

    def refresh(self) -> None:
        """Rereads every record and opinion (other replicas' evidence): what the node
        runs in the background, every `refresh_s / 2` on PostgreSQL."""
        records = self.store.load()
        opinions = self.store.load_opinions()
        with self._lock:
            self._records, self._opinions = records, opinions

    # The Assessor protocol.

    def reputation(self, peer: str) -> float:
        return self.standing(peer).score

    def standing(self, peer: str) -> Standing:
        self._refresh()
        with self._lock:
            rec = self._records.get((peer, ""))
        if rec is not None and self._due(rec):  # rare: once per quarantine, by one replica

            def release(records: dict[Key, Record], _: Locked, events: list[_Change]) -> None:
                self._release(records[(peer, "")], events)

            self._apply([(peer, "")], release)
        with self._lock:
            rec = self._records.get((peer, "")) or self._fresh(peer, "")  # asking adds nothing
            return self._standing(rec)

    def assess(self, verdict: Verdict) -> None:
        s = self.settings
        if verdict.reply is None and not verdict.refusal and verdict.failure in NETWORK_FAILURES:
            return  # the network's doing (or the peer's load), not evidence about the peer
        if verdict.reply is not None:
            evidence = Evidence(verdict.peer, "protocol", True, "verified", reply_model(verdict))
        elif verdict.refusal:
            evidence = Evidence(
                verdict.peer, "protocol", False, verdict.refusal, weight=s.refusal_factor
            )
        else:
            evidence = Evidence(
                verdict.peer,
                "protocol",
                False,
                verdict.failure or "no_reply",
                weight=s.failure_factor,
            )
        self.record(evidence)

    def set_opinions(self, opinions: Mapping[str, tuple[float, float]]) -> None:
        """The members' reports' opinion of each peer, as (good, bad) pseudo-answers
        (trust/reports.py); replaces every earlier opinion. Each peer's state is decided
        again on its effective bound: probation or healthy (a quarantine needs
        min_evidence pieces of local evidence)."""
        now = self._clock()
        clean = {
            p: (max(float(g), 0.0), max(float(b), 0.0))
            for p, (g, b) in opinions.items()
            if math.isfinite(g) and math.isfinite(b)
        }
        self._refresh()
        with self._lock:
            touched = set(clean) | set(self._opinions)
            known = {k[0] for k in self._records if not k[1]}
        self.store.save_opinions(clean)
        with self._lock:
            self._opinions = clean
        for peer in sorted(touched):
            if peer not in clean and peer not in known:
                continue
            g, b = clean.get(peer, (0.0, 0.0))
            self._apply(
                [(peer, "")], self._reconsider(Evidence(peer, "report", g >= b, "opinion"), now)
            )

    def _reconsider(
        self, evidence: Evidence, now: float
    ) -> Callable[[dict[Key, Record], Locked, list[_Change]], None]:
        """The change that decides a peer's state again after its opinion changed."""

        def change(records: dict[Key, Record], locked: Locked, events: list[_Change]) -> None:
            rec = records[(evidence.peer, "")]
            self._release(rec, events)
            self._decide(rec, now, evidence, locked, events)

        return change

    # Evidence from anywhere.

    def record(self, evidence: Evidence) -> Standing:
        """Learns from one piece of evidence; returns the peer's standing after it. The
        peer's rows are updated in one transaction holding their lock (the store's
        `update`): evidence recorded at once by several replicas all counts."""
        now = self._clock()
        s = self.settings
        w = s.weight(evidence.kind) * max(evidence.weight, 0.0)
        if not evidence.good:
            w *= s.bad_factor(evidence.kind)
        peer = evidence.peer
        keys = [(peer, "")] + ([(peer, evidence.model)] if evidence.model else [])

        def change(records: dict[Key, Record], locked: Locked, events: list[_Change]) -> None:
            rec = records[(peer, "")]
            self._release(rec, events)
            self._update(rec, evidence, w)
            if evidence.model:
                self._update(records[(peer, evidence.model)], evidence, w)
            self._decide(rec, now, evidence, locked, events)

        self._refresh()
        written = self._apply(keys, change)
        self._metrics.count(evidence)
        with self._lock:
            return self._standing(written[(peer, "")])

    def reset(self, peer: str) -> Reputation:
        """Back to the prior, healthy, no offences (`consortium trust reset`)."""
        self._refresh()
        with self._lock:
            old = self._records.get((peer, ""))
        rec = self._fresh(peer, "")
        rec.state = old.state if old is not None else "healthy"  # for the log line
        events: list[_Change] = []
        self._change(rec, "healthy", self._clock(), "reset by the operator", events)
        self.store.replace_peer(rec)
        with self._lock:
            for key in [k for k in self._records if k[0] == peer]:
                del self._records[key]
            self._records[(peer, "")] = rec
            self._capped.discard(peer)
            view = self._view(rec)
        self._emit(events)
        return view

    def reputations(self) -> list[Reputation]:
        """Every record, peers first (model ""), sorted."""
        self._refresh()
        with self._lock:
            return [self._view(self._records[k]) for k in sorted(self._records)]

    def model_reputation(self, peer: str, model: str) -> Reputation:
        self._refresh()
        with self._lock:
            return self._view(self._records.get((peer, model)) or self._fresh(peer, model))

    # Internals.

    def _refresh(self) -> None:
        """Rereads the store when another writer (the CLI, another replica) may have
        committed to it (`ReputationStore.changed`)."""
        if self.store.changed():
            self.refresh()
            if not self.store.remote:  # an external reset: log a capped peer again
                self._capped.clear()

    def _apply(
        self, keys: list[Key], change: Callable[[dict[Key, Record], Locked, list[_Change]], None]
    ) -> dict[Key, Record]:
        """`change` on the committed rows of `keys`, locked (the store's `update`); the
        records written replace those in memory, and the state changes are logged and
        audited once committed."""
        events: list[_Change] = []

        def run(records: dict[Key, Record], locked: Locked) -> None:
            events.clear()  # what a failed attempt said is not said
            change(records, locked, events)

        _, written = self.store.update(keys, self._fresh, run)
        with self._lock:
            self._records.update(written)
        self._emit(events)
        return written

    def _fresh(self, peer: str, model: str) -> Record:
        return Record(peer, model, self.settings.prior_good, self.settings.prior_bad)

    def _update(self, rec: Record, evidence: Evidence, w: float) -> None:
        s = self.settings
        g = s.forgetting**w
        good, bad = (w, 0.0) if evidence.good else (0.0, w)
        if evidence.kind == "protocol":
            alpha, beta = self._protocol(rec)
            rec.p_alpha = g * alpha + (1 - g) * s.prior_good + good
            rec.p_beta = g * beta + (1 - g) * s.prior_bad + bad
        else:
            rec.alpha = g * rec.alpha + (1 - g) * s.prior_good + good
            rec.beta = g * rec.beta + (1 - g) * s.prior_bad + bad
        rec.evidence += 1
        if evidence.kind == "canary":
            rec.last_canary = evidence.good
        key = (evidence.kind, evidence.good)
        rec.counts[key] = rec.counts.get(key, 0) + 1

    def _protocol(self, rec: Record) -> tuple[float, float]:
        """The protocol posterior (the prior for a row written before it was kept)."""
        s = self.settings
        alpha = s.prior_good if rec.p_alpha is None else rec.p_alpha
        beta = s.prior_bad if rec.p_beta is None else rec.p_beta
        return alpha, beta

    def _effective(self, rec: Record) -> tuple[float, float]:
        """The answers (alpha, beta) score, bound and state read: a peer's own posterior
        plus the members' reports' opinion of it (per-model records: their own posterior)."""
        if rec.model:
            return rec.alpha, rec.beta
        good, bad = self._opinions.get(rec.peer, (0.0, 0.0))
        return rec.alpha + good, rec.beta + bad

    def _bounds(self, rec: Record) -> tuple[float, float]:
        """The answers bound (reports included) and the protocol bound."""
        level = self.settings.credible_level
        return (
            lower_bound(*self._effective(rec), level),
            lower_bound(*self._protocol(rec), level),
        )

    def _bound(self, rec: Record) -> float:
        return min(self._bounds(rec))

    def _score(self, rec: Record) -> float:
        alpha, beta = self._effective(rec)
        p_alpha, p_beta = self._protocol(rec)
        return min(alpha / (alpha + beta), p_alpha / (p_alpha + p_beta))

    def _weakest(self, rec: Record) -> str:
        """Which posterior the state is decided on: "answers" or "protocol"."""
        answers, protocol = self._bounds(rec)
        return "answers" if answers <= protocol else "protocol"

    def _due(self, rec: Record) -> bool:
        """Whether `rec`'s quarantine is over (and not ended yet)."""
        return rec.state == "quarantined" and self._clock() >= rec.quarantined_until

    def _release(self, rec: Record, events: list[_Change]) -> bool:
        """Ends a quarantine whose time is over: probation, posterior back to the prior
        (offences are kept). Whether it did."""
        now = self._clock()
        if not self._due(rec):
            return False
        rec.alpha, rec.beta = self.settings.prior_good, self.settings.prior_bad
        rec.p_alpha, rec.p_beta = rec.alpha, rec.beta
        rec.evidence = 0
        self._change(rec, "probation", now, f"quarantine_ended offences={rec.offences}", events)
        return True

    def _decide(
        self, rec: Record, now: float, evidence: Evidence, locked: Locked, events: list[_Change]
    ) -> None:
        s = self.settings
        bound = self._bound(rec)
        last = f"on={self._weakest(rec)} last={evidence.kind}:{safe(evidence.reason, 64)}"
        if rec.state == "quarantined":
            return
        if bound < s.quarantine_bound and rec.evidence >= s.min_evidence:
            exempt = rec.peer in s.exempt
            if not exempt and self._cap_allows(rec.peer, now, locked):
                self._quarantine(rec, now, bound, last, events)
                return
            held = (
                "quarantine_exempt" if exempt else "quarantine_capped",
                "exempt=true"
                if exempt
                else f"max_quarantined_fraction={s.max_quarantined_fraction}",
            )
            why = f"{held[0]} bound={bound:.3f}<{s.quarantine_bound} {held[1]} {last}"
            if rec.state == "healthy":
                self._change(rec, "probation", now, why, events)
            if rec.peer not in self._capped:  # once, not on every call while capped
                self._capped.add(rec.peer)
                rec.changed_at, rec.reason = now, why  # why it is on probation, not quarantined
                log.warning("trust: peer %s not quarantined: %s", safe(rec.peer), why)
            return
        self._capped.discard(rec.peer)
        if rec.state == "healthy" and bound < s.probation_bound:
            why = f"low_bound bound={bound:.3f}<{s.probation_bound} {last}"
            self._change(rec, "probation", now, why, events)
        elif rec.state == "probation" and bound >= s.probation_bound:
            why = f"recovered bound={bound:.3f}>={s.probation_bound} {last}"
            self._change(rec, "healthy", now, why, events)

    def _quarantine(
        self, rec: Record, now: float, bound: float, last: str, events: list[_Change]
    ) -> None:
        rec.offences += 1
        duration = self.settings.quarantine_duration(rec.offences)
        rec.quarantined_until = now + duration
        why = (
            f"quarantine bound={bound:.3f}<{self.settings.quarantine_bound} "
            f"evidence={rec.evidence} offence={rec.offences} duration_s={duration:.0f} {last}"
        )
        self._change(rec, "quarantined", now, why, events)

    def _cap_allows(self, peer: str, now: float, locked: Locked) -> bool:
        """Whether one more quarantined peer keeps at most max_quarantined_fraction of the
        federation (the other members and this node) quarantined: counted in the
        database, as committed by every replica (`Locked.quarantined`)."""
        with self._lock:
            peers = self._members
            if peers is None:
                peers = frozenset(k[0] for k in self._records)
        quarantined = len((locked.quarantined(now) & (peers | {peer})) - {peer})
        size = len(peers | {peer}) + 1
        return quarantined + 1 <= math.floor(self.settings.max_quarantined_fraction * size)

    def _change(
        self, rec: Record, state: PeerState, now: float, reason: str, events: list[_Change]
    ) -> None:
        events.append(_Change(rec.peer, rec.state, state, reason))
        rec.state, rec.changed_at, rec.reason = state, now, reason

    def _emit(self, events: Iterable[_Change]) -> None:
        """Logs and audits state changes, once their transaction committed."""
        for e in events:
            log.log(
                logging.WARNING if e.to == "quarantined" else logging.INFO,
                "trust: peer %s %s -> %s: %s",
                safe(e.peer),
                e.old,
                e.to,
                e.reason,
            )
            self.audit.record(
                "trust", peer=e.peer, detail={"from": e.old, "to": e.to, "reason": e.reason}
            )

    def _standing(self, rec: Record) -> Standing:
        score = self._score(rec)
        bound = self._bound(rec)
        self._metrics.publish(rec, score, bound)
        factor = self.settings.probation_weight if rec.state == "probation" else 1.0
        canary: Literal["passed", "failed"] | None = None
        if rec.last_canary is not None:
            canary = "passed" if rec.last_canary else "failed"
        return Standing(rec.peer, rec.state, score, bound, score * factor, canary)

    def _view(self, rec: Record) -> Reputation:
        answers, protocol = self._bounds(rec)
        p_alpha, p_beta = self._protocol(rec)
        return Reputation(
            rec.peer,
            rec.model,
            rec.state,
            self._score(rec),
            min(answers, protocol),
            rec.alpha,
            rec.beta,
            rec.offences,
            rec.quarantined_until,
            rec.evidence,
            rec.changed_at,
            rec.reason,
            dict(rec.counts),
            p_alpha,
            p_beta,
            answers,
            protocol,
            self._opinions.get(rec.peer, (0.0, 0.0)) if not rec.model else (0.0, 0.0),
        )
