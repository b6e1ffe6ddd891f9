"""When a node sends a canary to a peer, and which: `CanaryScheduler`.

Pure and deterministic given its random generator and the times it is told (`now`, in
seconds on any monotonic clock; wall-clock seconds with a log, below): the node asks it
before each outgoing call whether to send a canary with it (`instead_of_call`, with
probability `rate`, or surely after an `alarm`: a cross-check found the peer disagreeing
with a same-model peer and only a canary can tell which of the two is wrong;
node/canary_traffic.py sends it alongside the call), and periodically
which peers have not been contacted for `background_interval_s` (`due_for_background`),
then draws a background canary for each (`draw`). Every draw respects:

- calibration: only canaries whose `models` include the model the peer declares;
- no repeats: a canary is not sent to the same peer again within `repeat_window_s`
  (another peer may get it);
- a token budget: the canaries' estimated tokens over any `budget_period_s` (sliding, all
  peers together) stay within `budget_tokens`.

When nothing may be drawn the call goes out as real traffic, so `rate` is an upper bound.
A draw may be limited to one `kind` of canary ("multiple_choice" or "free_text"): the
kind that can pass for the call it accompanies.

What was sent where (peer, canary id, time, estimated tokens) is what the no-repeat window
and the budget read. Given a `CanaryLog` (trust/reputation_store.py keeps one in
trust.sqlite3) the scheduler reads it back when made and adds every draw to it, so a
restart neither repeats a canary within the window nor forgets the budget spent; the log
forgets entries older than both the window and the budget period. Times given to a
scheduler with a log must survive a restart: wall-clock seconds (`time.time()`). When a
peer was last contacted is kept in memory only (after a restart a peer counts as
contacted at its first mention).

Indistinguishability is the wiring's job (node/canary_traffic.py): a canary must leave
as real traffic does: the same request shape (`ask` text or `score` with `choices`), the
same metadata keys and defaults, the same signing, redaction, audit and deadline path,
no canary id or marker anywhere in the message, drawn from the organization's private
pool (a public benchmark item would be recognisable), and its reply judged after the
exchange, off the hot path. Timing matters too: a canary goes with a real call (or in
the idle background), not in bursts.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from consortium.trust.canaries import Canary, CanaryPool, MultipleChoiceCanary

CanaryKind = Literal["multiple_choice", "free_text"]


def kind_of(canary: Canary) -> CanaryKind:
    return "multiple_choice" if isinstance(canary, MultipleChoiceCanary) else "free_text"


@dataclass(frozen=True)
class SentCanary:
    """One canary sent: to whom, which (its id never leaves the node), when, and its
    estimated tokens."""

    peer: str
    canary_id: str
    at: float
    cost: int


class CanaryLog(Protocol):
    """Where a scheduler's draws survive a restart."""

    def entries(self) -> Sequence[SentCanary]:
        """Every entry kept, in any order."""
        ...

    def add(self, entry: SentCanary, forget_before: float) -> None:
        """Keeps `entry` and forgets entries sent before `forget_before`."""
        ...


@dataclass(frozen=True)
class CanarySettings:
    rate: float = 0.05  # share of calls to a peer replaced by a canary
    background_interval_s: float = 3600.0  # a peer idle this long is due a canary
    budget_tokens: int = 20_000  # estimated canary tokens per budget period
    budget_period_s: float = 3600.0
    repeat_window_s: float = 7 * 86400.0  # no canary twice to one peer within it
    # Per-peer rates that replace `rate` ([trust.peers.ORG] canary_rate).
    peer_rates: tuple[tuple[str, float], ...] = ()

    def rate_for(self, peer: str) -> float:
        return dict(self.peer_rates).get(peer, self.rate)

    def __post_init__(self) -> None:
        if not all(0.0 <= r <= 1.0 for r in (self.rate, *dict(self.peer_rates).values())):
            raise ValueError("rate is a share of calls, 0 to 1")
        if self.background_interval_s <= 0 or self.budget_period_s <= 0:
            raise ValueError("intervals and periods are positive")
        if self.budget_tokens < 0 or self.repeat_window_s < 0:
            raise ValueError("budget and repeat window are not negative")


