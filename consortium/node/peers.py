"""Calling other organizations: a signed A2A request over gRPC, with a deadline and one
reused connection per peer; the peer's signed answer and events are verified before they
are used: bound to our request, and signed by the organization we asked."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from a2a.client import Client, ClientCallContext
from a2a.client.errors import A2AClientError
from a2a.types import a2a_pb2
from a2a.utils.constants import PROTOCOL_VERSION_CURRENT, TransportProtocol
from google.protobuf.json_format import MessageToDict
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from consortium.errors import NodeUnavailableError
from consortium.federation.watcher import RosterWatcher
from consortium.node.client import open_client, text_message
from consortium.node.telemetry import traceparent
from consortium.protocols.multiple_choice import OptionScores, Question
from consortium.protocols.request_options import METADATA_KEY
from consortium.protocols.routing import Peer
from consortium.trust.admission import MessageVerifier
from consortium.trust.refusals import Rejected
from consortium.trust.signing import Signer


class PeerError(NodeUnavailableError):
    """A peer could not be asked, or its answer could not be trusted."""


@dataclass
class PeerAnswer:
    org: str
    text: str
    state: str
    provenance: dict[str, Any] = field(default_factory=dict)
    latency_s: float = 0.0
    verified: bool = False
    verified_events: int = 0


@dataclass(frozen=True)
class PeerScores:
    org: str
    scores: OptionScores
    tokens: int
    model: str
    latency_s: float


class PeerClient:
    def __init__(
        self,
        *,
        signer: Signer,
        verifier: MessageVerifier,
        roster: RosterWatcher,
        timeout_s: float,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._credentials = credentials
        self.tracer: trace.Tracer = trace.NoOpTracer()
        self._signer = signer
        self._verifier = verifier
        self._roster = roster
        self._timeout = timeout_s
        self._clients: dict[tuple[str, str, bool], Client] = {}

    def _client(self, org: str, streaming: bool = True) -> Client:
        member = self._roster.current().member(org)
        if member is None:
            raise PeerError(f"{org} is not a member of the federation")
        if member.status != "active":
            raise PeerError(f"{org} is {member.status}")
        if not member.endpoints.grpc:
            raise PeerError(f"the roster lists no gRPC endpoint for {org}")
        cache_key = (org, member.endpoints.grpc, streaming)
        if cache_key not in self._clients:
            card = a2a_pb2.AgentCard(
                name=org,
                supported_interfaces=[
                    a2a_pb2.AgentInterface(
                        url=member.endpoints.grpc,
                        protocol_binding=TransportProtocol.GRPC,
                        protocol_version=PROTOCOL_VERSION_CURRENT,
                    )
                ],
                capabilities=a2a_pb2.AgentCapabilities(streaming=True),
            )
            self._clients[cache_key] = open_client(
                card, credentials=self._credentials, streaming=streaming
            )
        return self._clients[cache_key]

    async def ask(self, org: str, text: str, options: dict[str, Any] | None = None) -> PeerAnswer:
        with self.tracer.start_as_current_span(
            f"a2a.call {org}", kind=SpanKind.CLIENT, attributes={"consortium.recipient": org}
        ) as span:
            answer = await self._ask(org, text, options, span)
            span.set_attribute(
                "consortium.verdict", "verified" if answer.verified else "unverified"
            )
            return answer

    async def _ask(
        self, org: str, text: str, options: dict[str, Any] | None, span: trace.Span
    ) -> PeerAnswer:
        started = time.perf_counter()
        client = self._client(org)
        parent = traceparent()  # the call span: the peer's spans hang under it
        with self.tracer.start_as_current_span("consortium.sign"):
            request, request_digest = self._signer.sign_request(
                text_message(text, {METADATA_KEY: options} if options else None), org, parent
            )
        span.set_attribute("consortium.message.id", request.message_id)
        status: a2a_pb2.TaskStatus | None = None
        events = 0
        with self.tracer.start_as_current_span("consortium.verify") as vspan:
            try:
                async for event in client.send_message(
                    a2a_pb2.SendMessageRequest(message=request),
                    context=ClientCallContext(timeout=self._timeout),
                ):
                    # Every task event the peer streams is signed and bound to our request.
                    kind = event.WhichOneof("payload")
                    if kind == "status_update":
                        self._verifier.verify(
                            event.status_update,
                            request_digest=request_digest,
                            expected_sender=org,
                        )
                        status = event.status_update.status
                        events += 1
                    elif kind == "artifact_update":
                        self._verifier.verify(
                            event.artifact_update,
                            request_digest=request_digest,
                            expected_sender=org,
                        )
                        events += 1
                    elif kind == "task" and event.task.status.HasField("message"):
                        status = event.task.status
                if status is None or not status.HasField("message"):
                    raise PeerError(f"{org} answered without a status message")
                self._verifier.verify(
                    status.message, request_digest=request_digest, expected_sender=org
                )
            except A2AClientError as e:
                raise PeerError(f"{org} did not answer: {e}") from None
            except Rejected as e:
                vspan.set_attributes(
                    {"consortium.verdict": "refused", "consortium.refusal": e.reason}
                )
                raise PeerError(f"the answer from {org} was refused: {e}") from None
            vspan.set_attributes(
                {
                    "consortium.response.id": status.message.message_id,
                    "consortium.events.verified": events,
                }
            )
        final = status
        state = a2a_pb2.TaskState.Name(final.state).removeprefix("TASK_STATE_").lower()
        meta = MessageToDict(final.message.metadata).get(METADATA_KEY, {})
        return PeerAnswer(
            org=org,
            text="".join(p.text for p in final.message.parts),
            state=state,
            provenance=meta if isinstance(meta, dict) else {},
            latency_s=time.perf_counter() - started,
            verified=True,
            verified_events=events,
        )

    def candidates(self) -> tuple[Peer, ...]:
        """The active members other than this one, as routers see them."""
        me = self._signer.org_id
        return tuple(
            Peer(
                org=m.org_id,
                models=tuple(m.capabilities.models),
                context_size=m.capabilities.context_size,
                price_per_1k_tokens=m.capabilities.price_per_1k_tokens,
                typical_latency_ms=m.capabilities.typical_latency_ms,
            )
            for m in self._roster.current().members
            if m.org_id != me and m.status == "active"
        )

    async def score(self, org: str, question: Question, context: str = "") -> PeerScores:
        """The peer's scores of every option (a message-only exchange: the peer replies
        with one signed Message, which is verified against this request)."""
        started = time.perf_counter()
        with self.tracer.start_as_current_span(
            f"a2a.call {org}",
            kind=SpanKind.CLIENT,
            attributes={"consortium.recipient": org, "consortium.mode": "score"},
        ) as span:
            client = self._client(org, streaming=False)
            options = {"mode": "score", "choices": list(question.choices)}
            if context:
                options["context"] = context
            request, request_digest = self._signer.sign_request(
                text_message(question.stem, {METADATA_KEY: options}), org, traceparent()
            )
            span.set_attribute("consortium.message.id", request.message_id)
            reply: a2a_pb2.Message | None = None
            try:
                async for event in client.send_message(
                    a2a_pb2.SendMessageRequest(message=request),
                    context=ClientCallContext(timeout=self._timeout),
                ):
                    if event.WhichOneof("payload") == "message":
                        reply = event.message
                    elif event.WhichOneof("payload") == "task":
                        task = event.task
                        if task.status.HasField("message"):
                            reply = task.status.message
                if reply is None:
                    raise PeerError(f"{org} sent no scores")
                self._verifier.verify(reply, request_digest=request_digest, expected_sender=org)
            except A2AClientError as e:
                raise PeerError(f"{org} did not answer: {e}") from None
            except Rejected as e:
                span.set_attributes(
                    {"consortium.verdict": "refused", "consortium.refusal": e.reason}
                )
                raise PeerError(f"the scores from {org} were refused: {e}") from None
            span.set_attribute("consortium.verdict", "verified")
        meta = MessageToDict(reply.metadata).get(METADATA_KEY, {})
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
        )

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
