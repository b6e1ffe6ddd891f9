"""Judging a peer's reply to a canary (trust/canaries.py) with the multiple-choice protocol.

A multiple-choice canary is asked as a scoring request (`PeerClient.score`) or as a task
whose text names an option; the peer's choice is the argmax of its option scores
normalised by `CANARY_NORMALISATION` (the normalisation calibration uses:
evaluation/canaries.py), or the option its text names. A free-text canary is asked with
`PeerClient.ask` and its reply text checked. Each verdict is `Evidence` of kind "canary"
for the reputation engine. Sending canaries alongside real calls and to idle peers:
node/canary_traffic.py.
"""

from __future__ import annotations

from consortium.protocols.multiple_choice import (
    Normalisation,
    OptionScores,
    Question,
    argmax,
    extract_choice,
)
from consortium.trust.canaries import Canary, FreeTextCanary, MultipleChoiceCanary, evidence
from consortium.trust.reputation import Evidence

# Length-normalised log-likelihood: the reference measurements' choice (shared/data).
CANARY_NORMALISATION: Normalisation = "tokens"


def question_of(canary: MultipleChoiceCanary) -> Question:
    """The canary as the question a peer is asked (no id, nothing that marks it)."""
    return Question(stem=canary.question, choices=canary.choices)


def choice_from_scores(
    scores: OptionScores, normalisation: Normalisation = CANARY_NORMALISATION
) -> int:
    return argmax(scores.normalised(normalisation))


def choice_from_text(canary: MultipleChoiceCanary, text: str) -> int | None:
    """The option a generated answer names (its letter, or the one option it quotes)."""
    return extract_choice(text, question_of(canary))


def judge_scores(
    peer: str,
    canary: MultipleChoiceCanary,
    scores: OptionScores,
    model: str = "",
    normalisation: Normalisation = CANARY_NORMALISATION,
) -> Evidence:
    """A scoring reply: passed when the top-scored option is the canary's answer. Scores
    for the wrong number of options fail."""
    if len(scores.logprobs) != len(canary.choices):
        return evidence(peer, canary, False, model)
    return evidence(peer, canary, canary.passed(choice_from_scores(scores, normalisation)), model)


def judge_text(peer: str, canary: Canary, text: str, model: str = "") -> Evidence:
    """A text reply: for a multiple-choice canary the option it names, for a free-text
    canary its check."""
    if isinstance(canary, FreeTextCanary):
        return evidence(peer, canary, canary.passed(text), model)
    return evidence(peer, canary, canary.passed(choice_from_text(canary, text)), model)