class CanaryScheduler:
    """Decides which calls to each peer carry a canary, and which canary."""

    def __init__(
        self,
        pool: CanaryPool,
        settings: CanarySettings,
        rng: random.Random,
        log: CanaryLog | None = None,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._rng = rng
        self._log = log
        self._by_model: dict[tuple[str, CanaryKind | None], tuple[Canary, ...]] = {}
        self._last_contact: dict[str, float] = {}
        self._sent: dict[tuple[str, str], float] = {}  # (peer, canary id) -> when
        self._spent: deque[tuple[float, int]] = deque()
        if log is not None:
            for entry in sorted(log.entries(), key=lambda e: e.at):
                key = (entry.peer, entry.canary_id)
                self._sent[key] = max(entry.at, self._sent.get(key, entry.at))
                self._spent.append((entry.at, entry.cost))
        self._alarmed: set[str] = set()

    @property
    def settings(self) -> CanarySettings:
        return self._settings

    def instead_of_call(
        self, peer: str, model: str, now: float, kind: CanaryKind | None = None
    ) -> Canary | None:
        """Called before each outgoing call to `peer` (declaring `model`): the canary to
        send with it (of `kind`, when given), or None to send the call alone."""
        self._last_contact[peer] = now
        if peer in self._alarmed:
            canary = self.draw(peer, model, now, kind)
            if canary is not None:
                self._alarmed.discard(peer)
            return canary
        if self._rng.random() >= self._settings.rate_for(peer):
            return None
        return self.draw(peer, model, now, kind)

    def alarm(self, peer: str) -> None:
        """The next call to `peer` carries a canary (as the budget and pool allow)."""
        self._alarmed.add(peer)

    def due_for_background(self, peers: Iterable[str], now: float) -> list[str]:
        """The peers not contacted (call or canary) for `background_interval_s`; a peer
        never seen counts from its first mention here."""
        due = []
        for peer in peers:
            last = self._last_contact.setdefault(peer, now)
            if now - last >= self._settings.background_interval_s:
                due.append(peer)
        return due

    def draw(
        self, peer: str, model: str, now: float, kind: CanaryKind | None = None
    ) -> Canary | None:
        """A canary for `peer` now (of `kind`, when given), recorded as sent; None when
        none is calibrated for `model`, all were sent to it within the window, or the
        budget is spent."""
        self._last_contact[peer] = now
        fresh = [c for c in self._calibrated(model, kind) if self._unsent(peer, c, now)]
        if not fresh:
            return None
        left = self._settings.budget_tokens - self.spent(now)
        affordable = [c for c in fresh if c.cost <= left]
        if not affordable:
            return None
        canary = self._rng.choice(affordable)
        self._sent[(peer, canary.id)] = now
        self._spent.append((now, canary.cost))
        if self._log is not None:
            keep = max(self._settings.repeat_window_s, self._settings.budget_period_s)
            self._log.add(SentCanary(peer, canary.id, now, canary.cost), now - keep)
        return canary

    def spent(self, now: float) -> int:
        """Estimated canary tokens sent within the budget period before `now`."""
        while self._spent and now - self._spent[0][0] >= self._settings.budget_period_s:
            self._spent.popleft()
        return sum(cost for _, cost in self._spent)

    def sent_to(self, peer: str) -> dict[str, float]:
        """The canaries sent to `peer` (by id) and when, as remembered."""
        return {cid: at for (p, cid), at in self._sent.items() if p == peer}

    def _calibrated(self, model: str, kind: CanaryKind | None) -> tuple[Canary, ...]:
        key = (model, kind)
        if key not in self._by_model:
            self._by_model[key] = tuple(
                c for c in self._pool.for_model(model) if kind is None or kind_of(c) == kind
            )
        return self._by_model[key]

    def _unsent(self, peer: str, canary: Canary, now: float) -> bool:
        at = self._sent.get((peer, canary.id))
        return at is None or now - at >= self._settings.repeat_window_s
