"""The feature vector a learned router sees, computed from what the origin has locally:
the prompt, the local model's draft (confidence signals) and a sentence embedding of the
prompt. The same function serves training (evaluation harness, Flower clients) and
routing (the node), so a policy sees at run time what it was trained on; a policy
artifact names its features and is refused if they differ from these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from consortium.protocols.multiple_choice import Normalisation
from consortium.protocols.routing import Draft

# Option log-likelihoods become probabilities unnormalised: what the dev split chose for
# both bundled models (consortium bench routing prints the choice). A policy artifact
# records the normalisation its features were computed with.
DRAFT_NORMALISATION: Normalisation = "none"

MAX_OPTIONS = 5
SIGNAL_FEATURES: tuple[str, ...] = (
    "has_options",
    "n_options",
    "p_top1",
    "p_top2",
    "margin",
    "option_entropy",
    "log_p_top1",
    "gen_mean_logprob",
    "gen_min_logprob",
    "gen_first_entropy",
    "gen_agrees",
    "prompt_chars_log",
)


def feature_names(embedding_dim: int) -> tuple[str, ...]:
    return SIGNAL_FEATURES + tuple(f"emb_{i}" for i in range(embedding_dim))


def signal_features(prompt: str, draft: Draft | None, generated_choice: int | None) -> list[float]:
    """The confidence part of the vector (names in SIGNAL_FEATURES)."""
    probs = sorted(draft.option_probs, reverse=True) if draft and draft.option_probs else []
    has = 1.0 if probs else 0.0
    p1 = probs[0] if probs else 0.0
    p2 = probs[1] if len(probs) > 1 else 0.0
    entropy = -sum(p * math.log(p) for p in probs if p > 0)
    lps = draft.token_logprobs if draft else ()
    chosen = (
        max(range(len(draft.option_probs)), key=lambda i: draft.option_probs[i])
        if draft and draft.option_probs
        else None
    )
    return [
        has,
        float(len(probs)) / MAX_OPTIONS,
        p1,
        p2,
        p1 - p2,
        entropy,
        math.log(max(p1, 1e-12)) if probs else 0.0,
        sum(lps) / len(lps) if lps else 0.0,
        min(lps) if lps else 0.0,
        draft.first_entropy if draft else 0.0,
        1.0 if chosen is not None and generated_choice == chosen else 0.0,
        math.log1p(len(prompt)) / 10.0,
    ]


def features(
    prompt: str,
    draft: Draft | None,
    embedding: Sequence[float],
    generated_choice: int | None = None,
) -> list[float]:
    return signal_features(prompt, draft, generated_choice) + [float(x) for x in embedding]
