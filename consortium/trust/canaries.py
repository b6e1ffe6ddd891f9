"""Canary tasks: known-answer tasks a node mixes into its traffic to each peer.

A canary pool is the organization's own private JSON Lines file (`[trust] canaries`),
one task per line:

    {"id": "c1", "question": "...", "choices": ["...", "..."], "answer": 1,
     "models": ["gemma3-270m"]}
    {"id": "c2", "prompt": "...", "check": {"type": "contains", "value": "Paris"},
     "models": ["smollm2-135m"]}

A multiple-choice canary passes when the peer chooses option `answer` (0-based); a
free-text canary when its reply satisfies `check`: `exact` (the whole reply, trimmed,
case-insensitive), `contains` (a substring, case-insensitive), `one_of` (the trimmed reply
equals one of several strings, case-insensitive) or `regex` (a pattern searched in the
reply, bounded in length and in the text it reads). `models` lists the declared models
calibrated to answer the canary right greedily (evaluation/canaries.py writes it); a
canary is sent only to peers declaring one of them. `id` never leaves the node: it names
the canary in the pool, in logs and in the scheduler's memory.

`load_pool` refuses a file with one ConfigError naming the file, the line and what is
wrong. `evidence` turns a verdict into the reputation engine's `Evidence` (kind
"canary"). Reading a choice from option scores or a generated letter needs the
multiple-choice protocol, which lives above this layer: node/canaries.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from consortium.errors import ConfigError
from consortium.trust.reputation import Evidence

MAX_REGEX = 200  # characters of a regex check's pattern
MAX_TEXT = 4000  # characters of a reply a check reads
MAX_CHOICES = 10
_NESTED_QUANTIFIER = re.compile(r"\([^()]*[+*}][^()]*\)\s*[+*{]")


class _Strict(BaseModel):
    # Strict: a JSON string is not an index, nor true a 1.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Check(_Strict):
    """How a free-text reply is judged."""

    type: Literal["exact", "contains", "regex", "one_of"]
    value: str | tuple[str, ...]

    @model_validator(mode="after")
    def _valid(self) -> Check:
        if self.type == "one_of":
            if isinstance(self.value, str) or not self.value:
                raise ValueError("a one_of check needs a non-empty list of strings")
            if not all(v.strip() for v in self.value):
                raise ValueError("a one_of check has an empty string")
            return self
        if not isinstance(self.value, str) or not self.value.strip():
            raise ValueError(f"a {self.type} check needs a non-empty string")
        if self.type == "regex":
            _compile(self.value)
        return self

    def passes(self, reply: str) -> bool:
        text = reply[:MAX_TEXT].strip()
        folded = text.casefold()
        if self.type == "one_of":
            return folded in {v.strip().casefold() for v in self.value}
        assert isinstance(self.value, str)
        if self.type == "exact":
            return folded == self.value.strip().casefold()
        if self.type == "contains":
            return self.value.casefold() in folded
        return _compile(self.value).search(text) is not None


def _compile(pattern: str) -> re.Pattern[str]:
    """A check's regex, refused when long or when it nests quantifiers (`(a+)+`), the
    shape of catastrophic backtracking; replies are cut to MAX_TEXT before matching."""
    if len(pattern) > MAX_REGEX:
        raise ValueError(f"a regex check is limited to {MAX_REGEX} characters")
    if _NESTED_QUANTIFIER.search(pattern):
        raise ValueError("a regex check may not repeat a repeated group")
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as e:
        raise ValueError(f"not a valid regex ({e})") from None


class MultipleChoiceCanary(_Strict):
    id: str = Field(min_length=1, max_length=200)
    question: str = Field(min_length=1)
    choices: tuple[str, ...] = Field(min_length=2, max_length=MAX_CHOICES)
    answer: int
    models: tuple[str, ...] = ()
    # Estimated tokens of a call (prompt and reply), for the scheduler's budget.
    tokens: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _valid(self) -> MultipleChoiceCanary:
        if not self.question.strip():
            raise ValueError("question is empty")
        if any(not c.strip() for c in self.choices):
            raise ValueError("a choice is empty")
        if not 0 <= self.answer < len(self.choices):
            raise ValueError(
                f"answer {self.answer} is not an index of the {len(self.choices)} choices"
            )
        return self

    @property
    def cost(self) -> int:
        chars = len(self.question) + sum(len(c) for c in self.choices)
        return self.tokens or chars // 4 + 2 * len(self.choices)

    def passed(self, choice: int | None) -> bool:
        return choice == self.answer


class FreeTextCanary(_Strict):
    id: str = Field(min_length=1, max_length=200)
    prompt: str = Field(min_length=1)
    check: Check
    models: tuple[str, ...] = ()
    tokens: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _valid(self) -> FreeTextCanary:
        if not self.prompt.strip():
            raise ValueError("prompt is empty")
        return self

    @property
    def cost(self) -> int:
        return self.tokens or len(self.prompt) // 4 + 64

    def passed(self, reply: str) -> bool:
        return self.check.passes(reply)


Canary = MultipleChoiceCanary | FreeTextCanary


@dataclass(frozen=True)
class CanaryPool:
    """A loaded pool: canaries in file order, ids unique."""

    canaries: tuple[Canary, ...]

    def __iter__(self) -> Iterator[Canary]:
        return iter(self.canaries)

    def __len__(self) -> int:
        return len(self.canaries)

    def for_model(self, model: str) -> tuple[Canary, ...]:
        """The canaries calibrated for `model` (the subset sent to a peer declaring it)."""
        return tuple(c for c in self.canaries if model in c.models)


def parse_canary(line: str) -> Canary:
    """One line of a pool; ValueError says what is wrong."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if "choices" in data or "question" in data:
        return _validated(MultipleChoiceCanary, line)
    if "prompt" in data or "check" in data:
        return _validated(FreeTextCanary, line)
    raise ValueError(
        "neither a multiple-choice (question, choices) nor a free-text canary (prompt)"
    )


