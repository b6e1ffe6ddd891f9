"""The one interface every LLM backend implements, and the values it exchanges.

A backend is synchronous and single-threaded by contract: `ModelWorker` (worker.py)
owns it on a dedicated thread and serialises requests, so a backend never sees two
requests at once and never runs on the event loop. A backend whose calls are safe from
several threads at once says so with `ModelInfo.concurrency` > 1 (how many); the worker
then serves it from that many threads.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from consortium.errors import UnsupportedByModel

Role = Literal["system", "user", "assistant"]
# What a backend can do beyond chat and completion, checked where a request or a
# configured router needs it: `grammar` (generation constrained to JSON, `response_format`),
# `token_logprobs` (a log-probability per generated token), `option_scoring` (`score`:
# multiple-choice options by prompt log-likelihood).
Capability = Literal["grammar", "token_logprobs", "option_scoring"]
DEFAULT_CAPABILITIES: frozenset[Capability] = frozenset({"token_logprobs", "option_scoring"})


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True)
class ResponseFormat:
    """Constrains a generation to JSON: any JSON object (`json_object`), or a value that
    matches `schema`, a JSON Schema given as JSON text (`json_schema`)."""

    kind: Literal["json_object", "json_schema"]
    schema: str = ""


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    # Return the log-probability of each generated token and this many alternatives.
    logprobs: bool = False
    top_logprobs: int = 0
    seed: int | None = None
    # Needs the backend's `grammar` capability; a backend without it raises
    # UnsupportedByModel rather than generate unconstrained text. Token log-probabilities
    # stay the model's own, taken before the grammar masks any token.
    response_format: ResponseFormat | None = None


def refuse_response_format(params: GenerationParams, backend: str) -> None:
    """For a backend without the `grammar` capability: UnsupportedByModel when the request
    asks for JSON-constrained output, before anything is generated."""
    if params.response_format is not None:
        raise UnsupportedByModel(
            f"the {backend} backend cannot constrain output to JSON (response_format); "
            "use the llama_cpp backend"
        )


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Chunk:
    """One step of a streamed generation: the new text and, if asked for, its logprob.
    A chunk the worker merged from several steps keeps every step's in `merged`."""

    text: str
    logprob: TokenLogprob | None = None
    merged: tuple[TokenLogprob, ...] = ()

    @property
    def logprobs(self) -> tuple[TokenLogprob, ...]:
        """The log-probabilities of the tokens in this chunk, in order."""
        if self.merged:
            return self.merged
        return () if self.logprob is None else (self.logprob,)


FinishReason = Literal["stop", "length", "cancelled"]


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class Timings:
    """Seconds spent on the prompt (until the first token) and on the whole request."""

    prompt_s: float = 0.0
    total_s: float = 0.0


@dataclass
class Completion:
    text: str
    finish_reason: FinishReason
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)
    logprobs: list[TokenLogprob] = field(default_factory=list)

    @property
    def decode_tokens_per_s(self) -> float:
        decode_s = self.timings.total_s - self.timings.prompt_s
        # The first token comes with the prompt; the rest are decode steps.
        steps = max(self.usage.output_tokens - 1, 0)
        return steps / decode_s if decode_s > 0 and steps else 0.0


@dataclass(frozen=True)
class ModelInfo:
    name: str
    backend: str
    context_size: int
    chat: bool
    path: str = ""
    capabilities: frozenset[Capability] = DEFAULT_CAPABILITIES
    # Requests the backend may serve at once, each called from its own worker thread
    # (it must then be thread-safe); 1: one at a time.
    concurrency: int = 1


@runtime_checkable
class LLMBackend(Protocol):
    """What a node needs from a model. All methods block; call them through ModelWorker."""

    @property
    def info(self) -> ModelInfo: ...

    def count_tokens(self, text: str) -> int: ...

    def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        cancel: threading.Event,
    ) -> Generator[Chunk, None, Completion]:
        """Applies the model's chat template, yields the answer as it is generated and
        returns the whole completion (text, usage, timings, logprobs)."""
        ...

    def stream_complete(
        self, prompt: str, params: GenerationParams, cancel: threading.Event
    ) -> Generator[Chunk, None, Completion]:
        """Continues raw text (for base models and few-shot prompts)."""
        ...

    def score(self, prompt: str, continuations: Sequence[str]) -> list[float]:
        """Total log-likelihood of each continuation given the prompt (multiple choice)."""
        ...

    def close(self) -> None: ...
