"""Canaries in real traffic: `CanaryTraffic`, the peer client's `CanaryMixer`.

Before every real call to a peer (`PeerClient.ask` or `.score`) the node asks the
`CanaryScheduler` (trust/canary_schedule.py) whether to send a canary too; when it draws
one, the canary goes to the same peer as a separate exchange of the same kind, in a
background task, and the real call does not wait for it:

- a scoring call: a multiple-choice canary, as a scoring request (the question as text,
  `{"mode": "score", "choices": [...]}` as its options, as `PeerClient.score` sends them);
- an ask: a free-text canary with the real call's option keys (values kept, except
  `temperature` 0 and `max_tokens` at least `CANARY_MIN_TOKENS`, so that an honest peer
  answers as calibration measured, and `context` empty); an ask with `choices` (a
  multiple-choice task passed to the peer) gets a multiple-choice canary instead, its
  question as text and its options as `choices`, judged by the option its answer names.

No canary of the matching kind calibrated for the peer: none is sent. The exchange is
`PeerClient.answer_of` / `.scores_of`, the one the real call makes (redaction, signing,
audit, deadline, span names), started in an empty context: the canary's spans are a trace
of their own, not part of the user's task, and the peer sees the trace id of a fresh
task. Nothing in the message names the canary; its id appears in debug logs only.

A peer's declared model is the first of its roster entry's `capabilities.models` (a
member runs one model; a member listing several is judged against the first). A peer
declaring none gets no canary (none is calibrated for it). The reply is judged
(node/canaries.py) and recorded as canary evidence for that model. A canary call that
fails (timeout, refusal, unreachable) was already assessed by the exchange as protocol
evidence; nothing more is recorded, nor for a reply that did not complete.

A background task (`run`) every min(background_interval_s / 4, 60) seconds sends a canary
to each active, allowed member (not this node) that no call or canary reached for
`background_interval_s`: a multiple-choice canary as a scoring request, a free-text one
as an ask with default options. A quarantined peer gets none (no real call reaches it
either). `close` stops the loop and cancels canaries in flight.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol, runtime_checkable

from consortium.errors import RequestRejected, UntrustedAnswer
from consortium.federation.watcher import RosterWatcher
from consortium.logsafe import safe
from consortium.node.canaries import judge_scores, judge_text, question_of
from consortium.node.peers import CallKind, PeerClient, PeerError
from consortium.protocols.request_options import RequestOptions, forwarded
from consortium.trust.canaries import Canary, FreeTextCanary, MultipleChoiceCanary
from consortium.trust.canary_schedule import CanaryKind, CanaryScheduler
from consortium.trust.reputation import Evidence
from consortium.trust.reputation_engine import ReputationAssessor

log = logging.getLogger(__name__)

# evaluation/canaries.py calibrates free-text canaries with 48 generated tokens.
CANARY_MIN_TOKENS = 48
MAX_BACKGROUND_TICK_S = 60.0


@runtime_checkable
class EvidenceRecorder(Protocol):
    """What canary verdicts go to: the reputation engine (`ReputationAssessor.record`)."""

    def record(self, evidence: Evidence) -> object: ...


def declared_model(roster: RosterWatcher, org: str) -> str:
    """The model `org` declares: the first of its roster entry's capabilities.models."""
    member = roster.current().member(org)
    if member is None or not member.capabilities.models:
        return ""
    return member.capabilities.models[0]


def canary_options(real: Mapping[str, Any] | None, canary: Canary) -> dict[str, Any]:
    """The options an ask canary carries: the real call's keys, with the values an honest
    peer needs to answer it as calibrated."""
    options = dict(real) if real else forwarded(RequestOptions())
    if isinstance(canary, MultipleChoiceCanary):
        options["choices"] = list(canary.choices)
    else:
        options.pop("choices", None)
    if "temperature" in options:
        options["temperature"] = 0.0
    if "max_tokens" in options:
        options["max_tokens"] = max(int(options["max_tokens"]), CANARY_MIN_TOKENS)
    if "context" in options:
        options["context"] = ""
    return options


