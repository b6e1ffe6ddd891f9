"""Scoring the options of a multiple-choice question with a model: the one place that
turns a `Question` into log-likelihoods, used by a node answering a scoring request, by
local collaboration members and by the evaluation harness."""

from __future__ import annotations

from consortium.llm.base import LLMBackend
from consortium.protocols.multiple_choice import (
    OptionScores,
    Question,
    continuations,
    scoring_prompt,
)


def score_options(backend: LLMBackend, question: Question, context: str = "") -> OptionScores:
    prompt = scoring_prompt(question, context)
    conts = continuations(question)
    logprobs = backend.score(prompt, conts)
    base = backend.count_tokens(prompt)
    return OptionScores(
        logprobs=tuple(logprobs),
        tokens=tuple(max(backend.count_tokens(prompt + c) - base, 1) for c in conts),
        chars=tuple(len(c) for c in conts),
    )
