"""`consortium bench collaborate`: horizontal protocols against the best single model.

From the cached outputs (every item): each model alone, and `vote` (the members' answer
probabilities averaged) with equal weights and with weights and temperatures chosen on
the tuning split. Live, on the first `live_limit` items (they need new model calls):
`debate` (full mesh, ring, star) and `mixture` across three members, and the best single
model's self-consistency (majority of sampled answers) at the vote's token budget.
Accuracy differences come with paired bootstrap 95 % intervals.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from consortium.evaluation.datasets import Item
from consortium.evaluation.outputs import ItemOutput
from consortium.evaluation.routing_eval import (
    NORMALISATIONS,
    SplitData,
    best_normalisation,
    correct,
    tokens_of,
)
from consortium.llm.base import ChatMessage, GenerationParams, LLMBackend
from consortium.node.option_scoring import score_options
from consortium.protocols.collaboration import (
    Member,
    Outcome,
    Scored,
    debate,
    majority,
    mixture,
    vote,
)
from consortium.protocols.multiple_choice import (
    Normalisation,
    OptionScores,
    Question,
    argmax,
    continuations,
    extract_choice,
    generative_prompt,
    scoring_prompt,
)

WEIGHT_GRID = [round(0.05 * i, 2) for i in range(21)]
TEMPERATURE_GRID = (0.5, 1.0, 2.0)


def _probs(out: ItemOutput, norm: Normalisation, temperature: float) -> Any:
    return np.asarray(out.scores.probabilities(norm, temperature))


def vote_correct(
    data: SplitData,
    norms: tuple[Normalisation, Normalisation],
    weight_local: float,
    temps: tuple[float, float],
) -> Any:
    """Per item: is the weighted average of the two models' probabilities right?"""
    right = []
    for it in data.items:
        p = weight_local * _probs(data.local[it.id], norms[0], temps[0]) + (
            1 - weight_local
        ) * _probs(data.strong[it.id], norms[1], temps[1])
        right.append(int(np.argmax(p)) == it.answer)
    return np.asarray(right, dtype=bool)


@dataclass(frozen=True)
class VoteSettings:
    weight_local: float
    temps: tuple[float, float]
    norms: tuple[Normalisation, Normalisation]
    dev_accuracy: float


def tune_vote(dev: SplitData) -> VoteSettings:
    """Weights, temperatures and each model's score normalisation, on the dev split."""
    best: VoteSettings | None = None
    for nl, ns in itertools.product(NORMALISATIONS, NORMALISATIONS):
        for w, tl, ts in itertools.product(WEIGHT_GRID, TEMPERATURE_GRID, TEMPERATURE_GRID):
            acc = float(vote_correct(dev, (nl, ns), w, (tl, ts)).mean())
            if best is None or acc > best.dev_accuracy + 1e-12:
                best = VoteSettings(w, (tl, ts), (nl, ns), acc)
    assert best is not None
    return best


def paired_interval(a: Any, b: Any, samples: int = 1000, seed: int = 0) -> list[float]:
    """95 % interval of mean(a) - mean(b) over items resampled together."""
    rng = np.random.default_rng(seed)
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    means = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(samples)]
    return [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]


class BackendMember:
    """A collaboration member backed by a model in this process (evaluation only; a node's
    members are its own worker and its peers)."""

    price_per_1k = 0.0

    def __init__(self, name: str, backend: LLMBackend, *, chat: bool = False) -> None:
        self.name = name
        self.backend = backend
        self.chat = chat

    async def score(self, question: Question, context: str) -> Scored:
        if not self.chat:
            scores = score_options(self.backend, question, context)
            tokens = self.backend.count_tokens(scoring_prompt(question, context))
            return Scored(scores, tokens + sum(scores.tokens))
        render = getattr(self.backend, "render_chat")  # noqa: B009 - llama.cpp backend only
        user = scoring_prompt(question, context).removesuffix("Answer:").strip()
        prompt, _ = render([ChatMessage("user", user + "\nGive the correct answer.")])
        conts = [c.strip() for c in continuations(question)]
        logprobs = self.backend.score(prompt, conts)
        base = self.backend.count_tokens(prompt)
        lengths = tuple(max(self.backend.count_tokens(prompt + c) - base, 1) for c in conts)
        scores = OptionScores(tuple(logprobs), lengths, tuple(len(c) for c in conts))
        return Scored(scores, base + sum(lengths))


def self_consistency(
    backend: LLMBackend, question: Question, budget_tokens: int, temperature: float = 0.8
) -> tuple[int | None, int, int]:
    """Sampled generative answers until the token budget is spent; the majority answer,
    the samples drawn and the tokens used."""
    prompt = generative_prompt(question)
    prompt_tokens = backend.count_tokens(prompt)
    choices: list[int] = []
    used = 0
    seed = 0
    while used + prompt_tokens + 4 <= budget_tokens or (not choices and seed < 1):
        params = GenerationParams(max_tokens=4, temperature=temperature, seed=seed)
        gen = (
            backend.stream_chat([ChatMessage("user", prompt)], params, threading.Event())
            if backend.info.chat
            else backend.stream_complete(prompt, params, threading.Event())
        )
        try:
            while True:
                next(gen)
        except StopIteration as stop:
            completion = stop.value
        used += prompt_tokens + completion.usage.output_tokens
        seed += 1
        choice = extract_choice(completion.text, question)
        if choice is not None:
            choices.append(choice)
    return (majority(choices) if choices else None), seed, used