class CanaryTraffic:
    """Sends the scheduler's canaries alongside real calls and to idle peers, and records
    the verdicts. Runs on the node's event loop."""

    def __init__(
        self,
        scheduler: CanaryScheduler,
        peers: PeerClient,
        roster: RosterWatcher,
        recorder: EvidenceRecorder,
        org_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.scheduler = scheduler
        self._peers = peers
        self._roster = roster
        self._recorder = recorder
        self._org = org_id
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None
        self._closed = False
        self.sent = 0  # canaries sent since start
        self.judged = 0  # of which judged (the rest failed or did not complete)

    # The CanaryMixer.

    def alongside(self, org: str, kind: CallKind, options: Mapping[str, Any] | None) -> None:
        try:
            self._alongside(org, kind, options)
        except Exception as e:  # a canary never stops the real call
            log.warning("canary to %s not sent: %s", org, type(e).__name__)

    def _alongside(self, org: str, kind: CallKind, options: Mapping[str, Any] | None) -> None:
        if self._closed or org == self._org or not self._peers.assessor.standing(org).allowed:
            return
        wanted: CanaryKind = "free_text"
        if kind == "score" or (options and options.get("choices")):
            wanted = "multiple_choice"
        model = declared_model(self._roster, org)
        canary = self.scheduler.instead_of_call(org, model, self._clock(), wanted)
        if canary is not None:
            self._spawn(self._send(org, model, canary, kind, options))

    # Background canaries.

    def start(self) -> None:
        """Starts the background loop."""
        if self._loop is None and not self._closed:
            self._loop = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        """Every tick, a canary to each peer idle for the background interval."""
        tick = min(self.scheduler.settings.background_interval_s / 4, MAX_BACKGROUND_TICK_S)
        while True:
            try:
                self.background()
            except Exception as e:  # a roster or store hiccup must not end the loop
                log.warning("background canaries: %s", type(e).__name__)
            await asyncio.sleep(tick)

    def background(self) -> int:
        """Sends a canary to each allowed peer due one; returns how many were sent."""
        now = self._clock()
        peers = [p.org for p in self._peers.candidates() if p.org != self._org]
        n = 0
        for org in self.scheduler.due_for_background(peers, now):
            model = declared_model(self._roster, org)
            canary = self.scheduler.draw(org, model, now)
            if canary is None:
                continue
            kind: CallKind = "score" if isinstance(canary, MultipleChoiceCanary) else "ask"
            self._spawn(self._send(org, model, canary, kind, None))
            n += 1
        return n

    async def close(self) -> None:
        """Stops the loop and cancels the canaries in flight; sends none after."""
        self._closed = True
        tasks = list(self._tasks)
        if self._loop is not None:
            tasks.append(self._loop)
            self._loop = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def idle(self) -> None:
        """Waits until no canary is in flight (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # One canary.

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._closed:
            coro.close()
            return
        # An empty context: the canary's spans do not join the caller's trace.
        task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.sent += 1

    async def _send(
        self,
        org: str,
        model: str,
        canary: Canary,
        kind: CallKind,
        options: Mapping[str, Any] | None,
    ) -> None:
        log.debug("canary %s to %s (%s)", safe(canary.id), org, kind)
        try:
            evidence = await self._ask(org, model, canary, kind, options)
        except (PeerError, UntrustedAnswer, RequestRejected) as e:
            # Assessed by the exchange already (or never sent: quarantined meanwhile).
            log.debug("canary %s to %s: no verdict (%s)", safe(canary.id), org, type(e).__name__)
            return
        if evidence is None:
            log.debug("canary %s to %s: the reply did not complete", safe(canary.id), org)
            return
        recorder = self._recorder
        if isinstance(recorder, ReputationAssessor):  # PostgreSQL: off the event loop
            await recorder.off_loop(lambda: recorder.record(evidence))
        else:
            recorder.record(evidence)
        self.judged += 1
        log.debug("canary %s to %s: %s", safe(canary.id), org, evidence.reason)

    async def _ask(
        self,
        org: str,
        model: str,
        canary: Canary,
        kind: CallKind,
        options: Mapping[str, Any] | None,
    ) -> Evidence | None:
        if kind == "score":
            assert isinstance(canary, MultipleChoiceCanary)
            scored = await self._peers.scores_of(org, question_of(canary))
            return judge_scores(org, canary, scored.scores, model)
        text = canary.prompt if isinstance(canary, FreeTextCanary) else canary.question
        answer = await self._peers.answer_of(org, text, canary_options(options, canary))
        if answer.state != "completed":
            return None
        return judge_text(org, canary, answer.text, model)