def _validated(model: type[MultipleChoiceCanary] | type[FreeTextCanary], line: str) -> Canary:
    try:
        return model.model_validate_json(line)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ValueError(f"{where}: {message}" if where else message) from None


def load_pool(path: Path) -> CanaryPool:
    """The pool in `path`; a ConfigError names the file, the line and what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the canary pool ({e})", path=str(path)) from None
    canaries: list[Canary] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            canary = parse_canary(line)
        except ValueError as e:
            raise ConfigError(f"line {number}: {e}", path=str(path)) from None
        if canary.id in seen:
            raise ConfigError(
                f"line {number}: duplicate id {canary.id!r} (first on line {seen[canary.id]})",
                path=str(path),
            )
        seen[canary.id] = number
        canaries.append(canary)
    if not canaries:
        raise ConfigError("the canary pool is empty", path=str(path))
    return CanaryPool(tuple(canaries))


def write_pool(canaries: Iterable[Canary], path: Path) -> None:
    """Writes a pool file that `load_pool` reads back unchanged."""
    lines = [c.model_dump_json(exclude_defaults=True) for c in canaries]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def evidence(peer: str, canary: Canary, passed: bool, model: str = "") -> Evidence:
    """What the reputation engine learns from one canary's reply."""
    return Evidence(
        peer, "canary", passed, "canary_passed" if passed else "canary_failed", model=model
    )


def judge(peer: str, canary: Canary, reply: int | str | None, model: str = "") -> Evidence:
    """The evidence of one reply: for a multiple-choice canary the chosen option's index
    (None: it chose none), for a free-text canary the reply's text. A reply of the other
    kind fails. (A multiple-choice reply as option scores or as text naming a letter is
    read in node/canaries.py.)"""
    if isinstance(canary, MultipleChoiceCanary):
        passed = isinstance(reply, int) and not isinstance(reply, bool) and canary.passed(reply)
    else:
        passed = isinstance(reply, str) and canary.passed(reply)
    return evidence(peer, canary, passed, model)
