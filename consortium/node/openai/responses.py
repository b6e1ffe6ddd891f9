"""OpenAI's response objects, whole and as stream chunks: `chat.completion` /
`chat.completion.chunk` for chat, `text_completion` for text completions.

One `Shape` per response: its id (`chatcmpl-<task id>` / `cmpl-<task id>`, the task in
the node's store), `created` and `model` are the same in every chunk. The answer's
provenance goes in a top-level `consortium` field (with the task id) of the whole
response and of the last choice chunk.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from consortium.llm.base import TokenLogprob

# What OpenAI reports for a log-probability too small to represent.
FLOOR_LOGPROB = -9999.0


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def wire(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


def _logprob(value: float) -> float:
    return value if math.isfinite(value) else FLOOR_LOGPROB


def _token(text: str, logprob: float) -> dict[str, Any]:
    return {
        "token": text,
        "logprob": _logprob(logprob),
        "bytes": list(text.encode("utf-8", "surrogatepass")),
    }


@dataclass
class Shape:
    """The objects of one response. `top_logprobs`: how many alternatives per token the
    request asked for (None: no logprobs asked)."""

    task_id: str
    model: str
    top_logprobs: int | None = None
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    id_prefix = ""
    object_name = ""
    chunk_object = ""

    @property
    def id(self) -> str:
        return f"{self.id_prefix}{self.task_id}"

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def consortium(self, provenance: dict[str, Any] | None) -> dict[str, Any]:
        return {**(provenance or {}), "task_id": self.task_id}

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        out = {**self._head(self.chunk_object), "choices": choices}
        if self.include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        return {**self._head(self.chunk_object), "choices": [], "usage": usage.wire()}

    # -- per API ---------------------------------------------------------------------

    def logprobs(self, tokens: Sequence[TokenLogprob], offset: int = 0) -> Any:
        raise NotImplementedError

    def opening(self) -> dict[str, Any] | None:
        """The first chunk, before any text (chat: the assistant's role)."""
        return None

    def content(self, text: str | None, *, whole: bool) -> dict[str, Any]:
        """A choice's text: streamed (`whole` False; None in the closing chunk) or whole."""
        raise NotImplementedError

    def _choice(self, content: dict[str, Any], logprobs: Any, finish: str | None) -> dict[str, Any]:
        return {"index": 0, **content, "logprobs": logprobs, "finish_reason": finish}

    def piece(self, text: str, tokens: Sequence[TokenLogprob], offset: int) -> dict[str, Any]:
        content = self.content(text, whole=False)
        return self._chunk([self._choice(content, self.logprobs(tokens, offset), None)])

    def closing(self, finish: str, provenance: dict[str, Any] | None) -> dict[str, Any]:
        out = self._chunk([self._choice(self.content(None, whole=False), None, finish)])
        out["consortium"] = self.consortium(provenance)
        return out

    def whole(
        self,
        text: str,
        tokens: Sequence[TokenLogprob],
        finish: str,
        usage: Usage,
        provenance: dict[str, Any] | None,
    ) -> dict[str, Any]:
        return {
            **self._head(self.object_name),
            "choices": [
                self._choice(self.content(text, whole=True), self.logprobs(tokens), finish)
            ],
            "usage": usage.wire(),
            "consortium": self.consortium(provenance),
        }


class ChatShape(Shape):
    id_prefix = "chatcmpl-"
    object_name = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def logprobs(self, tokens: Sequence[TokenLogprob], offset: int = 0) -> Any:
        if self.top_logprobs is None:
            return None
        n = self.top_logprobs
        return {
            "content": [
                {
                    **_token(t.token, t.logprob),
                    "top_logprobs": [_token(text, lp) for text, lp in t.top[:n]],
                }
                for t in tokens
            ],
            "refusal": None,
        }

    def opening(self) -> dict[str, Any]:
        role = {"delta": {"role": "assistant", "content": ""}}
        return self._chunk([self._choice(role, None, None)])

    def content(self, text: str | None, *, whole: bool) -> dict[str, Any]:
        if whole:
            return {"message": {"role": "assistant", "content": text, "refusal": None}}
        return {"delta": {} if text is None else {"content": text}}


class TextShape(Shape):
    id_prefix = "cmpl-"
    object_name = "text_completion"
    chunk_object = "text_completion"

    def logprobs(self, tokens: Sequence[TokenLogprob], offset: int = 0) -> Any:
        if self.top_logprobs is None:
            return None
        offsets = []
        for t in tokens:
            offsets.append(offset)
            offset += len(t.token)
        n = self.top_logprobs
        return {
            "tokens": [t.token for t in tokens],
            "token_logprobs": [_logprob(t.logprob) for t in tokens],
            "top_logprobs": [{text: _logprob(lp) for text, lp in t.top[:n]} for t in tokens]
            if n
            else None,
            "text_offset": offsets,
        }

    def content(self, text: str | None, *, whole: bool) -> dict[str, Any]:
        return {"text": text or ""}
