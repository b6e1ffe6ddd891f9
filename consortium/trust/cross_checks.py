"""Cross-checks: a peer's answer compared with another answer to the same task.

Only answers that should agree are compared: those of the same model. Roster models are
declared and their weights are open, and a multiple-choice answer is the greedy argmax of
the model's option scores, so two honest members serving the same model agree on nearly
every task (`agreement_rate` in [trust] says how nearly), and a member that disagrees is
answering with something else: a substituted model, or wrong on purpose. Two honest small
models of different families disagree often (SmolLM2-135M and Gemma-3-270M on 35 % of the
60 ARC-Easy dev items cached for both), so a disagreement between them says nothing about
either and is not evidence.

For each peer's answer with at least one reference of the same model:
- when this node's own model is among the references, it is trusted: the peer agrees or
  disagrees with it, full weight;
- otherwise the references are other peers: an agreement is good evidence for both, a
  disagreement is blamed on the pair in proportion to how little this node trusts each
  (1 - score): equally between two peers it trusts equally, mostly on the one it trusts
  less once canaries or other references have told them apart.

Where the answers come from (a vote's first round, a second member asked with a sampled
escalation, the local draft) is the caller's business (node/orchestrator.py); this module
only judges them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from consortium.trust.reputation import Evidence

CrossCheck = Literal["agreed", "disagreed"]
MIN_DISTRUST = 0.01  # a fully trusted peer still takes a share of a disagreement's blame


@dataclass(frozen=True)
class Answer:
    """One member's answer to the task: its choice, and the model it says answered.
    `own`: this node's own model (a trusted reference, never assessed)."""

    member: str
    model: str
    choice: int
    own: bool = False


@dataclass(frozen=True)
class Judged:
    """The cross-check of one peer: the evidence to record, the verdict for the answer's
    provenance ("agreed" when every reference agreed), and whether the references were
    this node's own model ("own") or other peers ("peers": a disagreement there does not
    tell which of them is wrong)."""

    peer: str
    verdict: CrossCheck
    evidence: tuple[Evidence, ...]
    reference: Literal["own", "peers"]


def cross_check(answers: Sequence[Answer], scores: Mapping[str, float]) -> list[Judged]:
    """Judges every peer answer that has a same-model reference; `scores` are the peers'
    current reputations (1 - score is a peer's share of a disagreement's blame)."""
    judged = []
    for a in answers:
        if a.own or not a.model:
            continue
        same = [b for b in answers if b is not a and b.model == a.model]
        own = [b for b in same if b.own]
        if own:
            judged.append(_against_own(a, own))
        elif same:
            judged.append(_against_peers(a, same, scores))
    return judged


def _evidence(a: Answer, good: bool, weight: float) -> Evidence:
    reason = "cross_check_agreed" if good else "cross_check_disagreed"
    return Evidence(a.member, "cross_check", good, reason, a.model, weight)


def _against_own(a: Answer, own: Sequence[Answer]) -> Judged:
    agreed = all(b.choice == a.choice for b in own)
    verdict: CrossCheck = "agreed" if agreed else "disagreed"
    return Judged(a.member, verdict, (_evidence(a, agreed, 1.0),), "own")


def _distrust(member: str, scores: Mapping[str, float]) -> float:
    return max(1.0 - scores.get(member, 1.0), MIN_DISTRUST)


def _against_peers(a: Answer, others: Sequence[Answer], scores: Mapping[str, float]) -> Judged:
    agree = sum(1 for b in others if b.choice == a.choice) / len(others)
    mine = _distrust(a.member, scores)
    # Each disagreement's blame (one piece in all) split between the two by distrust.
    blame = sum(
        mine / (mine + _distrust(b.member, scores)) for b in others if b.choice != a.choice
    ) / len(others)
    evidence = []
    if agree > 0:
        evidence.append(_evidence(a, True, agree))
    if blame > 0:
        evidence.append(_evidence(a, False, blame))
    verdict: CrossCheck = "disagreed" if blame > 0 else "agreed"
    return Judged(a.member, verdict, tuple(evidence), "peers")
