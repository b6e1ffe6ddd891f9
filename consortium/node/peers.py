"""Calling other organizations. Every call to a peer is one exchange
(`PeerClient.exchange`), with hook points around the A2A call:

    redact -> sign -> audit -> send -> verify -> audit -> assess

The hooks are chosen where the node is wired (node/app.py): the `Redactor`
(protocols.redaction), the organization's `Signer`, the `MessageVerifier` and the
`Assessor` (trust.reputation). The audit steps are the signer's and the verifier's: each
tells the node's `AuditLog` (trust.audit) of what it signs or admits, so the request is
logged before it is sent, and every verified event and reply before it is used. A node
without a redaction policy, an audit log or reputations gets their null
implementations; nothing here asks whether they are on.

A request goes over gRPC with a deadline and one reused connection per peer. The peer's
signed answer and events are verified before they are used: bound to our request, and
signed by the organization we asked. A reply that fails verification raises
UntrustedAnswer; a peer that cannot be asked, or gives no usable reply, PeerError.

The assessor hears every outcome of a call that left this node: a verified reply (with
`claim` set when it names a model the roster does not list for the member, or an
impossible token count: the answer is still used, the claim is evidence for its
reputation), a refused one (`refusal`), or nothing to verify (`failure`: "timeout",
"unreachable", "no_reply"). A member the roster does not let us call (unknown, suspended,
no endpoint) is not asked and not assessed: that is the roster's doing, not the peer's.
The same assessor's standings gate every call: a quarantined peer is never a candidate
and a call to it is refused before anything is sent (PeerQuarantined).

`ask` and `score` (the calls routing and groups make) first tell the `CanaryMixer`
(node/canary_traffic.py; `NoCanaries` when the node sends none), which may send a canary
of the same kind to the same peer alongside, in the background, through `answer_of` and
`scores_of`: the same exchange without the mixer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import grpc
from a2a.client import Client, ClientCallContext
from a2a.client.errors import A2AClientTimeoutError
from a2a.types import a2a_pb2
from a2a.utils.constants import PROTOCOL_VERSION_CURRENT, TransportProtocol
from a2a.utils.errors import A2AError
from a2a.utils.grpc_status import status_from_call
from google.protobuf.json_format import MessageToDict
from google.rpc import error_details_pb2
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from consortium.errors import (
    NodeOverloaded,
    NodeUnavailableError,
    RequestRejected,
    UntrustedAnswer,
)
from consortium.federation.watcher import RosterWatcher
from consortium.logsafe import safe
from consortium.node.breaker import CONNECTION_FAILURES, BreakerSettings, CircuitBreaker
from consortium.node.client import grpc_channel, open_client, text_message
from consortium.node.offload import INLINE, Offload
from consortium.node.redaction import PolicyRedactor
from consortium.node.telemetry import traceparent
from consortium.protocols.multiple_choice import OptionScores, Question
from consortium.protocols.redaction import Redactor
from consortium.protocols.request_options import METADATA_KEY
from consortium.protocols.routing import Peer
from consortium.trust.admission import MessageVerifier, Verified
from consortium.trust.claims import TaskEvent
from consortium.trust.refusals import Rejected
from consortium.trust.reputation import Assessor, Verdict
from consortium.trust.reputation_engine import ReputationAssessor
from consortium.trust.signing import Signer

log = logging.getLogger(__name__)

# A claimed token count above this is absurd for any model a member can run.
MAX_CLAIMED_TOKENS = 10_000_000


class PeerError(NodeUnavailableError):
    """A peer could not be asked, or gave no usable reply; `failure` is the code the
    assessor was told ("timeout", "unreachable", "busy", "no_reply"), "circuit_open"
    when the peer's circuit breaker let nothing out, or "" when the call never left this
    node for another reason."""

    def __init__(self, message: str, failure: str = "") -> None:
        super().__init__(message)
        self.failure = failure


class PeerBusy(PeerError, NodeOverloaded):
    """The peer refused the call for load (gRPC RESOURCE_EXHAUSTED: its model's queue is
    longer than this call's deadline, or it holds all the work it takes) before doing
    any: nothing to verify and nothing against its reputation; another peer may be asked
    at once, or this one after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        PeerError.__init__(self, message, "busy")
        self.retry_after_s = retry_after_s
        self.reason = "busy"


# The failures after which asking again (the same peer on a new connection, or another
# peer) cannot give a task two answers: the call brought nothing back that was used
# (refused, reset or timed-out connections, a busy peer, an open circuit).
RETRYABLE_FAILURES = frozenset({"unreachable", "timeout", "busy", "circuit_open"})


class PeerQuarantined(RequestRejected):
    """A call to a peer this node's trust layer has quarantined: refused, never sent."""

    def __init__(self, org: str) -> None:
        super().__init__(f"{org} is quarantined by this node's trust layer")
        self.org = org


CallKind = Literal["ask", "score"]
# Told the text of each verified chunk of a streamed answer, as it arrives.
OnText = Callable[[str], None]


class CanaryMixer(Protocol):
    """Told of every real call to a peer before it is sent; may send a canary alongside
    (in the background: it returns at once)."""

    def alongside(self, org: str, kind: CallKind, options: Mapping[str, Any] | None) -> None: ...


class NoCanaries:
    """Sends no canaries."""

    def alongside(self, org: str, kind: CallKind, options: Mapping[str, Any] | None) -> None:
        pass


@dataclass
class PeerAnswer:
    org: str
    text: str
    state: str
    provenance: dict[str, Any] = field(default_factory=dict)
    latency_s: float = 0.0
    verified: bool = False
    verified_events: int = 0
    # The peer's reputation when it was asked, and what its reply claimed that the roster
    # does not allow ("" when nothing).
    reputation: float = 1.0
    claim: str = ""
    canary: Literal["passed", "failed"] | None = None  # its latest canary, when asked


@dataclass(frozen=True)
class PeerScores:
    org: str
    scores: OptionScores
    tokens: int
    model: str
    latency_s: float
    reputation: float = 1.0
    claim: str = ""
    canary: Literal["passed", "failed"] | None = None  # its latest canary, when asked


@dataclass(frozen=True)
class Call:
    """A kind of call to a peer: how its reply comes back and how its failures read.

    A streamed call's reply is the status message that ends the task, after every task
    event streamed for it was verified; a call that is not streamed gets one Message (or
    a Task). `no_reply` and `refused` are the errors' texts, with `{org}` and `{error}`.
    `gated`: refused before anything is sent when the trust layer quarantined the peer
    (every call but those whose answer is checked cryptographically, not believed: a
    witness's cosignature). `redacted`: passes the redaction policy (every call that can
    carry a user's text; not the node's own records: trust reports, checkpoints)."""

    mode: str
    streaming: bool
    no_reply: str
    refused: str
    gated: bool = True
    redacted: bool = True


ASK = Call(
    "ask",
    streaming=True,
    no_reply="{org} answered without a status message",
    refused="the answer from {org} was refused: {error}",
)
SCORE = Call(
    "score",
    streaming=False,
    no_reply="{org} sent no scores",
    refused="the scores from {org} were refused: {error}",
)


@dataclass(frozen=True)
class Reply:
    """A peer's verified reply: the message, what its verification found, the state of
    the task it ended ('' for a reply without a task) and the task events verified on the
    way; once assessed, the peer's reputation when asked and the reply's `claim`."""

    message: a2a_pb2.Message
    verified: Verified
    state: str
    events: int
    reputation: float = 1.0
    claim: str = ""
    canary: Literal["passed", "failed"] | None = None  # its latest canary, when asked


# Options of every channel to a peer. A channel is replaced when a call on it fails to
# connect or times out (the breaker's `conn`), so gRPC's own reconnect backoff (up to
# 120 s by default: a peer restarted a dozen times was never called again) matters only
# within one connection's life; keepalive pings find a connection that went silent
# mid-call (a black hole) in keepalive_time + keepalive_timeout, not the call's deadline.
# The server side allows these pings (node/a2a/grpc_binding.py).
PEER_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
)


