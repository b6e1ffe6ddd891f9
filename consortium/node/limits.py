"""Per-caller limits, one set for every API of the node ([limits] in node.toml): requests
per minute, tokens per minute and requests in progress, per caller (an API key, or the
anonymous loopback user), whatever the binding: A2A over gRPC, A2A JSON-RPC, /v1. One
`CallerLimits` object is consulted by the A2A request handler and the OpenAI-compatible
API alike, so a key's calls over all three share one window. 0 means unlimited.

- Requests: every call is counted once its caller is admitted, on every A2A method and
  every /v1 route (/v1/models too), before anything else runs; a call refused later
  (400, task not found...) still counts.
- Tokens: a task (an A2A SendMessage / SendStreamingMessage, a /v1 completion) reserves
  its prompt (estimated at one token per TOKEN_BYTES bytes of UTF-8) plus its max_tokens
  when it is admitted, and is refused while the window's tokens (spent and reserved)
  plus that reservation would exceed `tokens_per_minute`; so requests admitted together
  cannot take the window past the limit. When the task ends, the reservation is settled
  to what it used: the answer's usage, or, when it ended otherwise (canceled, the client
  gone, failed), the estimate of its prompt and the text generated so far; a task refused
  before its generation (prompt too long, bad parameters) costs nothing.
- Concurrency: the caller's tasks admitted and not yet settled; one more is refused
  while `concurrent_requests` are in progress.

Members of the federation (callers proven by their signature) are not limited here:
their escalations are bounded by the node-wide limits on its queue, not by a key's.
A refusal raises `RateLimited` (kind, seconds to wait): 429 on /v1, RESOURCE_EXHAUSTED
on A2A. `CallerLimits` keeps the windows in memory (one process, SQLite storage: a
restart forgets them); with several replicas on PostgreSQL, `SharedLimits`
(node/shared_limits.py) keeps them in the database, so the replicas share one window per
caller. The bindings call the `*_async` methods, which keep database work off the event
loop.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from consortium.errors import RateLimited
from consortium.node.auth import Caller

WINDOW_S = 60.0
# How a prompt's tokens are estimated before any tokenizer runs (as the remote backend
# does without one); the answer's usage replaces the estimate when the task ends.
TOKEN_BYTES = 4
# What a caller at its limit of requests in progress is told to wait.
CONCURRENCY_RETRY_S = 1.0


def estimate_tokens(text_bytes: int) -> int:
    """Tokens of `text_bytes` bytes of UTF-8, at the estimate of TOKEN_BYTES each."""
    return math.ceil(text_bytes / TOKEN_BYTES)


@dataclass(frozen=True)
class LimitSettings:
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    concurrent_requests: int = 0


@dataclass
class _Spend:
    """Tokens counted in a window at `at`: reserved until settled, then what was used."""

    at: float
    tokens: int
    in_window: bool = True


@dataclass
class _Window:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[_Spend] = field(default_factory=deque)
    token_sum: int = 0
    in_progress: int = 0

    def prune(self, since: float) -> None:
        while self.requests and self.requests[0] <= since:
            self.requests.popleft()
        while self.tokens and self.tokens[0].at <= since:
            spend = self.tokens.popleft()
            spend.in_window = False
            self.token_sum -= spend.tokens

    @property
    def empty(self) -> bool:
        return not self.requests and not self.tokens and not self.in_progress


class Reservation:
    """A task's claim on its caller's limits: its reserved tokens and its place among the
    caller's requests in progress, until `settle` (once; later calls do nothing)."""

    def __init__(self, limits: CallerLimits | None, owner: str, spend: Any) -> None:
        self._limits = limits
        self._owner = owner
        self._spend = spend
        self._reserved = 0 if spend is None else int(spend.tokens)
        self.settled = limits is None
        self.claimed = False

    @property
    def reserved(self) -> int:
        return self._reserved

    def claim(self) -> Reservation:
        """Marks the reservation as taken by the code that runs the task (which settles
        it), so that `release_unclaimed` leaves it alone. A reservation released before
        its task started after all (a race with a client that left) is taken again."""
        if not self.claimed and self.settled and self._limits is not None:
            self.settled = False
            self._spend = self._limits._reopen(self._owner, self._reserved)
        self.claimed = True
        return self

    def release_unclaimed(self) -> None:
        """Frees a reservation whose task never started (the call failed before it)."""
        if not self.claimed:
            self.settle(0)

    def settle(self, tokens_used: int) -> None:
        """The task ended having used `tokens_used` tokens: its reservation becomes that,
        and its place among the caller's requests in progress is freed."""
        if self.settled:
            return
        self.settled = True
        assert self._limits is not None
        self._limits._settle(self._owner, self._spend, max(0, tokens_used))


