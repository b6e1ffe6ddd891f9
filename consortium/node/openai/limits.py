"""Per-caller rate limits of the OpenAI-compatible endpoint ([openai] in node.toml):
requests and tokens over a rolling window (a minute), per caller owner (an API key, or
the anonymous loopback user). 0 means unlimited.

A request is counted when it is admitted, before its body is read (one refused later,
400 or 404, still counts); its tokens (prompt + completion) once it is answered, or,
when its client goes away first, an estimate of what it cost so far (routes.py). A
caller is refused (429, with the seconds until it may try again) while its window holds
`requests_per_minute` requests, or at least `tokens_per_minute` tokens. The tokens are
checked when a request is admitted, not while it runs: requests admitted together may
take the window past the limit (the next one then waits).
Kept in memory: a restart forgets the windows.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

WINDOW_S = 60.0


@dataclass(frozen=True)
class Limited:
    """Why a caller must wait, and for how long."""

    kind: Literal["requests", "tokens"]
    retry_after_s: float
    message: str


@dataclass
class _Window:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0

    def prune(self, since: float) -> None:
        while self.requests and self.requests[0] <= since:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= since:
            self.token_sum -= self.tokens.popleft()[1]

    @property
    def empty(self) -> bool:
        return not self.requests and not self.tokens


class RateLimits:
    def __init__(
        self,
        requests_per_minute: int,
        tokens_per_minute: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        window_s: float = WINDOW_S,
    ) -> None:
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._clock = clock
        self._window_s = window_s
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def admit(self, owner: str) -> Limited | None:
        """Counts a request of `owner`'s, or says why it must wait (not counted then)."""
        now = self._clock()
        with self._lock:
            w = self._window(owner, now)
            rpm, tpm = self.requests_per_minute, self.tokens_per_minute
            if rpm and len(w.requests) >= rpm:
                return Limited(
                    "requests",
                    w.requests[0] + self._window_s - now,
                    f"Rate limit reached: {rpm} requests per minute",
                )
            if tpm and w.token_sum >= tpm:
                return Limited(
                    "tokens",
                    self._tokens_free_at(w, tpm) - now,
                    f"Rate limit reached: {tpm} tokens per minute",
                )
            w.requests.append(now)
            return None

    def spend(self, owner: str, tokens: int) -> None:
        """Counts the tokens of `owner`'s answered request."""
        if tokens <= 0:
            return
        now = self._clock()
        with self._lock:
            w = self._window(owner, now)
            w.tokens.append((now, tokens))
            w.token_sum += tokens

    def _window(self, owner: str, now: float) -> _Window:
        since = now - self._window_s
        # Forget the callers with nothing left in their window (memory stays bounded by
        # the callers of the last minute).
        for key in [k for k, w in self._windows.items() if k != owner]:
            other = self._windows[key]
            other.prune(since)
            if other.empty:
                del self._windows[key]
        w = self._windows.setdefault(owner, _Window())
        w.prune(since)
        return w

    def _tokens_free_at(self, w: _Window, limit: int) -> float:
        """When enough of the window's tokens will have left it to be under `limit`."""
        total = w.token_sum
        for at, n in w.tokens:
            total -= n
            if total < limit:
                return at + self._window_s
        return self._clock() + self._window_s