# What a probe of an open circuit calls: a method no node serves.
PROBE_METHOD = "/consortium.Probe/Ping"


@dataclass(eq=False)
class _Connection:
    """One channel (an a2a-sdk client) to a peer; `conn` numbers it for the breaker. A
    retired connection takes no new calls and is closed when its last call ends."""

    client: Client
    conn: int
    calls: int = 0
    retired: bool = False


class PeerClient:
    def __init__(
        self,
        *,
        signer: Signer,
        verifier: MessageVerifier,
        roster: RosterWatcher,
        timeout_s: float,
        redactor: Redactor,
        assessor: Assessor,
        credentials: grpc.ChannelCredentials | None = None,
        breaker: BreakerSettings | None = None,
        offload: Offload = INLINE,
    ) -> None:
        self._credentials = credentials
        # Where signing and verifying (their replay-cache and audit writes) run
        # (node/offload.py: inline on SQLite, off the event loop on PostgreSQL).
        self._offload = offload
        self.tracer: trace.Tracer = trace.NoOpTracer()
        self._signer = signer
        self._verifier = verifier
        self._roster = roster
        self._timeout = timeout_s
        self.redactor = redactor
        self.assessor = assessor
        self.canaries: CanaryMixer = NoCanaries()
        self._connections: dict[tuple[str, str, bool], _Connection] = {}
        self._numbers = itertools.count()
        self._breaker_settings = breaker or BreakerSettings()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._probing: set[str] = set()  # peers whose open circuit a task probes

    def breaker(self, org: str) -> CircuitBreaker:
        """The peer's circuit breaker (node/breaker.py)."""
        if org not in self._breakers:
            self._breakers[org] = CircuitBreaker(self._breaker_settings)
        return self._breakers[org]

    def available(self, org: str) -> bool:
        """Whether the peer's circuit lets routing choose it now."""
        return self.breaker(org).available()

    def _endpoint(self, org: str) -> str:
        member = self._roster.current().member(org)
        if member is None:
            raise PeerError(f"{org} is not a member of the federation")
        if member.status != "active":
            raise PeerError(f"{org} is {member.status}")
        if not member.endpoints.grpc:
            raise PeerError(f"the roster lists no gRPC endpoint for {org}")
        return member.endpoints.grpc

    def _connection(self, org: str, streaming: bool = True) -> _Connection:
        url = self._endpoint(org)
        cache_key = (org, url, streaming)
        if cache_key not in self._connections:
            card = a2a_pb2.AgentCard(
                name=org,
                supported_interfaces=[
                    a2a_pb2.AgentInterface(
                        url=url,
                        protocol_binding=TransportProtocol.GRPC,
                        protocol_version=PROTOCOL_VERSION_CURRENT,
                    )
                ],
                capabilities=a2a_pb2.AgentCapabilities(streaming=True),
            )
            client = open_client(
                card,
                credentials=self._credentials,
                streaming=streaming,
                channel_options=PEER_CHANNEL_OPTIONS,
            )
            self._connections[cache_key] = _Connection(client, next(self._numbers))
        return self._connections[cache_key]

    def _retire(self, org: str) -> None:
        """Every connection to the peer takes no new call: the next call connects anew."""
        for key in [k for k in self._connections if k[0] == org]:
            connection = self._connections.pop(key)
            connection.retired = True
            if connection.calls == 0:
                self._spawn(connection.client.close())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _link_failed(self, org: str, failure: str, connection: _Connection) -> None:
        """A call on `connection` failed to connect or timed out: the connection is
        replaced, the breaker told, and an opened circuit probed in the background. A
        connection retired already (by an earlier failure: the other calls one broken
        link fails, or a call that outlived its connection's replacement) is news the
        breaker has had. Whether it is older than the last success does not matter: a
        peer has a connection per kind of call (streamed or not), and a partition that
        times out the streamed one while the other answered a moment ago is news."""
        if connection.retired:
            return
        self._retire(org)
        if self.breaker(org).failed(failure, connection.conn):
            log.warning("calls to %s fail (%s): circuit open", safe(org), failure)
            if org not in self._probing:
                self._probing.add(org)
                self._spawn(self._probe(org))

    async def _probe(self, org: str) -> None:
        """Probes an open circuit until the peer accepts a connection again: one fresh
        connection attempt per open period, bounded by `probe_timeout_s` (one prober per
        peer)."""
        breaker = self.breaker(org)
        try:
            while breaker.state == "open":
                await asyncio.sleep(breaker.retry_in())  # the backoff period
                if breaker.probe_due():
                    connected = await self._connects(org)
                    breaker.probed(connected)
                    if connected:
                        log.info("%s accepts connections again: circuit half-open", safe(org))
        finally:
            self._probing.discard(org)

    async def _connects(self, org: str) -> bool:
        """Whether the peer's gRPC server answers a call on a fresh connection: a method
        it does not serve, so any answer (UNIMPLEMENTED) is the server's own and nothing
        runs there. A connection alone is not enough: a black hole accepts one."""
        try:
            url = self._endpoint(org)
        except PeerError:
            return False
        channel = grpc_channel(url, self._credentials, PEER_CHANNEL_OPTIONS)
        try:
            ping = channel.unary_unary(PROBE_METHOD)
            await ping(b"", timeout=self._breaker_settings.probe_timeout_s)
            return True
        except grpc.aio.AioRpcError as e:
            return e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        finally:
            await channel.close()

    async def ask(
        self,
        org: str,
        text: str,
        options: dict[str, Any] | None = None,
        on_text: OnText | None = None,
    ) -> PeerAnswer:
        """The peer's answer to a task (its streamed events verified on the way, the text
        of each verified artifact chunk passed to `on_text`); the canary mixer may send
        the peer a canary alongside."""
        self.canaries.alongside(org, "ask", options)
        return await self.answer_of(org, text, options, on_text)

    async def answer_of(
        self,
        org: str,
        text: str,
        options: Mapping[str, Any] | None = None,
        on_text: OnText | None = None,
    ) -> PeerAnswer:
        """`ask` without the canary mixer: one exchange."""
        started = time.perf_counter()
        message = text_message(text, {METADATA_KEY: dict(options)} if options else None)
        reply = await self.exchange(org, message, ASK, on_text)
        meta = MessageToDict(reply.message.metadata).get(METADATA_KEY, {})
        return PeerAnswer(
            org=org,
            text="".join(p.text for p in reply.message.parts),
            state=reply.state,
            provenance=meta if isinstance(meta, dict) else {},
            latency_s=time.perf_counter() - started,
            verified=True,
            verified_events=reply.events,
            reputation=reply.reputation,
            claim=reply.claim,
            canary=reply.canary,
        )

    def candidates(self) -> tuple[Peer, ...]:
        """The active members other than this one that the trust layer allows and whose
        circuit is not open, as routers see them, with their reputation (`Peer.trust`)."""
        me = self._signer.org_id
        peers = []
        for m in self._roster.current().members:
            if m.org_id == me or m.status != "active" or not self.available(m.org_id):
                continue
            standing = self.assessor.standing(m.org_id)
            if not standing.allowed:
                continue
            peers.append(
                Peer(
                    org=m.org_id,
                    models=tuple(m.capabilities.models),
                    context_size=m.capabilities.context_size,
                    price_per_1k_tokens=m.capabilities.price_per_1k_tokens,
                    typical_latency_ms=m.capabilities.typical_latency_ms,
                    trust=standing.routing_weight,
                )
            )
        return tuple(peers)

    def quarantined(self) -> frozenset[str]:
        """The members other than this one that the trust layer has quarantined."""
        me = self._signer.org_id
        return frozenset(
            m.org_id
            for m in self._roster.current().members
            if m.org_id != me and not self.assessor.standing(m.org_id).allowed
        )

    async def score(self, org: str, question: Question, context: str = "") -> PeerScores:
        """The peer's scores of every option (a message-only exchange: the peer replies
        with one signed Message, which is verified against this request); the canary
        mixer may send the peer a canary alongside."""
        self.canaries.alongside(org, "score", None)
        return await self.scores_of(org, question, context)

    async def scores_of(self, org: str, question: Question, context: str = "") -> PeerScores:
        """`score` without the canary mixer: one exchange."""
        started = time.perf_counter()
        options: dict[str, Any] = {"mode": "score", "choices": list(question.choices)}
        if context:
            options["context"] = context
        message = text_message(question.stem, {METADATA_KEY: options})
        reply = await self.exchange(org, message, SCORE)
        meta = MessageToDict(reply.message.metadata).get(METADATA_KEY, {})
        try:
            scores = OptionScores(
                logprobs=tuple(float(x) for x in meta["scores"]["logprobs"]),
                tokens=tuple(int(x) for x in meta["scores"]["tokens"]),
                chars=tuple(int(x) for x in meta["scores"]["chars"]),
            )
        except (KeyError, TypeError, ValueError):
            raise PeerError(f"{org} answered a scoring request without scores") from None
        if len(scores.logprobs) != len(question.choices):
            raise PeerError(
                f"{org} scored {len(scores.logprobs)} options, not {len(question.choices)}"
            )
        return PeerScores(
            org=org,
            scores=scores,
            tokens=int(meta.get("tokens", 0) or 0),
            model=str(meta.get("model", "")),
            latency_s=time.perf_counter() - started,
            reputation=reply.reputation,
            claim=reply.claim,
            canary=reply.canary,
        )

    async def exchange(
        self, org: str, message: a2a_pb2.Message, call: Call, on_text: OnText | None = None
    ) -> Reply:
        """Every call to a peer: redact -> sign -> audit, send, verify -> audit -> assess.
        Raises PeerQuarantined (nothing sent) for a peer the trust layer quarantined,
        PeerError when the peer cannot be asked or sends nothing to verify, and
        UntrustedAnswer when what it sent fails verification."""
        standing = self.assessor.standing(org)
        if call.gated and not standing.allowed:
            raise PeerQuarantined(org)
        # The OpenTelemetry GenAI agent span of a call to another organization's agent.
        with self.tracer.start_as_current_span(
            f"invoke_agent {org}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": org,
                "consortium.recipient": org,
                "consortium.mode": call.mode,
            },
        ) as span:
            self._endpoint(org)  # a member the roster does not let us call: nothing is sent
            request, request_digest = await self._outgoing(org, message, call.redacted)
            span.set_attribute("consortium.message.id", request.message_id)
            breaker = self.breaker(org)
            if not breaker.available():
                span.set_attribute("consortium.failure", "circuit_open")
                raise PeerError(
                    f"{org} is unreachable: its circuit is open after failed connections "
                    f"(next probe in {breaker.retry_in():.1f} s)",
                    "circuit_open",
                )
            connection = self._connection(org, streaming=call.streaming)
            connection.calls += 1
            try:
                reply = await self._send(
                    connection.client, org, request, request_digest, call, on_text
                )
            except Rejected as e:
                breaker.succeeded(connection.conn)
                await self._assess(Verdict(org, request, None, e.reason))
                raise UntrustedAnswer(call.refused.format(org=org, error=e)) from None
            except PeerError as e:
                span.set_attribute("consortium.failure", e.failure)
                if e.failure in CONNECTION_FAILURES:
                    self._link_failed(org, e.failure, connection)
                else:
                    breaker.succeeded(connection.conn)  # the peer answered: the link works
                if not isinstance(e, PeerBusy):  # a refusal for load says nothing of it
                    await self._assess(Verdict(org, request, None, failure=e.failure))
                raise
            finally:
                connection.calls -= 1
                if connection.retired and connection.calls == 0:
                    self._spawn(connection.client.close())
            breaker.succeeded(connection.conn)
            claim = self._claim(org, reply.message)
            await self._assess(Verdict(org, request, reply.message, claim=claim))
            span.set_attribute("consortium.verdict", "verified")
            if claim:
                span.set_attribute("consortium.claim", claim)
            return replace(reply, reputation=standing.score, claim=claim, canary=standing.canary)

    async def _assess(self, verdict: Verdict) -> None:
        """Tells the assessor what a call showed; a reputation store on PostgreSQL is
        written off the event loop."""
        assessor = self.assessor
        if isinstance(assessor, ReputationAssessor):
            await assessor.off_loop(lambda: assessor.assess(verdict))
        else:
            assessor.assess(verdict)

    def _claim(self, org: str, reply: a2a_pb2.Message) -> str:
        member = self._roster.current().member(org)
        models = member.capabilities.models if member is not None else []
        meta = MessageToDict(reply.metadata).get(METADATA_KEY, {})
        return reply_claim(meta if isinstance(meta, dict) else {}, models)

    async def _outgoing(
        self, org: str, message: a2a_pb2.Message, redacted: bool = True
    ) -> tuple[a2a_pb2.Message, str]:
        """redact (unless `redacted` is false: the node's own records) -> sign (and the
        signer's audit): the request as it leaves, and its digest. A message the redaction
        policy stops raises RequestRejected: nothing is sent."""
        if redacted:
            with self.tracer.start_as_current_span("consortium.redact"):
                message = await self.redactor.redact(message, org)
        parent = traceparent()  # the call span: the peer's spans hang under it
        with self.tracer.start_as_current_span("consortium.sign"):
            request, request_digest = await self._offload(
                lambda: self._signer.sign_request(message, org, parent)
            )
        if isinstance(self.redactor, PolicyRedactor):  # receipts: off the loop on PostgreSQL
            await self.redactor.signed_async(org, request)
        else:
            self.redactor.signed(org, request)
        return request, request_digest

    async def _send(
        self,
        client: Client,
        org: str,
        request: a2a_pb2.Message,
        request_digest: str,
        call: Call,
        on_text: OnText | None,
    ) -> Reply:
        """Sends the request and verifies what comes back; raises Rejected."""
        with self.tracer.start_as_current_span("consortium.verify") as span:
            try:
                reply = await self._receive(client, org, request, request_digest, call, on_text)
            except (A2AError, grpc.aio.AioRpcError) as e:
                busy = busy_of(e)
                if busy is not None:
                    raise PeerBusy(f"{org} refused the call for load: {busy[0]}", busy[1]) from None
                raise PeerError(f"{org} did not answer: {e}", failure_of(e)) from None
            except Rejected as e:
                span.set_attributes(
                    {"consortium.verdict": "refused", "consortium.refusal": e.reason}
                )
                raise
            span.set_attributes(
                {
                    "consortium.response.id": reply.message.message_id,
                    "consortium.events.verified": reply.events,
                }
            )
        return reply

    async def _receive(
        self,
        client: Client,
        org: str,
        request: a2a_pb2.Message,
        request_digest: str,
        call: Call,
        on_text: OnText | None,
    ) -> Reply:
        status: a2a_pb2.TaskStatus | None = None
        direct: a2a_pb2.Message | None = None
        events = 0
        # The verification's own time, without the wait on the network it is interleaved
        # with: the `consortium.verify.ms` of the current (consortium.verify) span.
        spent = 0.0

        async def verify(message: a2a_pb2.Message | TaskEvent) -> Verified:
            def timed() -> Verified:
                # Timed where it runs: the verification, not the hop to a thread.
                nonlocal spent
                started = time.perf_counter()
                try:
                    return self._verifier.verify(
                        message, request_digest=request_digest, expected_sender=org
                    )
                finally:
                    spent += time.perf_counter() - started

            return await self._offload(timed)

        try:
            async for event in client.send_message(
                a2a_pb2.SendMessageRequest(message=request),
                context=ClientCallContext(timeout=self._timeout),
            ):
                # Every task event the peer streams is signed and bound to our request.
                kind = event.WhichOneof("payload")
                if kind == "status_update":
                    await verify(event.status_update)
                    status = event.status_update.status
                    events += 1
                elif kind == "artifact_update":
                    await verify(event.artifact_update)
                    events += 1
                    if on_text is not None:
                        on_text("".join(p.text for p in event.artifact_update.artifact.parts))
                elif kind == "task" and event.task.status.HasField("message"):
                    status = event.task.status
                elif kind == "message" and not call.streaming:
                    direct = event.message
            if direct is not None:
                return Reply(direct, await verify(direct), "", events)
            if status is None or not status.HasField("message"):
                raise PeerError(call.no_reply.format(org=org), "no_reply")
            state = a2a_pb2.TaskState.Name(status.state).removeprefix("TASK_STATE_").lower()
            return Reply(status.message, await verify(status.message), state, events)
        finally:
            trace.get_current_span().set_attribute("consortium.verify.ms", round(spent * 1e3, 3))

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for connection in self._connections.values():
            await connection.client.close()
        self._connections.clear()


