"""Members' trust reports and how a node folds them into opinions, EigenTrust-style.

A **trust report** is what one member tells the others about its own experience: per
peer it has local evidence about, its local score (the posterior mean of its own
evidence, reports left out, so opinions never echo round the federation) and how many
pieces of evidence that score rests on. Reports travel as message-only A2A exchanges
(node/reports.py), signed like every message; this module only judges their content.

**The fold** turns the latest valid report of each reporter into an opinion per subject
(a score `g` in [0, 1] and a `confidence` in [0, 1]):

1. Reporter weights, EigenTrust-style (Kamvar et al. 2003, personalised to this node):
   the base weight is `(1 - a) * t0_r + a * p_r`, where `t0` is this node's own trust in
   the other members (its local scores, 0 for a peer it has quarantined), normalised,
   and `p` the pre-trusted distribution, uniform over the roster's founders (`t0` when
   there are none); `a` is the founders' fixed share. Then one transitive step: what
   the others report of a reporter scales its weight down, never up, by
   `1 - confidence * (1 - g)` of their opinion of it (computed under the base weights,
   an even split resolved in its favour). So a reporter counts for at most its share of
   this node's own trust (plus the founders' share), a clique praising itself gains
   nothing, and a minority cannot discredit the honest reporters. The step is not
   iterated to a fixed point: a clique rating itself 1.0 and everyone else 0 gains a
   little on honest reporters (who rate each other 0.95) at every round, until it
   outweighs them.
2. The opinion of subject j: `g_j` is the weighted median of the scores reported about
   it (less than half of the weight cannot move it); `confidence_j` is the share of all
   reporters' weight (the subject's own left out) that spoke about j, each reporter's
   part scaled by how much evidence it had (`evidence / saturation`, at most 1). A
   minority of reporters, however sure, moves a subject by at most its share, and not
   at all where the majority speaks.

Entries about this node, about the reporter itself, or about organizations that are not
members are dropped and counted per reason; reports older than `max_age_s` are ignored.
The opinion enters a peer's Beta posterior as `report_weight * confidence * (g, 1 - g)`
pseudo-answers (trust/reputation_engine.py), a few answers' worth against the ~50 a
node's own memory holds.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ORG_ID = r"^[a-z0-9][a-z0-9-]{0,62}$"
# Entries in one report: far more than any federation's members.
MAX_ENTRIES = 1024
MAX_EVIDENCE = 1_000_000_000
REPORT_VERSION = 1
Tie = Literal["low", "mid", "high"]


class ReportError(ValueError):
    """A trust report's content is not valid; `reason` is its refusal code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _number(value: Any) -> Any:
    """JSON numbers only: no booleans, no strings that look like numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    return value


class ReportEntry(BaseModel):
    """What the reporter thinks of one peer: its local score and the evidence behind it."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    org: Annotated[str, Field(pattern=ORG_ID)]
    score: Annotated[float, Field(ge=0.0, le=1.0)]
    evidence: Annotated[int, Field(ge=0, le=MAX_EVIDENCE)]

    _numbers = field_validator("score", "evidence", mode="before")(_number)


class TrustReport(BaseModel):
    """One member's signed report (`issued_at`: seconds since the epoch)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    v: Annotated[int, Field(ge=REPORT_VERSION, le=REPORT_VERSION)] = REPORT_VERSION
    reporter: Annotated[str, Field(pattern=ORG_ID)]
    issued_at: Annotated[float, Field(gt=0.0)]
    entries: Annotated[list[ReportEntry], Field(max_length=MAX_ENTRIES)]

    _numbers = field_validator("v", "issued_at", mode="before")(_number)

    @field_validator("entries")
    @classmethod
    def _unique(cls, entries: list[ReportEntry]) -> list[ReportEntry]:
        seen: set[str] = set()
        for e in entries:
            if e.org in seen:
                raise ValueError(f"{e.org} is reported twice")
            seen.add(e.org)
        return entries

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def parse_report(data: Any) -> TrustReport:
    """The report in `data` (a JSON object); raises ReportError("malformed_report")
    naming the first bad field (never echoing the value)."""
    if not isinstance(data, dict):
        raise ReportError("malformed_report", "a trust report is a JSON object")
    try:
        return TrustReport.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "report"
        raise ReportError("malformed_report", f"{loc}: {err['msg']}") from None


@dataclass(frozen=True)
class ReportSettings:
    """node.toml's [trust] report_* keys (node/config.py makes one)."""

    # The opinion's weight in a peer's posterior, in answers' worth (at confidence 1).
    report_weight: float = 5.0
    # How often a node sends its report to every active member (0: never).
    report_interval_s: float = 600.0
    # Reports older than this are ignored (default: a bit more than three intervals).
    report_max_age_s: float = 2000.0
    # EigenTrust's pre-trusted share `a`: the founders' share of the reporters' weight.
    report_pretrust: float = 0.2
    # Pieces of evidence behind an entry at which it counts fully.
    report_saturation: float = 10.0


@dataclass(frozen=True)
class Opinion:
    """What the members' reports say of one peer: `score` (g) and `confidence` in
    [0, 1], from `reporters` reports."""

    score: float
    confidence: float
    reporters: int

    def pseudo_counts(self, weight: float) -> tuple[float, float]:
        """(good, bad) pseudo-answers: weight * confidence * (g, 1 - g)."""
        mass = weight * self.confidence
        return mass * self.score, mass * (1.0 - self.score)


