"""The node's request handler: admits the caller of every A2A method before anything
else runs, and traces every incoming message.

Every method (both bindings share this handler) first decides who is calling
(`node.auth`): a federation member by the signature on its message or its signed call
proof, a local user or app by its API key, or the anonymous loopback user where allowed.
The caller's scope becomes the a2a-sdk user, which scopes the task store: a caller sees
and touches only its own tasks, and anything else is "task not found". Refusals are
counted per reason and logged with escaped identifiers only, never the payload.

A message asking for work (a task, a scoring request) is then admitted by the node's
load shedding (node/admission.py), with the caller's gRPC deadline when it set one, and
holds its place until its response or stream ends; a request refused for load gets
RESOURCE_EXHAUSTED (JSON-RPC -32042) at once. Control messages (feedback, trust reports,
checkpoints, proofs) are never shed.

A storage fault met on the way (`StorageUnavailable`, from any store: tasks, replay
cache, audit log) leaves every method as the A2A error `StorageUnavailableError`
(UNAVAILABLE / -32050), never as an internal error.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

from a2a.server.context import ServerCallContext
from a2a.server.events import Event, EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.types import a2a_pb2
from a2a.utils.errors import A2AError
from a2a.utils.proto_utils import validate_proto_required_fields
from google.protobuf.message import Message as ProtoMessage
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from consortium.errors import NodeOverloaded, RateLimited, StorageUnavailable
from consortium.logsafe import safe
from consortium.node.a2a.direct import DirectReplies, may_reply_directly
from consortium.node.a2a.errors import (
    PermissionDeniedError,
    UnauthenticatedError,
    from_rate_limited,
    from_rejection,
    from_storage,
    overloaded,
)
from consortium.node.a2a.validation import MESSAGE_ONLY_MODES, requested_mode, validate_send_request
from consortium.node.admission import Admission, Ticket
from consortium.node.auth import (
    ANONYMOUS,
    Caller,
    CallerUser,
    caller_of,
    credentials_of,
    key_caller_async,
)
from consortium.node.config import NodeConfig
from consortium.node.limits import UNLIMITED, CallerLimits, Reservation
from consortium.node.offload import INLINE, Offload
from consortium.node.telemetry import context_from
from consortium.protocols.request_options import RequestOptions, request_options
from consortium.trust.admission import MessageVerifier, Verified
from consortium.trust.api_keys import ApiKeys
from consortium.trust.claims import SignedParts, read_signed
from consortium.trust.refusals import Rejected
from consortium.trust.signing import Signer, SigningIdentity

log = logging.getLogger(__name__)

# Where the executor finds a verified request (a trust.admission.Verified) in
# the call context's state.
VERIFIED_KEY = "consortium.verified"
# Where the executor finds the task's reservation of its caller's limits (a
# node.limits.Reservation), to hand to the service, which settles it.
RESERVATION_KEY = "consortium.reservation"
# Where the executor adds the time it spends signing answers and task events for a
# verified request (a SignTime), the `consortium.sign.ms` of its `a2a.receive` span.
SIGN_TIME_KEY = "consortium.sign_time"


class SignTime:
    """Time spent signing (and auditing) what a node sends back for one peer's request."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def signing(self) -> _Timing:
        return _Timing(self)


class _Timing:
    def __init__(self, total: SignTime) -> None:
        self._total = total
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, *_: object) -> None:
        self._total.seconds += time.perf_counter() - self._started


def _record_sign_time(span: Span, context: ServerCallContext) -> None:
    timing = context.state.get(SIGN_TIME_KEY)
    if isinstance(timing, SignTime):
        span.set_attribute("consortium.sign.ms", round(timing.seconds * 1e3, 3))


_P = ParamSpec("_P")
_R = TypeVar("_R")
_H = TypeVar("_H", bound="NodeRequestHandler")


