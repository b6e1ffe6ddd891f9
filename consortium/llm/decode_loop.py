"""The token-by-token generation loop shared by the backends.

A backend supplies a `Decoder` (prefill the prompt, advance by one token, say what ends
a sequence, turn tokens into text); this loop does the rest the same way for all of
them: sampling, log-probabilities, stop strings, cancellation between tokens, usage
and timings.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from typing import Protocol

import numpy as np

from consortium.errors import ModelError, PromptTooLongError
from consortium.llm.base import (
    Chunk,
    Completion,
    FinishReason,
    GenerationParams,
    Timings,
    TokenLogprob,
    Usage,
)
from consortium.llm.sampling import Logits, sample, token_logprob
from consortium.llm.stops import StopMatcher


class Detokenizer(Protocol):
    def feed(self, token: int) -> str:
        """Text completed by this token (may be empty while a character is incomplete)."""
        ...

    def flush(self) -> str: ...


class Decoder(Protocol):
    model_name: str
    context_size: int

    def prefill(self, tokens: list[int]) -> Logits: ...

    def advance(self, token: int) -> Logits: ...

    def is_end(self, token: int) -> bool: ...

    def piece(self, token: int) -> str: ...

    def detokenizer(self) -> Detokenizer: ...


class Constraint(Protocol):
    """Restricts which tokens may come next (a grammar), advanced token by token."""

    def allows(self, token: int) -> bool: ...

    def can_end(self) -> bool: ...

    def mask(self, logits: Logits) -> Logits: ...

    def accept(self, token: int) -> None: ...


def _choose(
    logits: Logits, params: GenerationParams, rng: np.random.Generator, constraint: Constraint
) -> int:
    """A token the constraint allows, drawn from the constrained distribution.

    Masking the whole vocabulary is the expensive part, so the unconstrained choice is
    tried first: when the constraint allows it, it is also the constrained choice at
    temperature 0 (the argmax), and without top-p a draw from the full distribution
    accepted when allowed and redrawn from the masked one otherwise has exactly the masked
    distribution. With top-p the nucleus depends on the mask, so it is always applied.
    """
    if params.temperature <= 0 or params.top_p >= 1.0:
        token = sample(logits, params, rng)
        if constraint.allows(token):
            return token
    masked = constraint.mask(logits)
    if not np.isfinite(masked).any():
        raise ModelError("the response_format grammar allows no next token")
    return sample(masked, params, rng)


def generate(
    decoder: Decoder,
    tokens: list[int],
    params: GenerationParams,
    cancel: threading.Event,
    constraint: Constraint | None = None,
) -> Generator[Chunk, None, Completion]:
    """Generates from `tokens`; with a `constraint`, only tokens it allows, ending (as a
    stop) when it is complete. Log-probabilities are the model's, before the constraint.
    """
    started = time.perf_counter()
    if len(tokens) >= decoder.context_size:
        raise PromptTooLongError(
            f"prompt has {len(tokens)} tokens; the context of {decoder.model_name} "
            f"holds {decoder.context_size}"
        )
    budget = min(params.max_tokens, decoder.context_size - len(tokens))
    logits = decoder.prefill(tokens)
    rng = np.random.default_rng(params.seed)
    detok = decoder.detokenizer()
    stops = StopMatcher(params.stop)
    text: list[str] = []
    logprobs: list[TokenLogprob] = []
    pending: list[TokenLogprob] = []
    n_out = 0
    prompt_s = 0.0
    finish: FinishReason = "length"
    for step in range(budget):
        if constraint is None:
            token = sample(logits, params, rng)
        else:
            token = _choose(logits, params, rng, constraint)
        if step == 0:
            prompt_s = time.perf_counter() - started
        if decoder.is_end(token):
            finish = "stop"
            break
        if constraint is not None:
            # Once the value is complete, whitespace is all the grammar still allows
            # before the end: end there rather than spend tokens on it.
            if not decoder.piece(token).strip() and constraint.can_end():
                finish = "stop"
                break
            constraint.accept(token)
        n_out += 1
        if params.logprobs:
            pending.append(
                token_logprob(
                    logits, token, decoder.piece(token), params.top_logprobs, decoder.piece
                )
            )
        emitted, stopped = stops.feed(detok.feed(token))
        if emitted:
            text.append(emitted)
            logprobs.extend(pending)
            yield Chunk(emitted, pending[-1] if pending else None)
            pending = []
        if stopped:
            finish = "stop"
            break
        if cancel.is_set():
            finish = "cancelled"
            break
        if step + 1 < budget:
            logits = decoder.advance(token)
    if not stops.stopped:
        tail = stops.flush(detok.flush())
        if tail:
            text.append(tail)
            logprobs.extend(pending)
            yield Chunk(tail, pending[-1] if pending else None)
    return Completion(
        text="".join(text),
        finish_reason=finish,
        usage=Usage(input_tokens=len(tokens), output_tokens=n_out),
        timings=Timings(prompt_s=prompt_s, total_s=time.perf_counter() - started),
        logprobs=logprobs,
    )
