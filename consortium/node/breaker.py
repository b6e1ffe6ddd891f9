"""A circuit breaker per peer: whether this node may call a peer now, from what its last
connections did.

A call that cannot reach a peer (the connection is refused or reset: "unreachable") or
gets no answer before its deadline ("timeout") is evidence about the network between
the two nodes, not about the peer's answers: it goes here, never into the peer's
reputation (trust/reputation_engine.py). Anything the peer sent back, even a refusal or
"busy", shows the link works.

    closed --`failures` connection failures in a row, or one timeout--> open
    open --`open_s` passed--> probing (a call on a fresh connection, off any task's path)
    probing --answered--> half_open   |   --no answer--> open, for twice as long
    half_open --a call succeeds--> closed   |   --a call fails--> open, twice as long

An open period starts at `open_s` and doubles per failed attempt up to `max_open_s`, so
a dead or black-holed peer costs one probe per period rather than every task the full
deadline, and a peer that comes back is back in rotation within `max_open_s` plus one
probe. Only a call that succeeds resets the period: a peer that answers probes but
times out every call stays out most of the time. Calls go out in `half_open` as when
closed (a call that fails is retried elsewhere: routing/failover); routing treats an
open (or probing) peer as unavailable. The node's own background calls (trust reports,
witnessing) pass the same breaker.

One broken connection fails every call it carried at once (a TCP reset of the one
HTTP/2 connection to a peer): failures are counted per connection (`conn`, increasing),
so the calls of one reset count once. Failures on a connection already replaced are
not reported here at all (node/peers.py: a retired connection's); a failure on a live
connection counts even when another of the peer's connections (one per kind of call)
succeeded since: once it counted that way, a partition took two full deadlines to open
a circuit whenever background calls had just gone through.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

BreakerState = Literal["closed", "open", "probing", "half_open"]

# The failure codes (peers.failure_of) that say the link, not the peer, failed.
CONNECTION_FAILURES = frozenset({"unreachable", "timeout"})


@dataclass(frozen=True)
class BreakerSettings:
    failures: int = 2
    open_s: float = 0.5
    max_open_s: float = 10.0
    probe_timeout_s: float = 2.0


class CircuitBreaker:
    """One peer's circuit. Not thread-safe: used from the node's event loop."""

    def __init__(
        self, settings: BreakerSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._state: BreakerState = "closed"
        self._failures = 0  # in a row, counted once per connection
        self._attempt = 0  # failed periods since the last success: the backoff exponent
        self._until = 0.0  # end of the open period
        self._counted_conn = -1  # the newest connection whose failure was counted
        self.opened = 0  # times opened, for telemetry and tests

    @property
    def state(self) -> BreakerState:
        return self._state

    def available(self) -> bool:
        """Whether a call may go out now, and routing choose the peer."""
        return self._state in ("closed", "half_open")

    def retry_in(self) -> float:
        """Seconds until the open period ends (0 when not open)."""
        return max(0.0, self._until - self._clock()) if self._state == "open" else 0.0

    def succeeded(self, conn: int) -> None:
        """A call on connection `conn` got an answer (any answer): the link works."""
        self._state = "closed"
        self._failures = self._attempt = 0

    def failed(self, failure: str, conn: int) -> bool:
        """A call on connection `conn` failed with `failure` (a code of
        CONNECTION_FAILURES; others are ignored). Whether the circuit opened now."""
        if failure not in CONNECTION_FAILURES:
            return False
        if self._state in ("open", "probing"):
            return False
        if conn <= self._counted_conn:
            return False  # this connection's failure is counted
        self._counted_conn = conn
        if self._state == "half_open":
            self._open()
            return True
        self._failures += 1
        if failure == "timeout" or self._failures >= self.settings.failures:
            self._open()
            return True
        return False

    def probe_due(self) -> bool:
        """Whether the open period is over: the caller probes now (state `probing`)."""
        if self._state == "open" and self._clock() >= self._until:
            self._state = "probing"
            return True
        return False

    def probed(self, connected: bool) -> None:
        """The probe's outcome: half-open when it connected, open for longer otherwise."""
        if self._state != "probing":
            return
        if connected:
            self._state = "half_open"
        else:
            self._open()

    def _open(self) -> None:
        s = self.settings
        period = min(s.open_s * 2 ** min(self._attempt, 32), s.max_open_s)
        self._attempt += 1
        self._failures = 0
        self._state = "open"
        self._until = self._clock() + period
        self.opened += 1