def _storage_faults_as_a2a(
    method: Callable[Concatenate[_H, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[_H, _P], Coroutine[Any, Any, _R]]:
    """A handler method whose storage faults leave it as StorageUnavailableError."""

    async def wrapper(self: _H, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await method(self, *args, **kwargs)
        except StorageUnavailable as e:
            raise from_storage(e, self.org_id) from None

    functools.update_wrapper(wrapper, method)
    return wrapper


def _stream_storage_faults_as_a2a(
    method: Callable[Concatenate[_H, _P], AsyncIterator[_R]],
) -> Callable[Concatenate[_H, _P], AsyncGenerator[_R, None]]:
    """A handler stream whose storage faults end it with StorageUnavailableError."""

    async def wrapper(self: _H, /, *args: _P.args, **kwargs: _P.kwargs) -> AsyncGenerator[_R, None]:
        try:
            async for item in method(self, *args, **kwargs):
                yield item
        except StorageUnavailable as e:
            raise from_storage(e, self.org_id) from None

    functools.update_wrapper(wrapper, method)
    return wrapper


class NodeRequestHandler(DefaultRequestHandler):
    def __init__(
        self,
        *args: object,
        tracer: trace.Tracer,
        verifier: MessageVerifier | None = None,
        keys: ApiKeys | None = None,
        anonymous_loopback: bool = False,
        member_cn: bool = True,
        limits: CallerLimits | None = None,
        admission: Admission | None = None,
        uses_local_model: Callable[[RequestOptions, Caller], bool] | None = None,
        org_id: str = "",
        require_writable: Callable[[], Awaitable[None]] | None = None,
        offload: Offload = INLINE,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        # Where verifying (its replay-cache insert and audit entry) runs (node/offload.py:
        # inline on SQLite, off the event loop on PostgreSQL).
        self.offload = offload
        self.admission = admission
        # Whether a request may take a turn of the node's model (the service decides).
        self.uses_local_model = uses_local_model or (lambda options, caller: True)
        self.org_id = org_id
        # Raises StorageUnavailable while the node cannot write (node.storage_health).
        self.require_writable = require_writable
        self.tracer = tracer
        self.verifier = verifier
        self.keys = keys
        self.anonymous_loopback = anonymous_loopback
        self.member_cn = member_cn
        self.limits = limits
        self.refusals: Counter[str] = Counter()

    # -- admission -----------------------------------------------------------------

    def _refused(
        self, reason: str, error: A2AError, what: str, *, sender: str = "", audited: bool = False
    ) -> A2AError:
        """Counts and logs a refusal, and records it in the audit log unless the verifier
        (which records what it refuses) already did; the error names the reason (its
        ErrorInfo metadata)."""
        if error.data is None:
            error.data = {"reason": reason}
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

    async def _caller(
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
            caller = await key_caller_async(creds.authorization, self.keys)
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
            verifier, proof = self.verifier, creds.proof
            try:
                verified = await self.offload(lambda: verifier.verify_call(proof, method, params))
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

    async def _admit(
        self,
        method: str,
        params: ProtoMessage,
        context: ServerCallContext,
        stranger: Rejected | None = None,
    ) -> Caller:
        caller = await self._caller(method, params, context, stranger)
        context.user = CallerUser(caller)
        await self._count(caller)
        log.debug("%s call admitted for %s", method, caller.owner)
        return caller

    async def _count(self, caller: Caller) -> None:
        """Counts the call against its caller's requests per minute (node.limits); raises
        RESOURCE_EXHAUSTED over them. Not logged one by one, nor audited: a caller over
        its limits must not fill the logs either."""
        if self.limits is None:
            return
        try:
            await self.limits.count_request_async(caller)
        except RateLimited as e:
            self.refusals["rate_limited"] += 1
            raise from_rate_limited(e) from None

    async def _reserve(
        self,
        params: a2a_pb2.SendMessageRequest,
        options: RequestOptions | None,
        context: ServerCallContext,
    ) -> Reservation:
        """Reserves the message's task in its caller's limits (tokens, requests in
        progress), for the service to settle; raises RESOURCE_EXHAUSTED over them."""
        caller = caller_of(context)
        if self.limits is None or caller is None:
            return UNLIMITED
        message = params.message
        text = "\n".join(part.text for part in message.parts if part.text)
        max_tokens = options.max_tokens if options is not None else None
        try:
            reservation = await self.limits.reserve_task_async(caller, text, max_tokens)
        except RateLimited as e:
            self.refusals["rate_limited"] += 1
            raise from_rate_limited(e) from None
        context.state[RESERVATION_KEY] = reservation
        return reservation

    async def _admit_message(
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
            verified = await self._verify(params, parts, context)
            caller = self._member(
                verified.claims.sender, context, f"message {safe(params.message.message_id)}"
            )
            context.user = CallerUser(caller)
            await self._count(caller)
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
        await self._admit(method, params, context, unsigned)
        return params

    async def _verify(
        self,
        params: a2a_pb2.SendMessageRequest,
        parts: SignedParts | Rejected,
        context: ServerCallContext,
    ) -> Verified:
        verifier = self.verifier
        assert verifier is not None

        def check() -> Verified:
            if isinstance(parts, Rejected):
                raise verifier.refused(params.message, parts)  # audited there
            return verifier.check(params.message, parts)

        with self.tracer.start_as_current_span("consortium.verify") as span:
            try:
                verified = await self.offload(check)
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
        context.state[SIGN_TIME_KEY] = SignTime()
        return verified

    def _shed(
        self,
        params: a2a_pb2.SendMessageRequest,
        options: RequestOptions | None,
        context: ServerCallContext,
    ) -> Ticket | None:
        """The admitted message's place in the node's load (None for a control message,
        or a node without bounds); raises RESOURCE_EXHAUSTED when the node refuses it."""
        caller = caller_of(context)
        if self.admission is None or caller is None:
            return None
        if requested_mode(params.message) in MESSAGE_ONLY_MODES:
            return None
        if options is None:
            return None  # refused as it is, at no cost
        if options.feedback is not None:
            return None
        try:
            return self.admission.admit(
                caller.owner,
                local_model=self.uses_local_model(options, caller),
                deadline_s=_deadline_s(context),
            )
        except NodeOverloaded as e:
            raise overloaded(e) from None

    async def _writable(self) -> None:
        """A task that could not be stored is refused before any work is done."""
        if self.require_writable is not None:
            await self.require_writable()

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

    @_storage_faults_as_a2a
    async def on_message_send(
        self, params: a2a_pb2.SendMessageRequest, context: ServerCallContext
    ) -> a2a_pb2.Message | a2a_pb2.Task:
        validate_send_request(params)
        span, parts = self._receive_span("SendMessage", params)
        with trace.use_span(span, end_on_exit=True):
            try:
                return await self._send(params, parts, context)
            finally:
                _record_sign_time(span, context)

    async def _send(
        self,
        params: a2a_pb2.SendMessageRequest,
        parts: SignedParts | Rejected | None,
        context: ServerCallContext,
    ) -> a2a_pb2.Message | a2a_pb2.Task:
        """SendMessage within its `a2a.receive` span."""
        params = await self._admit_message("SendMessage", params, parts, context)
        await self._writable()
        options = _options_of(params)
        with self._shed(params, options, context) or Ticket(None, None):
            executor = self.agent_executor
            if isinstance(executor, DirectReplies) and may_reply_directly(params):
                validate_required_fields(params)
                reply = await executor.reply(params.message, context)
                if reply is not None:
                    return reply
            reservation = await self._reserve(params, options, context)
            try:
                result: a2a_pb2.Message | a2a_pb2.Task = await super().on_message_send(
                    params, context
                )
            except BaseException:
                reservation.release_unclaimed()
                raise
            return result

    @_stream_storage_faults_as_a2a
    async def on_message_send_stream(
        self, params: a2a_pb2.SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event, None]:
        # The span is made current only around each step of the stream, never across a
        # yield: the consumer resumes this generator in contexts of its own, and a context
        # attached in one cannot be detached in another.
        validate_send_request(params)
        span, parts = self._receive_span("SendStreamingMessage", params)
        ticket: Ticket | None = None
        reservation: Reservation | None = None
        try:
            with trace.use_span(span, end_on_exit=False):
                params = await self._admit_message("SendStreamingMessage", params, parts, context)
                await self._writable()
                options = _options_of(params)
                ticket = self._shed(params, options, context)
                reservation = await self._reserve(params, options, context)
                stream = super().on_message_send_stream(params, context)
            while True:
                with trace.use_span(span, end_on_exit=False):
                    try:
                        event = await anext(stream)
                    except StopAsyncIteration:
                        break
                yield event
        except BaseException:
            if reservation is not None:
                reservation.release_unclaimed()
            raise
        finally:
            if ticket is not None:
                ticket.release()
            _record_sign_time(span, context)
            span.end()

    # -- task methods --------------------------------------------------------------

    @_storage_faults_as_a2a
    async def on_get_task(
        self, params: a2a_pb2.GetTaskRequest, context: ServerCallContext
    ) -> a2a_pb2.Task | None:
        await self._admit("GetTask", params, context)
        result: a2a_pb2.Task | None = await super().on_get_task(params, context)
        return result

    @_storage_faults_as_a2a
    async def on_list_tasks(
        self, params: a2a_pb2.ListTasksRequest, context: ServerCallContext
    ) -> a2a_pb2.ListTasksResponse:
        await self._admit("ListTasks", params, context)
        result: a2a_pb2.ListTasksResponse = await super().on_list_tasks(params, context)
        return result

    @_storage_faults_as_a2a
    async def on_cancel_task(
        self, params: a2a_pb2.CancelTaskRequest, context: ServerCallContext
    ) -> a2a_pb2.Task | None:
        await self._admit("CancelTask", params, context)
        await self._writable()
        result: a2a_pb2.Task | None = await super().on_cancel_task(params, context)
        return result

    @_stream_storage_faults_as_a2a
    async def on_subscribe_to_task(
        self, params: a2a_pb2.SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event, None]:
        await self._admit("SubscribeToTask", params, context)
        async for event in super().on_subscribe_to_task(params, context):
            yield event

    @_storage_faults_as_a2a
    async def on_create_task_push_notification_config(
        self, params: a2a_pb2.TaskPushNotificationConfig, context: ServerCallContext
    ) -> a2a_pb2.TaskPushNotificationConfig:
        await self._admit("CreateTaskPushNotificationConfig", params, context)
        result: a2a_pb2.TaskPushNotificationConfig = (
            await super().on_create_task_push_notification_config(params, context)
        )
        return result

    @_storage_faults_as_a2a
    async def on_get_task_push_notification_config(
        self, params: a2a_pb2.GetTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> a2a_pb2.TaskPushNotificationConfig:
        await self._admit("GetTaskPushNotificationConfig", params, context)
        result: a2a_pb2.TaskPushNotificationConfig = (
            await super().on_get_task_push_notification_config(params, context)
        )
        return result

    @_storage_faults_as_a2a
    async def on_list_task_push_notification_configs(
        self, params: a2a_pb2.ListTaskPushNotificationConfigsRequest, context: ServerCallContext
    ) -> a2a_pb2.ListTaskPushNotificationConfigsResponse:
        await self._admit("ListTaskPushNotificationConfigs", params, context)
        result: a2a_pb2.ListTaskPushNotificationConfigsResponse = (
            await super().on_list_task_push_notification_configs(params, context)
        )
        return result

    @_storage_faults_as_a2a
    async def on_delete_task_push_notification_config(
        self, params: a2a_pb2.DeleteTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> None:
        await self._admit("DeleteTaskPushNotificationConfig", params, context)
        await super().on_delete_task_push_notification_config(params, context)

    @_storage_faults_as_a2a
    async def on_get_extended_agent_card(
        self, params: a2a_pb2.GetExtendedAgentCardRequest, context: ServerCallContext
    ) -> a2a_pb2.AgentCard:
        await self._admit("GetExtendedAgentCard", params, context)
        result: a2a_pb2.AgentCard = await super().on_get_extended_agent_card(params, context)
        return result


def _deadline_s(context: ServerCallContext) -> float | None:
    """The seconds left before the caller's gRPC deadline (None without one, or over
    JSON-RPC)."""
    grpc_context = context.state.get("grpc_context")
    remaining = getattr(grpc_context, "time_remaining", None)
    if remaining is None:
        return None
    value = remaining()
    return value if isinstance(value, int | float) and value < _NO_DEADLINE_S else None


# grpc reports a call without a deadline as one far in the future.
_NO_DEADLINE_S = 365 * 86400.0


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
    peer's request is signed, bound to that request, before it is queued (the signing and
    its audit entry where `offload` runs them)."""

    def __init__(
        self,
        queue: EventQueue,
        signer: Signer,
        request: Verified,
        timing: SignTime,
        offload: Offload = INLINE,
    ) -> None:
        self._queue = queue
        self._signer = signer
        self._request = request
        self._timing = timing
        self._offload = offload

    async def enqueue_event(self, event: Event) -> None:
        if isinstance(event, (a2a_pb2.TaskStatusUpdateEvent, a2a_pb2.TaskArtifactUpdateEvent)):
            update = event

            def sign() -> Event:
                with self._timing.signing():  # timed where it runs, not the hop to it
                    return self._signer.sign_event(update, self._request)

            event = await self._offload(sign)
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


def _options_of(params: a2a_pb2.SendMessageRequest) -> RequestOptions | None:
    """The message's request options, read once for load shedding and the caller's
    limits; None when they do not parse (the executor refuses the task, saying why)."""
    try:
        return request_options(params.message)
    except ValueError:
        return None
