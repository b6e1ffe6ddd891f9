"""`consortium bench redaction` (answer quality): what pseudonymization costs on questions
whose answer is the personal data itself.

The task set, from Presidio's synthetic set: for each text with exactly one labelled span
of a type in `QUESTIONS`, one extraction question, "In the text below, what is <the email
address>? Answer with it only." followed by the text. Items are taken round-robin over the
types of `QUESTIONS` in the set's order (when one type runs out, PERSON and the others
fill in). Each is answered by the model (greedy, at most `MAX_TOKENS` tokens, first line)
four times: on the prompt as it is; on the prompt as the node would send it under the
default policy (the whole prompt, question included, through the detector and `rewrite`,
a vault per question); with only the text pseudonymized (the question's words kept),
which separates the cost of the placeholders from that of the detector rewriting the
question; and as the node sends it with `HINT` (what placeholders are) put before it.
Pseudonymized answers are restored through their vault. An answer is right when
the labelled value appears in it, both compared case-insensitively with runs of
whitespace made one space. Model answers are cached per prompt
(`~/.cache/consortium/eval`), so a rerun only scores.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consortium.evaluation.collab_eval import paired_interval
from consortium.evaluation.harness import Start, load_backend
from consortium.evaluation.metrics import accuracy_interval
from consortium.evaluation.outputs import generate
from consortium.evaluation.redaction_eval import Row
from consortium.evaluation.redaction_roundtrip import default_actions
from consortium.llm.base import GenerationParams
from consortium.llm.registry import cache_dir
from consortium.redaction.detector import Detector
from consortium.redaction.pseudonyms import PLACEHOLDER, Vault
from consortium.redaction.rewrite import rewrite

FORMAT_VERSION = 1
MAX_TOKENS = 32
PARAMS = GenerationParams(max_tokens=MAX_TOKENS, temperature=0.0, stop=("\n",))

# Labelled type -> what the question asks for.
QUESTIONS: dict[str, str] = {
    "PERSON": "the full name of the person",
    "EMAIL_ADDRESS": "the email address",
    "PHONE_NUMBER": "the phone number",
    "CREDIT_CARD": "the credit card number",
    "IBAN_CODE": "the IBAN",
    "US_SSN": "the social security number",
    "IP_ADDRESS": "the IP address",
}
# What a node could tell the peer's model about placeholders (measured as `hinted`).
HINT = (
    "Text in angle brackets with a number, like <TYPE_1>, stands for a hidden value: when"
    " your answer needs that value, write the placeholder exactly as it appears."
)


@dataclass(frozen=True)
class QaItem:
    id: str  # "<row index>:<type>"
    entity_type: str
    value: str
    text: str
    prompt: str


def question_prompt(entity_type: str, text: str) -> str:
    return f"In the text below, what is {QUESTIONS[entity_type]}? Answer with it only.\n\n{text}"


def select_items(rows: Sequence[Row], count: int) -> list[QaItem]:
    """Up to `count` questions, round-robin over the types of `QUESTIONS`."""
    pools: dict[str, list[QaItem]] = {t: [] for t in QUESTIONS}
    for i, row in enumerate(rows):
        per_type = Counter(g.entity_type for g in row.spans)
        for g in row.spans:
            if g.entity_type in pools and per_type[g.entity_type] == 1 and g.value.strip():
                pools[g.entity_type].append(
                    QaItem(
                        f"{i}:{g.entity_type}",
                        g.entity_type,
                        g.value,
                        row.text,
                        question_prompt(g.entity_type, row.text),
                    )
                )
    out: list[QaItem] = []
    depth = 0
    while len(out) < count and any(depth < len(p) for p in pools.values()):
        for t in QUESTIONS:
            if depth < len(pools[t]) and len(out) < count:
                out.append(pools[t][depth])
        depth += 1
    return out


def normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def is_right(value: str, answer: str) -> bool:
    """The labelled value appears in the answer (case and whitespace runs ignored)."""
    return normalise(value) in normalise(answer)


def answers_path(model: str, directory: Path | None = None) -> Path:
    base = directory or cache_dir() / "eval"
    return base / f"redaction-qa--{model}--v{FORMAT_VERSION}.jsonl"


def answer_key(prompt: str) -> str:
    """A prompt's key in the answers cache (the decoding parameters are part of it)."""
    return hashlib.sha256(f"{PARAMS!r}\x00{prompt}".encode()).hexdigest()


