"""Token selection and log-probabilities over a logits vector, shared by all backends."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from consortium.llm.base import GenerationParams, TokenLogprob

Logits = npt.NDArray[np.float32]


def log_softmax(logits: Logits) -> Logits:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    out: Logits = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


def sample(logits: Logits, params: GenerationParams, rng: np.random.Generator) -> int:
    """Greedy at temperature 0; otherwise temperature and nucleus (top-p) sampling."""
    if params.temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / params.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs)
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, params.top_p)) + 1]
        kept = probs[keep] / probs[keep].sum()
        return int(keep[rng.choice(len(keep), p=kept)])
    return int(rng.choice(len(probs), p=probs))


def token_logprob(
    logits: Logits, token: int, text: str, top: int, piece: Callable[[int], str]
) -> TokenLogprob:
    """The chosen token's log-probability and the `top` most likely alternatives."""
    lps = log_softmax(logits)
    alternatives: tuple[tuple[str, float], ...] = ()
    if top > 0:
        idx = np.argpartition(-lps, top)[:top]
        idx = idx[np.argsort(-lps[idx])]
        alternatives = tuple((piece(int(i)), float(lps[i])) for i in idx)
    return TokenLogprob(text, float(lps[token]), alternatives)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
