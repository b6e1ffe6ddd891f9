"""The node's request handler: traces every incoming message and, when the node belongs
to a federation, verifies it (signature, membership, recipient, federation, freshness,
replay) before the task machinery or the model sees it. Refusals are counted per reason
and logged with identifiers only, never the payload."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from a2a.server.context import ServerCallContext
from a2a.server.events import Event, EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.types import a2a_pb2
from a2a.utils.proto_utils import validate_proto_required_fields
from jwcrypto import jwk
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from consortium.node.config import NodeConfig
from consortium.node.direct import DirectReplies, may_reply_directly
from consortium.node.telemetry import context_from
from consortium.protocols.a2a_errors import from_rejection
from consortium.protocols.signed_message import (
    MessageVerifier,
    Rejected,
    SignedParts,
    TaskEvent,
    Verified,
    read_signed,
    sign_event,
    sign_message,
    sign_message_and_digest,
)

log = logging.getLogger(__name__)

# Where the executor finds a verified request (a protocols.signed_message.Verified) in
# the call context's state.
VERIFIED_KEY = "consortium.verified"


class NodeRequestHandler(DefaultRequestHandler):
    def __init__(
        self,
        *args: object,
        tracer: trace.Tracer,
        verifier: MessageVerifier | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.tracer = tracer
        self.verifier = verifier
        self.refusals: Counter[str] = Counter()

    @contextmanager
    def _receive(
        self, method: str, params: a2a_pb2.SendMessageRequest
    ) -> Iterator[SignedParts | Rejected | None]:
        """The server span of one message, a child of the sender's traceparent if any;
        yields the message's signed parts (None if unsigned, Rejected if unreadable)."""
        message = params.message
        parent = None
        attributes = {"consortium.message.id": message.message_id, "rpc.method": method}
        parts: SignedParts | Rejected | None
        try:
            parts = read_signed(message)
        except Rejected as e:
            parts = e
        if isinstance(parts, SignedParts):
            parent = context_from(parts.claims.traceparent)
            attributes.update(
                {
                    "consortium.sender": parts.claims.sender,
                    "consortium.recipient": parts.claims.recipient,
                }
            )
        with self.tracer.start_as_current_span(
            f"a2a.receive {method}", context=parent, kind=SpanKind.SERVER, attributes=attributes
        ):
            yield parts

    def _verify(
        self,
        params: a2a_pb2.SendMessageRequest,
        parts: SignedParts | Rejected | None,
        context: ServerCallContext,
    ) -> None:
        if self.verifier is None:
            return
        with self.tracer.start_as_current_span("consortium.verify") as span:
            try:
                if isinstance(parts, Rejected):
                    raise parts
                if parts is None:
                    raise Rejected("unsigned", "the message carries no Consortium signature")
                verified = self.verifier.check(params.message, parts)
            except Rejected as e:
                self.refusals[e.reason] += 1
                span.set_attributes(
                    {"consortium.verdict": "refused", "consortium.refusal": e.reason}
                )
                span.set_status(Status(StatusCode.ERROR, e.reason))
                log.warning(
                    "refused message %s: %s (%s)",
                    params.message.message_id or "-",
                    e.reason,
                    e.code,
                )
                raise from_rejection(e) from None
            span.set_attributes(
                {"consortium.verdict": "verified", "consortium.key.id": verified.claims.kid}
            )
        context.state[VERIFIED_KEY] = verified

    async def on_message_send(
        self, params: a2a_pb2.SendMessageRequest, context: ServerCallContext
    ) -> a2a_pb2.Message | a2a_pb2.Task:
        with self._receive("SendMessage", params) as parts:
            self._verify(params, parts, context)
            executor = self.agent_executor
            if isinstance(executor, DirectReplies) and may_reply_directly(params):
                validate_required_fields(params)
                reply = await executor.reply(params.message, context)
                if reply is not None:
                    return reply
            result: a2a_pb2.Message | a2a_pb2.Task = await super().on_message_send(params, context)
            return result

    async def on_message_send_stream(
        self, params: a2a_pb2.SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event, None]:
        with self._receive("SendStreamingMessage", params) as parts:
            self._verify(params, parts, context)
            async for event in super().on_message_send_stream(params, context):
                yield event


def validate_required_fields(params: a2a_pb2.SendMessageRequest) -> None:
    """a2a-sdk's check of the fields the A2A proto marks required (what its handler runs
    first), on a copy without the metadata: a Struct has no required fields, and walking
    a signed message's claims field by field cost more than verifying its signature."""
    probe = a2a_pb2.SendMessageRequest()
    probe.CopyFrom(params)
    probe.message.ClearField("metadata")
    validate_proto_required_fields(probe)


class ResponseSigner:
    """Signs what this node sends to peers; answers are bound to the peer's request."""

    def __init__(self, *, org_id: str, federation_id: str, key: jwk.JWK) -> None:
        self.org_id = org_id
        self.federation_id = federation_id
        self.key = key

    def _bound_to(self, request: Verified) -> dict[str, Any]:
        """Signing arguments of anything sent back for a peer's request."""
        return {
            "key": self.key,
            "sender": self.org_id,
            "recipient": request.claims.sender,
            "federation": self.federation_id,
            "request_digest": request.digest,
            "traceparent": request.claims.traceparent,
        }

    def sign_reply(self, message: a2a_pb2.Message, request: Verified) -> a2a_pb2.Message:
        return sign_message(message, **self._bound_to(request))

    def sign_event(self, event: TaskEvent, request: Verified) -> TaskEvent:
        return sign_event(event, **self._bound_to(request))

    def sign_request(
        self, message: a2a_pb2.Message, recipient: str, traceparent: str = ""
    ) -> tuple[a2a_pb2.Message, str]:
        """The signed request and its digest, which every answer to it must bind to."""
        return sign_message_and_digest(
            message,
            key=self.key,
            sender=self.org_id,
            recipient=recipient,
            federation=self.federation_id,
            traceparent=traceparent,
        )


class SigningEventQueue:
    """Wraps a task's event queue: every status and artifact update this node emits for a
    peer's request is signed, bound to that request, before it is queued."""

    def __init__(self, queue: EventQueue, signer: ResponseSigner, request: Verified) -> None:
        self._queue = queue
        self._signer = signer
        self._request = request

    async def enqueue_event(self, event: Event) -> None:
        if isinstance(event, (a2a_pb2.TaskStatusUpdateEvent, a2a_pb2.TaskArtifactUpdateEvent)):
            event = self._signer.sign_event(event, self._request)
        await self._queue.enqueue_event(event)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


def local_signer(config: NodeConfig) -> Callable[[a2a_pb2.Message], a2a_pb2.Message] | None:
    """For clients of one's own node in a federation (`consortium ask`, the demo): requests
    are signed with the organization's key, as the node checks every message."""
    if config.federation is None:
        return None
    from consortium.federation.roster import load_verified_roster
    from consortium.trust.keys import load_private_key, load_public_key

    admin = load_public_key(config.resolve(config.federation.admin_key))
    roster = load_verified_roster(config.resolve(config.federation.roster), [admin])
    key = load_private_key(config.resolve(config.identity.private_key))
    signer = ResponseSigner(org_id=config.node.org_id, federation_id=roster.federation_id, key=key)
    org = config.node.org_id
    return lambda message: signer.sign_request(message, org)[0]