def cached_answers(
    model: str,
    prompts: Sequence[str],
    *,
    cache: Path | None = None,
    start: Start | None = None,
) -> list[str]:
    """The model's greedy answer (first line) to each prompt; only the prompts the cache
    file lacks are run, on the model loaded once (`harness.load_backend`)."""
    path = answers_path(model, cache)
    done: dict[str, str] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                done[str(record["key"])] = str(record["answer"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line
    missing = [p for p in dict.fromkeys(prompts) if answer_key(p) not in done]
    if missing:
        backend = load_backend(model)
        advance = start(f"{model} answers", len(missing)) if start else None
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with path.open("a", encoding="utf-8") as f:
                for p in missing:
                    answer = generate(backend, p, PARAMS).text.strip()
                    done[answer_key(p)] = answer
                    f.write(json.dumps({"key": answer_key(p), "answer": answer}) + "\n")
                    f.flush()
                    if advance is not None:
                        advance(1)
        finally:
            backend.close()
    return [done[answer_key(p)] for p in prompts]


@dataclass(frozen=True)
class Pseudonymized:
    prompt: str  # as sent
    vault: Vault
    hidden: bool  # the labelled value is not in the prompt as sent


def pseudonymize_items(
    items: Sequence[QaItem], detector: Detector, *, whole_prompt: bool = True, hint: bool = False
) -> list[Pseudonymized]:
    """Each question as the node would send it under the default policy: the whole
    prompt through the detector and `rewrite` (`whole_prompt`), or only the text the
    question is about (the question's own words kept); with `hint`, `HINT` is put before
    the rewritten prompt (words a node could add; not sent through the detector)."""
    actions = default_actions()
    out: list[Pseudonymized] = []
    for it in items:
        vault = Vault()
        if whole_prompt:
            sent = rewrite(it.prompt, detector.detect(it.prompt), actions, vault).text
        else:
            text = rewrite(it.text, detector.detect(it.text), actions, vault).text
            sent = question_prompt(it.entity_type, text)
        if hint:
            sent = f"{HINT}\n\n{sent}"
        out.append(Pseudonymized(sent, vault, it.value not in sent))
    return out


def _rate(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def score_condition(
    items: Sequence[QaItem],
    original_right: Sequence[bool],
    pseudo: Sequence[Pseudonymized],
    answers: Sequence[str],
    *,
    samples: int = 1000,
) -> dict[str, Any]:
    """One pseudonymized condition against the original: accuracy with the answers
    restored through each question's vault, the paired difference with a bootstrap 95 %
    interval, per type, and how often the value was hidden and a placeholder answered."""
    restored = [p.vault.restore(a) for p, a in zip(pseudo, answers, strict=True)]
    right = [is_right(it.value, a) for it, a in zip(items, restored, strict=True)]
    hidden = [i for i, p in enumerate(pseudo) if p.hidden]
    by_type: dict[str, dict[str, float]] = {}
    for t in QUESTIONS:
        idx = [i for i, it in enumerate(items) if it.entity_type == t]
        if idx:
            by_type[t] = {
                "n": len(idx),
                "original": _rate([original_right[i] for i in idx]),
                "pseudonymized": _rate([right[i] for i in idx]),
                "value_hidden": _rate([pseudo[i].hidden for i in idx]),
            }
    issued = [
        any(m.group(0) in p.vault.issued() for m in PLACEHOLDER.finditer(a))
        for p, a in zip(pseudo, answers, strict=True)
    ]
    result: dict[str, Any] = {
        "accuracy": _rate(right),
        "difference": _rate(right) - _rate(original_right),
        "by_type": by_type,
        "value_hidden": _rate([p.hidden for p in pseudo]),
        "on_hidden": {
            "n": len(hidden),
            "original": _rate([original_right[i] for i in hidden]),
            "pseudonymized": _rate([right[i] for i in hidden]),
        },
        "answers_with_a_placeholder": _rate(issued),
        "lost": sum(o and not r for o, r in zip(original_right, right, strict=True)),
        "gained": sum(r and not o for o, r in zip(original_right, right, strict=True)),
    }
    if items:
        ci = accuracy_interval(right, samples=samples)
        result["accuracy_ci95"] = [round(ci.low, 4), round(ci.high, 4)]
        result["difference_ci95"] = paired_interval(right, original_right, samples=samples)
    return result


def score_original(items: Sequence[QaItem], answers: Sequence[str]) -> list[bool]:
    return [is_right(it.value, a) for it, a in zip(items, answers, strict=True)]


def evaluate_quality(
    rows: Sequence[Row],
    detector: Detector,
    *,
    items: int = 105,
    model: str = "smollm2-135m",
    cache: Path | None = None,
    start: Start | None = None,
) -> dict[str, Any]:
    """The extraction task set answered by `model` on the original prompts, on the
    prompts as the node sends them (whole prompt pseudonymized), with only the text
    pseudonymized, and as the node sends them after `HINT`."""
    qa = select_items(rows, items)
    whole = pseudonymize_items(qa, detector, whole_prompt=True)
    text_only = pseudonymize_items(qa, detector, whole_prompt=False)
    hinted = pseudonymize_items(qa, detector, hint=True)
    n = len(qa)
    prompts = [it.prompt for it in qa]
    for condition in (whole, text_only, hinted):
        prompts += [p.prompt for p in condition]
    answers = cached_answers(model, prompts, cache=cache, start=start)
    original = score_original(qa, answers[:n])
    result: dict[str, Any] = {
        "n": n,
        "original_accuracy": _rate(original),
        "whole_prompt": score_condition(qa, original, whole, answers[n : 2 * n]),
        "text_only": score_condition(qa, original, text_only, answers[2 * n : 3 * n]),
        "hinted": score_condition(qa, original, hinted, answers[3 * n :]),
    }
    if qa:
        ci = accuracy_interval(original)
        result["original_ci95"] = [round(ci.low, 4), round(ci.high, 4)]
    result["_setup"] = {
        "model": model,
        "task": "extraction: 'In the text below, what is <X>? Answer with it only.' on texts"
        " with exactly one labelled span of X's type; right when the labelled value appears"
        " in the (restored) answer, case and whitespace runs ignored",
        "items_by_type": dict(Counter(it.entity_type for it in qa)),
        "decoding": f"greedy, max {MAX_TOKENS} tokens, first line",
        "hint": HINT,
        "cache": str(answers_path(model, cache)),
    }
    return result
