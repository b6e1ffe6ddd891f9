"""Node-wide load shedding: how much work a node takes on before it refuses more.

Every request that asks the node for work (an A2A task or scoring request on either
binding, a /v1 completion) is admitted here after its caller is authenticated, and holds
a `Ticket` until it ends. Two bounds, each refused at once with `NodeOverloaded` (gRPC
RESOURCE_EXHAUSTED, HTTP 429 with Retry-After), before any work:

- `max_pending` ([server] max_pending_requests): requests in flight on the node, whoever
  serves them (the model, a peer, a group). reason "overloaded".
- the model's queue is full: the requests admitted to the node's own model and not
  ended fill its slots and its [model] max_queue (or its queue does, with the node's own
  work); reason "queue_full", the same refusal the worker's queue would give later
  (llm/worker.py), given here before the task exists.
- the model's queue: a request the node's own model will serve waits for the requests
  admitted before it. Their number (fairly counted: the worker takes one job per caller
  in turn, llm/worker.py) times the model's recent time per job is the estimated wait;
  a request is refused ("busy") when that wait exceeds `max_wait_s` ([server]
  max_queue_wait_s), or when the wait plus its own job exceeds the caller's deadline
  (a gRPC deadline: an origin's `peer_timeout_s`). A peer escalation thus learns in
  milliseconds that it would time out, instead of timing out.

The counts are this module's own, taken synchronously at admission, so a burst of
requests arriving together is bounded as surely as a trickle. Before the model has
finished a first job its time per job is unknown and only `max_pending` bounds. 0 turns
either bound off. Refusals are counted by reason (`counts`, shown by /healthz) and
logged at most once per LOG_INTERVAL_S, with their number.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from typing import Any, Protocol

from consortium.errors import NodeOverloaded

log = logging.getLogger(__name__)

# Refusals are logged at most once per interval (with the count since), not one line each.
LOG_INTERVAL_S = 10.0


class Ticket:
    """An admitted request's place; `release()` (or leaving `with`) gives it back, once."""

    def __init__(self, admission: Admission | None, lane: str | None) -> None:
        self._admission = admission
        self._lane = lane

    def release(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission._release(self._lane)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


class ModelLoad(Protocol):
    """What admission reads of the model's worker (llm/worker.ModelWorker)."""

    @property
    def job_s(self) -> float | None: ...

    @property
    def slots(self) -> int: ...

    def jobs_ahead(self, lane: str = "") -> int: ...

    def refuse_if_full(self, admitted: int = 0) -> None:
        """Raises NodeOverloaded("queue_full") when a request would find no place."""
        ...


class Admission:
    """The node's bounds on work in flight (see the module docstring), over the model's
    worker."""

    def __init__(self, model: ModelLoad, *, max_pending: int, max_wait_s: float) -> None:
        self._model = model
        self.max_pending = max_pending
        self.max_wait_s = max_wait_s
        self._lock = threading.Lock()
        self.in_flight = 0
        # Requests in flight that the local model serves, by lane (caller).
        self._lanes: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.admitted = 0
        self.peak_in_flight = 0
        self._logged_at = -math.inf
        self._unlogged = 0

    def admit(self, lane: str, *, local_model: bool, deadline_s: float | None = None) -> Ticket:
        """A ticket for a request of `lane` (the caller's owner), or NodeOverloaded.
        `local_model`: the node's own model will serve it; `deadline_s`: the seconds the
        caller will wait for the answer, if it said."""
        try:
            return self._admit(lane, local_model, deadline_s)
        except NodeOverloaded as e:
            self._log(e)
            raise

    def _admit(self, lane: str, local_model: bool, deadline_s: float | None) -> Ticket:
        with self._lock:
            if self.max_pending and self.in_flight >= self.max_pending:
                self.refused["overloaded"] += 1
                per_job = self._model.job_s or 1.0
                raise NodeOverloaded(
                    f"overloaded: {self.in_flight} requests in flight, the most this node "
                    "takes (server.max_pending_requests)",
                    retry_after_s=per_job,
                    reason="overloaded",
                )
            if local_model:
                try:
                    self._model.refuse_if_full(sum(self._lanes.values()))
                except NodeOverloaded as e:
                    self.refused[e.reason] += 1
                    raise
                self._check_wait(lane, deadline_s)
                self._lanes[lane] += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            self.admitted += 1
            return Ticket(self, lane if local_model else None)

    def _check_wait(self, lane: str, deadline_s: float | None) -> None:
        per_job = self._model.job_s
        if per_job is None:
            return
        wait = self._ahead(lane) * per_job
        if deadline_s is not None and wait + per_job > deadline_s:
            self.refused["busy"] += 1
            raise NodeOverloaded(
                f"busy: estimated wait {wait + per_job:.1f} s for an answer exceeds your "
                f"deadline {deadline_s:.1f} s",
                retry_after_s=max(wait + per_job - deadline_s, per_job),
                reason="busy",
            )
        if self.max_wait_s and wait > self.max_wait_s:
            self.refused["busy"] += 1
            raise NodeOverloaded(
                f"busy: estimated wait {wait:.1f} s exceeds this node's bound "
                f"{self.max_wait_s:g} s (server.max_queue_wait_s)",
                retry_after_s=max(wait - self.max_wait_s, per_job),
                reason="busy",
            )

    def _ahead(self, lane: str) -> int:
        """The model's jobs ahead of a new one of `lane`: by the requests admitted here
        (the lane's own, and from every other lane one more than ours at most: the worker
        serves lanes in turn), or by the worker's queue (which also holds the node's own
        work: canaries, routers' drafts), whichever is more."""
        mine = self._lanes[lane]
        admitted = mine + sum(min(n, mine + 1) for name, n in self._lanes.items() if name != lane)
        # A model of several slots runs that many at once: the wait is in rounds of them,
        # as the worker counts its own jobs ahead.
        slots = self._model.slots
        rounds = -(-max(0, admitted - slots + 1) // slots)
        return max(rounds, self._model.jobs_ahead(lane))

    def _log(self, refusal: NodeOverloaded) -> None:
        with self._lock:
            self._unlogged += 1
            now = time.monotonic()
            if now - self._logged_at < LOG_INTERVAL_S:
                return
            count, self._unlogged, self._logged_at = self._unlogged, 0, now
        log.warning(
            "refused %d request(s) for load in the last %g s (latest: %s; %d in flight)",
            count,
            LOG_INTERVAL_S,
            refusal.reason,
            self.in_flight,
        )

    def _release(self, lane: str | None) -> None:
        with self._lock:
            self.in_flight -= 1
            if lane is not None:
                self._lanes[lane] -= 1
                if self._lanes[lane] <= 0:
                    del self._lanes[lane]

    def counts(self) -> dict[str, Any]:
        """For /healthz: what is in flight, the model's time per job, the refusals."""
        with self._lock:
            per_job = self._model.job_s
            return {
                "in_flight": self.in_flight,
                "peak_in_flight": self.peak_in_flight,
                "model_queue": sum(self._lanes.values()),
                "job_s": None if per_job is None else round(per_job, 3),
                "max_pending_requests": self.max_pending,
                "max_queue_wait_s": self.max_wait_s,
                "admitted": self.admitted,
                "refused": dict(self.refused),
            }


def retry_after_header(seconds: float) -> str:
    """Whole seconds for a Retry-After header (at least 1)."""
    return str(max(1, math.ceil(seconds)))
