"""The node's request handler: admits the caller of every A2A method before anything
else runs, and traces every incoming message.

Every method (both bindings share this handler) first decides who is calling
(`node.auth`): a federation member by the signature on its message or its signed call
proof, a local user or app by its API key, or the anonymous loopback user where allowed.
The caller's scope becomes the a2a-sdk user, which scopes the task store: a caller sees
and touches only its own tasks, and anything else is "task not found". Refusals are
counted per reason and logged with escaped identifiers only, never the payload.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncGenerator, Callable
from typing import Any

from a2a.server.context import ServerCallContext
from a2a.server.events import Event, EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.types import a2a_pb2
from a2a.utils.errors import A2AError
from a2a.utils.proto_utils import validate_proto_required_fields
from google.protobuf.message import Message as ProtoMessage
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from consortium.logsafe import safe
from consortium.node.a2a.direct import DirectReplies, may_reply_directly
from consortium.node.a2a.errors import (
    PermissionDeniedError,
    UnauthenticatedError,
    from_rejection,
)
from consortium.node.a2a.validation import validate_send_request
from consortium.node.auth import ANONYMOUS, Caller, CallerUser, credentials_of, key_caller
from consortium.node.config import NodeConfig
from consortium.node.telemetry import context_from
from consortium.trust.admission import MessageVerifier, Verified
from consortium.trust.api_keys import ApiKeys
from consortium.trust.claims import SignedParts, read_signed
from consortium.trust.refusals import Rejected
from consortium.trust.signing import Signer, SigningIdentity

log = logging.getLogger(__name__)

# Where the executor finds a verified request (a trust.admission.Verified) in
# the call context's state.
VERIFIED_KEY = "consortium.verified"


class NodeRequestHandler(DefaultRequestHandler):
    def __init__(
        self,
        *args: object,
        tracer: trace.Tracer,
        verifier: MessageVerifier | None = None,
        keys: ApiKeys | None = None,
        anonymous_loopback: bool = False,
        member_cn: bool = True,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.tracer = tracer
        self.verifier = verifier
        self.keys = keys
        self.anonymous_loopback = anonymous_loopback
        self.member_cn = member_cn
        self.refusals: Counter[str] = Counter()

    # -- admission -----------------------------------------------------------------

    def _refused(
        self, reason: str, error: A2AError, what: str, *, sender: str = "", audited: bool = False
    ) -> A2AError:
        """Counts and logs a refusal, and records it in the audit log unless the verifier
        (which records what it refuses) already did."""
        self.count_refusal(reason, what, sender=sender, audited=audited)
        return error

    def count_refusal(
        self, reason: str, what: str, *, sender: str = "", audited: bool = False
    ) -> None:
        """Counts and logs a refusal of this node's (the OpenAI endpoint's too), and
        records it in the audit log unless the verifier already did."""
        self.refusals[reason] += 1
        log.warning("refused %s: %s", what, reason)
        if not audited and self.verifier is not None:
            self.verifier.audit.refused(sender=sender, message_id="", reason=reason, what=what)

    def _caller(
        self,
        method: str,
        params: ProtoMessage,
        context: ServerCallContext,
        stranger: Rejected | None = None,
    ) -> Caller:
        """The caller proven by the call's credentials (API key, call proof, loopback);
        raises the A2A error to send otherwise (`stranger`: the refusal for a caller with
        no credentials at all)."""
        creds = credentials_of(context)
        if creds.authorization is not None:
            caller = key_caller(creds.authorization, self.keys)
            if caller is None:
                raise self._refused(
                    "invalid_key",
                    UnauthenticatedError(message="the API key is not valid"),
                    f"{method} call",
                )
            return caller
        if creds.proof is not None:
            if self.verifier is None:
                raise self._refused(
                    "not_federated",
                    UnauthenticatedError(message="this node is not in a federation"),
                    f"{method} call",
                )
            try:
                verified = self.verifier.verify_call(creds.proof, method, params)
            except Rejected as e:
                raise self._refused(
                    e.reason, from_rejection(e), f"{method} call", audited=True
                ) from None
            return self._member(verified.claims.sender, context, method)
        if creds.loopback and self.anonymous_loopback:
            return ANONYMOUS
        if stranger is not None:
            raise self._refused(stranger.reason, from_rejection(stranger), f"{method} call")
        raise self._refused(
            "no_credentials",
            UnauthenticatedError(
                message="credentials required: an API key (Authorization: Bearer), "
                "or a member's signature"
            ),
            f"{method} call",
        )

    def _member(self, org: str, context: ServerCallContext, what: str) -> Caller:
        """A verified member, whose TLS client certificate (mTLS) must name it."""
        names = credentials_of(context).tls_names
        if names and self.member_cn and org not in names:
            raise self._refused(
                "tls_mismatch",
                PermissionDeniedError(
                    message="the TLS client certificate does not name the signing organization"
                ),
                what,
                sender=org,
            )
        return Caller("member", org)

    def _admit(
        self,
        method: str,
        params: ProtoMessage,
        context: ServerCallContext,
        stranger: Rejected | None = None,
    ) -> Caller:
        caller = self._caller(method, params, context, stranger)
        context.user = CallerUser(caller)
        log.debug("%s call admitted for %s", method, caller.owner)
        return caller

    def _admit_message(
        self,
        method: str,
        params: a2a_pb2.SendMessageRequest,
        parts: SignedParts | Rejected | None,
        context: ServerCallContext,
    ) -> a2a_pb2.SendMessageRequest:
        """Admits the sender of a message; returns the request to act on (for a member,
        only what its signature covers: the message; its unsigned tenant is dropped)."""
        validate_send_request(params)
        if self.verifier is not None and parts is not None:
            verified = self._verify(params, parts, context)
            caller = self._member(
                verified.claims.sender, context, f"message {safe(params.message.message_id)}"
            )
            context.user = CallerUser(caller)
            trace.get_current_span().set_attributes(
                {
                    "consortium.message.id": params.message.message_id,
                    "consortium.sender": verified.claims.sender,
                    "consortium.recipient": verified.claims.recipient,
                }
            )
            # Request-level fields (configuration, metadata, tenant) are outside the
            # signature: a member's request is its signed message alone.
            context.tenant = ""
            return a2a_pb2.SendMessageRequest(message=params.message)
        # In a federation, a caller without credentials is told what members need.
        unsigned = (
            Rejected("unsigned", "the message carries no Consortium signature")
            if self.verifier is not None
            else None
        )
        self._admit(method, params, context, unsigned)
        return params

    def _verify(
        self,
        params: a2a_pb2.SendMessageRequest,
        parts: SignedParts | Rejected,
        context: ServerCallContext,
    ) -> Verified:
        assert self.verifier is not None
        with self.tracer.start_as_current_span("consortium.verify") as span:
            try:
                if isinstance(parts, Rejected):
                    raise self.verifier.refused(params.message, parts)
                verified = self.verifier.check(params.message, parts)
            except Rejected as e:
                self.refusals[e.reason] += 1
                span.set_attributes(
                    {"consortium.verdict": "refused", "consortium.refusal": e.reason}
                )
                span.set_status(Status(StatusCode.ERROR, e.reason))
                log.warning(
                    "refused message %s: %s (%s)",
                    safe(params.message.message_id or "-"),
                    e.reason,
                    e.code,
                )
                raise from_rejection(e) from None
            span.set_attributes(
                {"consortium.verdict": "verified", "consortium.key.id": verified.claims.kid}
            )
        context.state[VERIFIED_KEY] = verified
        return verified

    # -- messages ------------------------------------------------------------------

    def _receive_span(
        self, method: str, params: a2a_pb2.SendMessageRequest
    ) -> tuple[Span, SignedParts | Rejected | None]:
        """The server span of one message, a child of the sender's traceparent if any (a
        trace id names no one), and the message's signed parts (None if unsigned, Rejected
        if unreadable)."""
        message = params.message
        parent = None
        parts: SignedParts | Rejected | None
        try:
            parts = read_signed(message)
        except Rejected as e:
            parts = e
        if isinstance(parts, SignedParts):
            parent = context_from(parts.claims.traceparent)
        # The message id and the claimed parties are the sender's choice (a client's id
        # may be "pii-<email>"): on the span only once a member's signature vouches for
        # them (`_admit_message`).
        span = self.tracer.start_span(
            f"a2a.receive {method}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.method": method},
        )
        return span, parts

    async def on_message_send(
        self, params: a2a_pb2.SendMessageRequest, context: ServerCallContext
    ) -> a2a_pb2.Message | a2a_pb2.Task:
        validate_send_request(params)
        span, parts = self._receive_span("SendMessage", params)
        with trace.use_span(span, end_on_exit=True):
            params = self._admit_message("SendMessage", params, parts, context)
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
        # The span is made current only around each step of the stream, never across a
        # yield: the consumer resumes this generator in contexts of its own, and a context
        # attached in one cannot be detached in another.
        validate_send_request(params)
        span, parts = self._receive_span("SendStreamingMessage", params)
        try:
            with trace.use_span(span, end_on_exit=False):
                params = self._admit_message("SendStreamingMessage", params, parts, context)
                stream = super().on_message_send_stream(params, context)
            while True:
                with trace.use_span(span, end_on_exit=False):
                    try:
                        event = await anext(stream)
                    except StopAsyncIteration:
                        break
                yield event
        finally:
            span.end()

    # -- task methods --------------------------------------------------------------

    async def on_get_task(
        self, params: a2a_pb2.GetTaskRequest, context: ServerCallContext
    ) -> a2a_pb2.Task | None:
        self._admit("GetTask", params, context)
        result: a2a_pb2.Task | None = await super().on_get_task(params, context)
        return result

    async def on_list_tasks(
        self, params: a2a_pb2.ListTasksRequest, context: ServerCallContext
    ) -> a2a_pb2.ListTasksResponse:
        self._admit("ListTasks", params, context)
        result: a2a_pb2.ListTasksResponse = await super().on_list_tasks(params, context)
        return result

    async def on_cancel_task(
        self, params: a2a_pb2.CancelTaskRequest, context: ServerCallContext
    ) -> a2a_pb2.Task | None:
        self._admit("CancelTask", params, context)
        result: a2a_pb2.Task | None = await super().on_cancel_task(params, context)
        return result

    async def on_subscribe_to_task(
        self, params: a2a_pb2.SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event, None]:
        self._admit("SubscribeToTask", params, context)
        async for event in super().on_subscribe_to_task(params, context):
            yield event

    async def on_create_task_push_notification_config(
        self, params: a2a_pb2.TaskPushNotificationConfig, context: ServerCallContext
    ) -> a2a_pb2.TaskPushNotificationConfig:
        self._admit("CreateTaskPushNotificationConfig", params, context)
        result: a2a_pb2.TaskPushNotificationConfig = (
            await super().on_create_task_push_notification_config(params, context)
        )
        return result

    async def on_get_task_push_notification_config(
        self, params: a2a_pb2.GetTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> a2a_pb2.TaskPushNotificationConfig:
        self._admit("GetTaskPushNotificationConfig", params, context)
        result: a2a_pb2.TaskPushNotificationConfig = (
            await super().on_get_task_push_notification_config(params, context)
        )
        return result

    async def on_list_task_push_notification_configs(
        self, params: a2a_pb2.ListTaskPushNotificationConfigsRequest, context: ServerCallContext
    ) -> a2a_pb2.ListTaskPushNotificationConfigsResponse:
        self._admit("ListTaskPushNotificationConfigs", params, context)
        result: a2a_pb2.ListTaskPushNotificationConfigsResponse = (
            await super().on_list_task_push_notification_configs(params, context)
        )
        return result

    async def on_delete_task_push_notification_config(
        self, params: a2a_pb2.DeleteTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> None:
        self._admit("DeleteTaskPushNotificationConfig", params, context)
        await super().on_delete_task_push_notification_config(params, context)

    async def on_get_extended_agent_card(
        self, params: a2a_pb2.GetExtendedAgentCardRequest, context: ServerCallContext
    ) -> a2a_pb2.AgentCard:
        self._admit("GetExtendedAgentCard", params, context)
        result: a2a_pb2.AgentCard = await super().on_get_extended_agent_card(params, context)
        return result


def validate_required_fields(params: a2a_pb2.SendMessageRequest) -> None:
    """a2a-sdk's check of the fields the A2A proto marks required (what its handler runs
    first), on a copy without the metadata: a Struct has no required fields, and walking
    a signed message's claims field by field cost more than verifying its signature."""
    probe = a2a_pb2.SendMessageRequest()
    probe.CopyFrom(params)
    probe.message.ClearField("metadata")
    validate_proto_required_fields(probe)


class SigningEventQueue:
    """Wraps a task's event queue: every status and artifact update this node emits for a
    peer's request is signed, bound to that request, before it is queued."""

    def __init__(self, queue: EventQueue, signer: Signer, request: Verified) -> None:
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
    org = config.node.org_id
    signer = Signer(SigningIdentity(key, org, roster.federation_id))
    return lambda message: signer.sign_request(message, org)[0]