# What a caller the limits do not apply to is given.
UNLIMITED = Reservation(None, "", None)


class CallerLimits:
    def __init__(
        self,
        settings: LimitSettings,
        *,
        default_max_tokens: int = 0,
        clock: Callable[[], float] = time.monotonic,
        window_s: float = WINDOW_S,
    ) -> None:
        self.settings = settings
        # What a task that names no max_tokens may generate (the model's max_tokens).
        self.default_max_tokens = default_max_tokens
        self._clock = clock
        self._window_s = window_s
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    @staticmethod
    def applies_to(caller: Caller) -> bool:
        return caller.kind != "member"

    def count_request(self, caller: Caller) -> None:
        """Counts a call of `caller`'s; raises RateLimited (the call not counted) when
        its window already holds `requests_per_minute`."""
        if not self.applies_to(caller):
            return
        rpm = self.settings.requests_per_minute
        now = self._clock()
        with self._lock:
            w = self._window(caller.owner, now)
            if rpm and len(w.requests) >= rpm:
                raise RateLimited(
                    f"Rate limit reached: {rpm} requests per minute",
                    kind="requests",
                    retry_after_s=w.requests[0] + self._window_s - now,
                )
            w.requests.append(now)

    def reserve_task(self, caller: Caller, prompt: str, max_tokens: int | None) -> Reservation:
        """`reserve` for a task with this prompt (its text as the node gets it) that may
        generate `max_tokens` (None: the model's default): the one rule of every binding."""
        return self.reserve(caller, self.task_tokens(prompt, max_tokens))

    def task_tokens(self, prompt: str, max_tokens: int | None) -> int:
        """What a task reserves: its prompt's estimate and what it may generate."""
        return estimate_tokens(len(prompt.encode())) + (max_tokens or self.default_max_tokens)

    async def count_request_async(self, caller: Caller) -> None:
        """`count_request` from the event loop (in memory: inline)."""
        self.count_request(caller)

    async def reserve_task_async(
        self, caller: Caller, prompt: str, max_tokens: int | None
    ) -> Reservation:
        """`reserve_task` from the event loop (in memory: inline)."""
        return self.reserve_task(caller, prompt, max_tokens)

    def reserve(self, caller: Caller, tokens: int) -> Reservation:
        """Admits a task of `caller`'s that may use `tokens` tokens (prompt + max_tokens):
        reserves them and a place among its requests in progress until the Reservation is
        settled. Raises RateLimited (nothing reserved) when either limit would be passed."""
        if not self.applies_to(caller):
            return UNLIMITED
        s = self.settings
        tpm, most = s.tokens_per_minute, s.concurrent_requests
        now = self._clock()
        with self._lock:
            w = self._window(caller.owner, now)
            if most and w.in_progress >= most:
                raise RateLimited(
                    f"Rate limit reached: {most} requests in progress at once",
                    kind="concurrency",
                    retry_after_s=CONCURRENCY_RETRY_S,
                )
            if tpm and tokens > tpm:
                raise RateLimited(
                    f"Request too large: it may use {tokens} tokens (prompt and max_tokens), "
                    f"more than the limit of {tpm} tokens per minute; lower max_tokens or "
                    "shorten the prompt",
                    kind="tokens",
                    retry_after_s=self._window_s,
                )
            if tpm and w.token_sum + tokens > tpm:
                raise RateLimited(
                    f"Rate limit reached: {tpm} tokens per minute (this request reserves "
                    f"{tokens}: its prompt and max_tokens)",
                    kind="tokens",
                    retry_after_s=self._tokens_free_at(w, tpm - tokens) - now,
                )
            spend = _Spend(now, tokens)
            w.tokens.append(spend)
            w.token_sum += tokens
            w.in_progress += 1
        return Reservation(self, caller.owner, spend)

    def _settle(self, owner: str, spend: Any, used: int) -> None:
        with self._lock:
            w = self._windows.setdefault(owner, _Window())
            w.in_progress = max(0, w.in_progress - 1)
            if spend is not None and spend.in_window:
                w.token_sum += used - spend.tokens
                spend.tokens = used

    def _reopen(self, owner: str, tokens: int) -> Any:
        now = self._clock()
        with self._lock:
            w = self._window(owner, now)
            w.in_progress += 1
            again = _Spend(now, tokens)
            w.tokens.append(again)
            w.token_sum += tokens
        return again

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

    def _tokens_free_at(self, w: _Window, room: int) -> float:
        """When enough of the window's tokens will have left it for its sum to be at most
        `room`."""
        total = w.token_sum
        for spend in w.tokens:
            total -= spend.tokens
            if total <= room:
                return spend.at + self._window_s
        return self._clock() + self._window_s