def evaluate_collaboration(
    dev: SplitData,
    test: SplitData,
    *,
    live_limit: int = 0,
    load: Callable[[str], LLMBackend] | None = None,
    rounds: int = 2,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
) -> dict[str, Any]:
    norms = (best_normalisation(dev.local, dev.items), best_normalisation(dev.strong, dev.items))
    local_model = next(iter(test.local.values())).model
    strong_model = next(iter(test.strong.values())).model
    weak_right = correct(test.local, test.items, norms[0])
    strong_right = correct(test.strong, test.items, norms[1])
    best_single, best_right = (
        (strong_model, strong_right)
        if strong_right.mean() >= weak_right.mean()
        else (local_model, weak_right)
    )
    vote_tokens = int(
        sum(tokens_of(test.local[it.id]) + tokens_of(test.strong[it.id]) for it in test.items)
    )
    out: dict[str, Any] = {
        local_model: {
            "accuracy": round(float(weak_right.mean()), 4),
            "tokens": int(sum(tokens_of(test.local[it.id]) for it in test.items)),
        },
        strong_model: {
            "accuracy": round(float(strong_right.mean()), 4),
            "tokens": int(sum(tokens_of(test.strong[it.id]) for it in test.items)),
        },
    }
    equal = vote_correct(test, norms, 0.5, (1.0, 1.0))
    settings = tune_vote(dev)
    tuned = vote_correct(test, settings.norms, settings.weight_local, settings.temps)
    for name, right in (("vote_equal", equal), ("vote_tuned", tuned)):
        out[name] = {
            "accuracy": round(float(right.mean()), 4),
            "tokens": vote_tokens,
            "gain_over_best_single": round(float(right.mean() - best_right.mean()), 4),
            "gain_ci95": paired_interval(right, best_right),
        }
    setup: dict[str, Any] = {
        "tuning_split": dev.name,
        "evaluation_split": test.name,
        "items": len(test.items),
        "best_single": best_single,
        "normalisation": {"local": norms[0], "strong": norms[1]},
        "vote_tuned": {
            "weight_local": settings.weight_local,
            "temperatures": list(settings.temps),
            "normalisation": list(settings.norms),
            "dev_accuracy": round(settings.dev_accuracy, 4),
        },
    }
    if live_limit and load is not None:
        live_items = test.items[:live_limit]
        out.update(_live(live_items, test, norms, settings, load, rounds, best_single, progress))
        setup["live_items"] = len(live_items)
        setup["live_members"] = [local_model, f"{local_model} (chat prompt)", strong_model]
        setup["rounds"] = rounds
    out["_setup"] = setup
    return out


def _live(
    items: Sequence[Item],
    test: SplitData,
    norms: tuple[Normalisation, Normalisation],
    settings: VoteSettings,
    load: Callable[[str], LLMBackend],
    rounds: int,
    best_single: str,
    progress: Callable[[str, int], Callable[[int], None]] | None,
) -> dict[str, Any]:
    local_model = next(iter(test.local.values())).model
    strong_model = next(iter(test.strong.values())).model
    local_b, strong_b = load(local_model), load(strong_model)
    members: list[Member] = [
        BackendMember(local_model, local_b),
        BackendMember(f"{local_model}-chat", local_b, chat=True),
        BackendMember(strong_model, strong_b),
    ]
    runs: dict[str, Callable[[Question], Any]] = {
        "vote_3": lambda q: vote(members, q, norm="tokens"),
        "debate_full": lambda q: debate(members, q, rounds=rounds, topology="full"),
        "debate_ring": lambda q: debate(members, q, rounds=rounds, topology="ring"),
        "debate_star": lambda q: debate(members, q, rounds=rounds, topology="star"),
        "mixture": lambda q: mixture(members[:2], members[2], q),
    }
    right: dict[str, list[bool]] = {name: [] for name in [*runs, "self_consistency"]}
    tokens: dict[str, int] = dict.fromkeys(right, 0)
    single = [(test.strong if best_single == strong_model else test.local)[it.id] for it in items]
    single_right = [
        argmax(o.scores.normalised(norms[1])) == it.answer
        for o, it in zip(single, items, strict=True)
    ]
    advance = progress("live protocols", len(items)) if progress else (lambda _n: None)
    sc_backend = strong_b if best_single == strong_model else local_b
    try:
        for it in items:
            budget = tokens_of(test.local[it.id]) + tokens_of(test.strong[it.id])
            for name, run in runs.items():
                outcome: Outcome = asyncio.run(run(it.question))
                right[name].append(outcome.choice == it.answer)
                tokens[name] += outcome.tokens
            choice, _, used = self_consistency(sc_backend, it.question, budget)
            right["self_consistency"].append(choice == it.answer)
            tokens["self_consistency"] += used
            advance(1)
    finally:
        local_b.close()
        strong_b.close()
    base = np.asarray(single_right, dtype=bool)
    result: dict[str, Any] = {}
    for name, r in right.items():
        arr = np.asarray(r, dtype=bool)
        result[f"live_{name}"] = {
            "accuracy": round(float(arr.mean()), 4),
            "tokens": tokens[name],
            "gain_over_best_single": round(float(arr.mean() - base.mean()), 4),
            "gain_ci95": paired_interval(arr, base),
        }
    result[f"live_{best_single}"] = {"accuracy": round(float(base.mean()), 4)}
    return result