@dataclass(frozen=True)
class Fold:
    """The fold's outcome: opinions per subject, the reporters' weights, and the entries
    (or whole reports) left out, counted per reason."""

    opinions: dict[str, Opinion]
    weights: dict[str, float]
    dropped: Counter[str]


def usable(
    report: TrustReport, me: str, members: Collection[str]
) -> tuple[dict[str, ReportEntry], Counter[str]]:
    """The entries of `report` the fold may use, by subject, and the others counted per
    reason: `about_self` (this node: it has its own evidence about itself),
    `self_report` (the reporter vouching for itself), `unknown_peer` (not a member)."""
    kept: dict[str, ReportEntry] = {}
    dropped: Counter[str] = Counter()
    for e in report.entries:
        if e.org == me:
            dropped["about_self"] += 1
        elif e.org == report.reporter:
            dropped["self_report"] += 1
        elif e.org not in members:
            dropped["unknown_peer"] += 1
        else:
            kept[e.org] = e
    return kept, dropped


def _normalised(values: Mapping[str, float]) -> dict[str, float]:
    total = sum(v for v in values.values() if v > 0)
    if total <= 0 or not math.isfinite(total):
        return {}
    return {k: max(v, 0.0) / total for k, v in values.items()}


def fold(
    *,
    me: str,
    trust: Mapping[str, float],
    founders: Collection[str],
    reports: Mapping[str, TrustReport],
    now: float,
    settings: ReportSettings | None = None,
) -> Fold:
    """Opinions of the members in `trust` (this node's own trust in each other member,
    0..1; 0 for a quarantined one) from the latest `reports` by reporter.

    Reports from organizations not in `trust` (`reporter_not_member`), older than
    `report_max_age_s` (`stale_report`) or whose reporter is not the key they are filed
    under (`reporter_mismatch`) are left out whole; entries as `usable` says."""
    s = settings or ReportSettings()
    members = frozenset(trust)
    dropped: Counter[str] = Counter()
    rows: dict[str, dict[str, ReportEntry]] = {}
    for reporter, report in sorted(reports.items()):
        if reporter not in members:
            dropped["reporter_not_member"] += 1
        elif report.reporter != reporter:
            dropped["reporter_mismatch"] += 1
        elif now - report.issued_at > s.report_max_age_s:
            dropped["stale_report"] += 1
        else:
            kept, lost = usable(report, me, members)
            dropped.update(lost)
            rows[reporter] = kept
    own = {m: min(max(float(trust[m]), 0.0), 1.0) for m in sorted(members)}
    t0 = _normalised(own)
    if not rows or not t0:
        return Fold({}, {}, dropped)
    # The pre-trusted distribution: the founders (with none, this node's own trust).
    p = _normalised({m: 1.0 for m in own if m in founders}) or t0
    a = min(max(s.report_pretrust, 0.0), 1.0)
    base = {r: (1.0 - a) * t0.get(r, 0.0) + a * p.get(r, 0.0) for r in rows}
    # One transitive step: what the members report of a reporter (under the base
    # weights) scales its weight down, never up. A reporter that more than half of the
    # others' weight finds unreliable counts for less; an even split gives it the benefit
    # of the doubt. Not iterated: a clique rating itself 1.0 and everyone else 0 would
    # gain a little on honest reporters (who rate each other 0.95) at every round, until
    # it outweighed them (measured while building this: iterated five times, 2 colluders
    # of 5 reporters put an honest peer with good local evidence on probation).
    of_reporters = _opinions(rows, rows, base, s, tie="high")
    weights = {
        r: w * (1.0 - of_reporters[r].confidence * (1.0 - of_reporters[r].score))
        if r in of_reporters
        else w
        for r, w in base.items()
    }
    return Fold(_opinions(own, rows, weights, s), weights, dropped)


def _opinions(
    subjects: Collection[str],
    rows: Mapping[str, Mapping[str, ReportEntry]],
    weights: Mapping[str, float],
    s: ReportSettings,
    tie: Tie = "mid",
) -> dict[str, Opinion]:
    """Each subject's opinion under these reporter weights: the weighted median of the
    scores reported, and the share of the reporters' weight (others than the subject)
    that spoke about it, scaled by the evidence behind each entry."""
    opinions: dict[str, Opinion] = {}
    for subject in subjects:
        speaking = [(weights[r], row[subject]) for r, row in rows.items() if subject in row]
        if sum(w for w, _ in speaking) <= 0:
            continue
        total = sum(w for r, w in weights.items() if r != subject)
        score = weighted_median([(e.score, w) for w, e in speaking], tie)
        sure = sum(w * min(e.evidence / s.report_saturation, 1.0) for w, e in speaking)
        confidence = min(sure / total, 1.0) if total > 0 else 0.0
        opinions[subject] = Opinion(min(max(score, 0.0), 1.0), confidence, len(speaking))
    return opinions


def weighted_median(values: Sequence[tuple[float, float]], tie: Tie = "mid") -> float:
    """The weighted median of (value, weight) pairs (weights > 0 in total): less than
    half of the weight cannot move it past the rest. When exactly half the weight lies
    on each side, `tie` picks the lower value, the upper one, or their midpoint."""
    ranked = sorted((v, w) for v, w in values if w > 0)
    total = sum(w for _, w in ranked)
    eps = 1e-9 * total
    seen = 0.0
    for i, (value, weight) in enumerate(ranked):
        seen += weight
        if seen > total / 2 + eps:
            return value
        if seen >= total / 2 - eps:
            upper = ranked[i + 1][0] if i + 1 < len(ranked) else value
            return {"low": value, "high": upper, "mid": (value + upper) / 2}[tie]
    return ranked[-1][0]
