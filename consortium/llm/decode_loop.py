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


class TokenText(Protocol):
    """What a sequence needs of the model's vocabulary."""

    def is_end(self, token: int) -> bool: ...

    def piece(self, token: int) -> str: ...

    def detokenizer(self) -> Detokenizer: ...


class Sequence:
    """One generation between decode steps: fed the logits of its next token (`feed`), it
    chooses the token, keeps text, stops, log-probabilities, usage and timings, and says
    which token to evaluate next (`next_token`) or that it is `done`. The same state runs
    a lone generation (`generate`) and a sequence inside a batch (llm/batching.py), so the
    two cannot drift apart.
    """

    def __init__(
        self,
        text_of: TokenText,
        tokens: list[int],
        params: GenerationParams,
        cancel: threading.Event,
        *,
        context_size: int,
        model_name: str,
        constraint: Constraint | None = None,
    ) -> None:
        self.started = time.perf_counter()
        if len(tokens) >= context_size:
            raise PromptTooLongError(
                f"prompt has {len(tokens)} tokens; the context of {model_name} holds {context_size}"
            )
        self.tokens = tokens
        self.params = params
        self.cancel = cancel
        self.constraint = constraint
        self._text_of = text_of
        self._budget = min(params.max_tokens, context_size - len(tokens))
        self._rng = np.random.default_rng(params.seed)
        self._detok = text_of.detokenizer()
        self._stops = StopMatcher(params.stop)
        self._text: list[str] = []
        self._logprobs: list[TokenLogprob] = []
        self._pending: list[TokenLogprob] = []
        self._step = 0
        self.n_out = 0
        self.prompt_s = 0.0
        self.finish: FinishReason = "length"
        self.done = False
        # The token to evaluate for the next step's logits (None before the first).
        self.next_token: int | None = None

    def feed(self, logits: Logits) -> Chunk | None:
        """Chooses the next token from `logits`; returns the text it completes, if any."""
        assert not self.done
        params, constraint, text_of = self.params, self.constraint, self._text_of
        if constraint is None:
            token = sample(logits, params, self._rng)
        else:
            token = _choose(logits, params, self._rng, constraint)
        if self._step == 0:
            self.prompt_s = time.perf_counter() - self.started
        self._step += 1
        if text_of.is_end(token):
            self._end("stop")
            return None
        if constraint is not None:
            # Once the value is complete, whitespace is all the grammar still allows
            # before the end: end there rather than spend tokens on it.
            if not text_of.piece(token).strip() and constraint.can_end():
                self._end("stop")
                return None
            constraint.accept(token)
        self.n_out += 1
        if params.logprobs:
            self._pending.append(
                token_logprob(
                    logits, token, text_of.piece(token), params.top_logprobs, text_of.piece
                )
            )
        chunk = None
        emitted, stopped = self._stops.feed(self._detok.feed(token))
        if emitted:
            chunk = self._emit(emitted)
        if stopped:
            self._end("stop")
        elif self.cancel.is_set():
            self._end("cancelled")
        elif self._step >= self._budget:
            self._end("length")
        else:
            self.next_token = token
        return chunk

    def stop(self, reason: FinishReason) -> None:
        """Ends the sequence before its next token (cancelled, or its batch failed)."""
        if not self.done:
            self._end(reason)

    def _emit(self, text: str) -> Chunk:
        pending = self._pending
        self._text.append(text)
        self._logprobs.extend(pending)
        self._pending = []
        return Chunk(text, pending[-1] if pending else None)

    def _end(self, reason: FinishReason) -> None:
        self.finish = reason
        self.done = True
        self.next_token = None

    def tail(self) -> Chunk | None:
        """The text held back at the end (an incomplete character, a possible stop)."""
        if self._stops.stopped:
            return None
        tail = self._stops.flush(self._detok.flush())
        return self._emit(tail) if tail else None

    def completion(self) -> Completion:
        return Completion(
            text="".join(self._text),
            finish_reason=self.finish,
            usage=Usage(input_tokens=len(self.tokens), output_tokens=self.n_out),
            timings=Timings(prompt_s=self.prompt_s, total_s=time.perf_counter() - self.started),
            logprobs=self._logprobs,
        )


def generate(
    decoder: Decoder,
    tokens: list[int],
    params: GenerationParams,
    cancel: threading.Event,
    constraint: Constraint | None = None,
) -> Generator[Chunk, None, Completion]:
    """Generates from `tokens` alone; with a `constraint`, only tokens it allows, ending
    (as a stop) when it is complete. Log-probabilities are the model's, before the
    constraint."""
    seq = Sequence(
        decoder,
        tokens,
        params,
        cancel,
        context_size=decoder.context_size,
        model_name=decoder.model_name,
        constraint=constraint,
    )
    logits = decoder.prefill(tokens)
    while True:
        chunk = seq.feed(logits)
        if chunk is not None:
            yield chunk
        if seq.next_token is None:
            break
        logits = decoder.advance(seq.next_token)
    tail = seq.tail()
    if tail is not None:
        yield tail
    return seq.completion()
