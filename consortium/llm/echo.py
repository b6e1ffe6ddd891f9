"""A deterministic echo "model" for tests about the network layer, never about models.

It answers with the words of the last user message, one word per token, optionally
pausing between tokens so tests can cancel mid-generation. It holds no state between
calls, so it may serve `parallel` requests at once (default 1: one at a time, the timing
the network tests were written against).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Sequence

from consortium.errors import PromptTooLongError
from consortium.llm.base import (
    ChatMessage,
    Chunk,
    Completion,
    FinishReason,
    GenerationParams,
    ModelInfo,
    Timings,
    TokenLogprob,
    Usage,
    refuse_response_format,
)


class EchoBackend:
    def __init__(
        self,
        name: str = "echo",
        *,
        token_delay_s: float = 0.0,
        context_size: int = 4096,
        parallel: int = 1,
    ) -> None:
        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, not {parallel}")
        self._info = ModelInfo(
            name=name,
            backend="echo",
            context_size=context_size,
            chat=True,
            concurrency=parallel,
        )
        self._delay = token_delay_s

    @property
    def info(self) -> ModelInfo:
        return self._info

    def close(self) -> None:
        pass

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def stream_chat(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: threading.Event
    ) -> Generator[Chunk, None, Completion]:
        refuse_response_format(params, "echo")
        users = [m.content for m in messages if m.role == "user"]
        prompt = "\n".join(m.content for m in messages)
        return self._echo(users[-1] if users else "", self.count_tokens(prompt), params, cancel)

    def stream_complete(
        self, prompt: str, params: GenerationParams, cancel: threading.Event
    ) -> Generator[Chunk, None, Completion]:
        refuse_response_format(params, "echo")
        return self._echo(prompt, self.count_tokens(prompt), params, cancel)

    def _echo(
        self, text: str, n_in: int, params: GenerationParams, cancel: threading.Event
    ) -> Generator[Chunk, None, Completion]:
        # As every backend does, before any work: a prompt the context cannot hold.
        if n_in >= self._info.context_size:
            raise PromptTooLongError(
                f"prompt has {n_in} tokens; the context of {self._info.name} "
                f"holds {self._info.context_size}"
            )
        started = time.perf_counter()
        words = text.split()
        out: list[str] = []
        lps: list[TokenLogprob] = []
        finish: FinishReason = "stop"
        for i, word in enumerate(words):
            if i >= params.max_tokens:
                finish = "length"
                break
            if cancel.is_set():
                finish = "cancelled"
                break
            piece = word if i == 0 else " " + word
            lp = TokenLogprob(piece, 0.0) if params.logprobs else None
            if lp:
                lps.append(lp)
            out.append(piece)
            yield Chunk(piece, lp)
            if self._delay:
                cancel.wait(self._delay)
        total = time.perf_counter() - started
        return Completion(
            text="".join(out),
            finish_reason=finish,
            usage=Usage(n_in, len(out)),
            timings=Timings(prompt_s=0.0, total_s=total),
            logprobs=lps,
        )

    def score(self, prompt: str, continuations: Sequence[str]) -> list[float]:
        # Deterministic: continuations sharing more words with the prompt score higher.
        words = set(prompt.lower().split())
        return [float(sum(w in words for w in c.lower().split())) for c in continuations]