def failure_of(error: BaseException) -> str:
    """The assessor's failure code of a call that brought nothing to verify: "timeout"
    (the deadline passed), "unreachable" (no connection), "busy" (refused for load),
    otherwise "no_reply"."""
    if isinstance(error, A2AClientTimeoutError):
        return "timeout"
    rpc = error if isinstance(error, grpc.aio.AioRpcError) else error.__cause__
    if isinstance(rpc, grpc.aio.AioRpcError):
        if rpc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return "timeout"
        if rpc.code() == grpc.StatusCode.UNAVAILABLE:
            return "unreachable"
    if busy_of(error) is not None:  # RESOURCE_EXHAUSTED for load, not for a big message
        return "busy"
    return "no_reply"


def busy_of(error: BaseException) -> tuple[str, float] | None:
    """The peer's words and its seconds to wait when `error` is its refusal for load
    (RESOURCE_EXHAUSTED with Consortium's ErrorInfo; a message over grpc's size limit is
    RESOURCE_EXHAUSTED too, and is not one); None for any other error."""
    rpc = error if isinstance(error, grpc.aio.AioRpcError) else error.__cause__
    if not isinstance(rpc, grpc.aio.AioRpcError):
        return None
    if rpc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    status = status_from_call(rpc)
    shed = False
    retry_after_s = 1.0
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            shed = shed or (
                info.reason == "RESOURCE_EXHAUSTED"
                and info.metadata.get("reason") in ("overloaded", "busy")
            )
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after_s = max(retry.retry_delay.ToTimedelta().total_seconds(), 0.0)
    if not shed:
        return None
    return str(rpc.details() or "resource exhausted")[:300], retry_after_s


TOKEN_KEYS = ("tokens", "inputTokens", "outputTokens")


def reply_claim(meta: Mapping[str, Any], models: Sequence[str]) -> str:
    """What a verified reply's metadata (its provenance, or a scoring reply's) claims that
    the roster does not allow: "unlisted_model" (a model the member's
    `capabilities.models` does not list, when it lists any), "bad_token_count" (a token
    count that is negative, not an integer or above MAX_CLAIMED_TOKENS), or ""."""
    model = meta.get("model")
    if models and isinstance(model, str) and model and model not in models:
        return "unlisted_model"
    for key in TOKEN_KEYS:
        if key in meta and not _plausible_tokens(meta[key]):
            return "bad_token_count"
    return ""


def _plausible_tokens(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value == int(value) and 0 <= value <= MAX_CLAIMED_TOKENS
