"""Multiple-choice questions: how a member scores the options, how scores become answer
probabilities, and how a letter is read from a generated answer.

Scoring follows the reference measurements of the project: the question as
`Question: ...\\nAnswer:` and each option as its continuation (with a leading space),
scored by log-likelihood. Normalisation is a choice (`Normalisation`), made on a dev split.
The same functions serve a node answering a peer's scoring request and the evaluation
harness replaying cached scores, so both see the same numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Normalisation = Literal["none", "tokens", "chars"]
LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Question:
    stem: str
    choices: tuple[str, ...]
    # How the source labels the options (A-D, or 1-4); shown in generative prompts.
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.stem.strip():
            raise ValueError("a question needs a stem")
        if not 2 <= len(self.choices) <= len(LETTERS):
            raise ValueError(f"a question needs 2 to {len(LETTERS)} choices")
        if self.labels and len(self.labels) != len(self.choices):
            raise ValueError("labels and choices differ in number")

    @property
    def shown_labels(self) -> tuple[str, ...]:
        return self.labels or tuple(LETTERS[: len(self.choices)])


@dataclass(frozen=True)
class OptionScores:
    """What a member's model says about each option: total log-likelihood and length."""

    logprobs: tuple[float, ...]
    tokens: tuple[int, ...]
    chars: tuple[int, ...]

    def normalised(self, how: Normalisation) -> list[float]:
        if how == "tokens":
            return [lp / max(n, 1) for lp, n in zip(self.logprobs, self.tokens, strict=True)]
        if how == "chars":
            return [lp / max(n, 1) for lp, n in zip(self.logprobs, self.chars, strict=True)]
        return list(self.logprobs)

    def probabilities(self, how: Normalisation = "tokens", temperature: float = 1.0) -> list[float]:
        """A distribution over the options: softmax of the normalised scores."""
        return softmax([s / temperature for s in self.normalised(how)])


def scoring_prompt(question: Question, context: str = "") -> str:
    """`context` (e.g. other members' answers in a debate) goes between the question and
    the answer the options continue."""
    middle = f"\n{context.strip()}" if context.strip() else ""
    return f"Question: {question.stem.strip()}{middle}\nAnswer:"


def routing_text(question: Question) -> str:
    """What a router sees of a multiple-choice task (and embeds): question and options."""
    options = "; ".join(c.strip() for c in question.choices)
    return f"{question.stem.strip()} Options: {options}"


def continuations(question: Question) -> list[str]:
    return [" " + choice.strip() for choice in question.choices]


def generative_prompt(question: Question) -> str:
    """The options listed with their labels, for answering by generation."""
    lines = [f"Question: {question.stem.strip()}"]
    lines += [
        f"{label}. {choice.strip()}"
        for label, choice in zip(question.shown_labels, question.choices, strict=True)
    ]
    lines.append("Answer with the letter of the correct option.\nAnswer:")
    return "\n".join(lines)


def extract_choice(text: str, question: Question) -> int | None:
    """The option a generated answer names: its label as a word ("B", "(B)", "B."), or else
    the one option whose text it contains; None if it names none or several."""
    labels = question.shown_labels
    pattern = r"(?<![A-Za-z0-9])(" + "|".join(re.escape(x) for x in labels) + r")(?![A-Za-z0-9])"
    found = re.search(pattern, text.strip())
    if found:
        return labels.index(found.group(1))
    lowered = text.lower()
    hits = [i for i, c in enumerate(question.choices) if c.strip() and c.strip().lower() in lowered]
    return hits[0] if len(hits) == 1 else None


def softmax(values: Sequence[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])
