"""What a model's scheduler reports about its load: a snapshot (`ModelLoad`, for
/healthz and `consortium node status`) and events (`LoadObserver`, for OpenTelemetry
metrics). `llm/` only calls the observer; node/telemetry.py implements it, and the
null observer stands in where nothing records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ModelLoad:
    """The model's queue and slots at one moment, and counters since it started."""

    slots: int  # requests the model serves at once ([model] parallel)
    slots_busy: int
    queued: int  # requests waiting for a slot
    max_queue: int
    steps: int = 0  # decode steps (one step advances every active sequence)
    step_sequences: int = 0  # sequences advanced, summed over steps (mean batch: /steps)
    prefix_lookups: int = 0  # prompts prefilled
    prefix_hits: int = 0  # of them, prompts that reused a cached prefix
    prompt_tokens: int = 0  # prompt tokens of those prompts
    prefix_tokens_reused: int = 0  # of them, tokens not computed again
    refused: int = 0  # requests refused: queue full or waited past queue_timeout_s

    @property
    def mean_batch(self) -> float:
        return self.step_sequences / self.steps if self.steps else 0.0

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_lookups if self.prefix_lookups else 0.0


class LoadObserver(Protocol):
    def queue_wait(self, seconds: float, lane: str) -> None:
        """A request left the queue for a slot after `seconds`."""
        ...

    def refused(self, reason: str) -> None:
        """A request was refused: "queue_full" or "queue_timeout"."""
        ...

    def step(self, sequences: int, tokens: int) -> None:
        """One decode step advanced `sequences` sequences with `tokens` tokens
        (prompt chunks included)."""
        ...

    def prefix(self, reused: int, prompt: int) -> None:
        """A prompt of `prompt` tokens was prefilled reusing `reused` cached ones."""
        ...


class NullLoadObserver:
    def queue_wait(self, seconds: float, lane: str) -> None:
        pass

    def refused(self, reason: str) -> None:
        pass

    def step(self, sequences: int, tokens: int) -> None:
        pass

    def prefix(self, reused: int, prompt: int) -> None:
        pass
