"""The A2A binding of the node's service: a2a-sdk's AgentExecutor over `NodeService`.

Protocol handling (A2A methods, task store, streaming, cancellation plumbing) stays in
a2a-sdk's request handler; this module turns an A2A request into a `ServiceRequest`
(text, options from `metadata["consortium"]`, the admitted caller) and the service's
events into task events: SUBMITTED -> WORKING -> artifact chunks -> COMPLETED, or
REJECTED (nothing to answer, bad parameters, prompt too long), FAILED (the model or a
peer failed, or the model's queue refused the task after it was admitted: it waited past
[model] queue_timeout_s; the status message names the reason) or CANCELED. A scoring
request the model's queue refuses fails the call with RESOURCE_EXHAUSTED. Every status
message carries the provenance when there is one, and is signed when a peer sent the
request. Scoring requests, feedback and members' trust reports (node/reports.py) are
answered directly, with one Message and no task; a trust report never reaches the
service or the model.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, cast

from a2a.helpers.proto_helpers import new_task_from_user_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.context import ServerCallContext
from a2a.server.events import EventQueue
from a2a.server.tasks.task_updater import TaskUpdater
from a2a.types import a2a_pb2
from opentelemetry import trace

from consortium.errors import ModelError, NodeOverloaded, RequestRejected
from consortium.logsafe import safe
from consortium.node.a2a.direct import DirectReplies
from consortium.node.a2a.errors import PermissionDeniedError, overloaded
from consortium.node.a2a.request_handler import (
    RESERVATION_KEY,
    SIGN_TIME_KEY,
    VERIFIED_KEY,
    SigningEventQueue,
    SignTime,
)
from consortium.node.a2a.validation import MESSAGE_ONLY_MODES, requested_mode
from consortium.node.auth import Caller, caller_of
from consortium.node.limits import UNLIMITED, Reservation
from consortium.node.offload import INLINE, Offload
from consortium.node.reports import TrustReports
from consortium.node.service import (
    Answered,
    Failed,
    NodeService,
    NoRoutingRecords,
    PeerUnfinished,
    Rejected,
    ServiceRequest,
    TaskEvent,
    TextChunk,
    Working,
)
from consortium.node.witnessing import Witnessing
from consortium.protocols.provenance import Provenance
from consortium.protocols.replies import (
    CosignReply,
    FeedbackReply,
    ProofReply,
    ReportAck,
    ScoresOfOptions,
    ScoresReply,
)
from consortium.protocols.request_options import (
    METADATA_KEY,
    Feedback,
    RequestOptions,
    request_options,
)
from consortium.trust.admission import Verified
from consortium.trust.audit.inclusion import RECEIPT_KEY
from consortium.trust.signing import Signer

log = logging.getLogger(__name__)


def _agent_message(
    task_id: str, context_id: str, text: str, metadata: dict[str, Any] | None = None
) -> a2a_pb2.Message:
    msg = a2a_pb2.Message(
        message_id=str(uuid.uuid4()),
        role=a2a_pb2.ROLE_AGENT,
        parts=[a2a_pb2.Part(text=text)],
        task_id=task_id,
        context_id=context_id,
    )
    if metadata:
        msg.metadata.update(metadata)
    return msg


def _metadata(provenance: Provenance) -> dict[str, Any]:
    return {METADATA_KEY: provenance.wire()}


def _is_direct_request(message: a2a_pb2.Message) -> bool:
    """A scoring request, feedback, a trust report or a checkpoint to cosign: answered
    with one Message, no task."""
    if requested_mode(message) in MESSAGE_ONLY_MODES:
        return True  # whatever else its metadata says
    try:
        options = request_options(message)
    except ValueError:
        return False  # the task path rejects it with the reason
    return options.mode in ("score", *MESSAGE_ONLY_MODES) or options.feedback is not None


def _caller(context: ServerCallContext) -> Caller:
    """Whose request this is: the caller the request handler admitted."""
    caller = caller_of(context)
    if caller is None:  # a handler always admits first; never act for nobody
        raise RequestRejected("the caller was not authenticated")
    return caller


class ModelExecutor(AgentExecutor, DirectReplies):
    def __init__(
        self,
        service: NodeService,
        *,
        signer: Signer | None = None,
        reports: TrustReports | None = None,
        witnessing: Witnessing | None = None,
        receipts: Callable[[str], dict[str, Any] | None] | None = None,
        offload: Offload = INLINE,
    ) -> None:
        self.service = service
        self._signer = signer
        # Where signing (and its audit entry) runs (node/offload.py: inline on SQLite, off
        # the event loop on PostgreSQL).
        self._offload = offload
        self._reports = reports
        self._witnessing = witnessing
        # The log receipt of a peer's request (trust.audit.inclusion), by its message id.
        self._receipts = receipts

    # -- direct replies ----------------------------------------------------------------

    async def reply(
        self, message: a2a_pb2.Message, context: ServerCallContext
    ) -> a2a_pb2.Message | None:
        """Scoring requests, feedback and trust reports are answered on the spot, with one
        (signed) Message."""
        mode = requested_mode(message)  # before any other option is read
        if mode == "trust_report":
            return await self._report_ack(message, context)
        if mode == "cosign":
            return await self._cosign_reply(message, context)
        if mode == "proof":
            return await self._proof_reply(message, context)
        try:
            options = request_options(message)
        except ValueError:
            return None  # the task path rejects it with the reason
        if options.feedback is not None:
            return await self._feedback_message(message, options.feedback, context)
        if options.mode != "score":
            return None
        return await self._scores_message(message, options, context.state)

    async def _feedback_message(
        self, message: a2a_pb2.Message, feedback: Feedback, context: ServerCallContext
    ) -> a2a_pb2.Message:
        """Labels the routing record of an earlier task of the same owner."""
        org = self.service.org_id
        caller = _caller(context)
        try:
            record = await self.service.feedback_async(feedback, caller)
        except NoRoutingRecords as e:
            text = f"rejected: {e}"
            # This refusal has always repeated the whole text as its error.
            meta = FeedbackReply(org=org, task_id=feedback.task_id, error=text)
        except RequestRejected as e:
            text = f"rejected: {e}"
            meta = FeedbackReply(org=org, task_id=feedback.task_id, error=str(e))
        else:
            text = "feedback recorded"
            meta = FeedbackReply(
                org=org,
                task_id=feedback.task_id,
                local_adequate=record.local_adequate,
                label_source=record.label_source,
            )
        reply = _agent_message("", message.context_id, text, {METADATA_KEY: meta.wire()})
        reply.ClearField("task_id")
        return await self._signed(reply, context.state)

    async def _report_ack(
        self, message: a2a_pb2.Message, context: ServerCallContext
    ) -> a2a_pb2.Message:
        """A member's trust report, taken (or refused with a reason) and acknowledged. Only
        a member whose signature the handler verified may send one."""
        caller = _caller(context)
        verified = context.state.get(VERIFIED_KEY)
        if caller.kind != "member" or not isinstance(verified, Verified):
            if self._reports is not None:
                self._reports.refused["not_member"] += 1
            log.warning("refused trust report %s: not_member", safe(message.message_id or "-"))
            raise PermissionDeniedError(message="trust reports are taken from members only")
        if self._reports is None:
            ack = ReportAck(
                org=self.service.org_id,
                accepted=False,
                reason="reports_off",
                error="this node keeps no reputations",
            )
        else:
            ack = await self._reports.receive_async(caller.id, message)
        reply = _agent_message(
            "",
            message.context_id,
            "trust report " + ("accepted" if ack.accepted else f"refused: {ack.reason}"),
            {METADATA_KEY: ack.wire()},
        )
        reply.ClearField("task_id")
        return await self._signed(reply, context.state)

    async def _cosign_reply(
        self, message: a2a_pb2.Message, context: ServerCallContext
    ) -> a2a_pb2.Message:
        """A member's audit-log checkpoint, judged and (when consistent) cosigned. Only a
        member whose signature the handler verified may submit one."""
        caller = _caller(context)
        verified = context.state.get(VERIFIED_KEY)
        if caller.kind != "member" or not isinstance(verified, Verified):
            log.warning("refused checkpoint %s: not_member", safe(message.message_id or "-"))
            raise PermissionDeniedError(message="checkpoints are witnessed for members only")
        if self._witnessing is None:
            answer = CosignReply(
                org=self.service.org_id, verdict="witnessing_off", detail="this node keeps no log"
            )
        else:
            answer = self._witnessing.receive(caller.id, message)
        reply = _agent_message(
            "", message.context_id, f"checkpoint {answer.verdict}", {METADATA_KEY: answer.wire()}
        )
        reply.ClearField("task_id")
        return await self._signed(reply, context.state)

    async def _proof_reply(
        self, message: a2a_pb2.Message, context: ServerCallContext
    ) -> a2a_pb2.Message:
        """Proofs from this node's audit log, for a verified member only."""
        caller = _caller(context)
        verified = context.state.get(VERIFIED_KEY)
        if caller.kind != "member" or not isinstance(verified, Verified):
            log.warning("refused proof request %s: not_member", safe(message.message_id or "-"))
            raise PermissionDeniedError(message="proofs are served to members only")
        if self._witnessing is None:
            answer = ProofReply(org=self.service.org_id, error="this node keeps no log")
        else:
            answer = self._witnessing.prove(caller.id, message)
        text = "proof" if answer.error is None else f"rejected: {answer.error}"
        reply = _agent_message("", message.context_id, text, {METADATA_KEY: answer.wire()})
        reply.ClearField("task_id")
        return await self._signed(reply, context.state)

    async def _scores_message(
        self, message: a2a_pb2.Message, options: RequestOptions, state: Mapping[str, Any]
    ) -> a2a_pb2.Message:
        text = "".join(p.text for p in message.parts).strip()
        org = self.service.org_id
        try:
            scores = await self.service.score(text, options)
        except NodeOverloaded as e:  # the model's queue: RESOURCE_EXHAUSTED, as admission's
            raise overloaded(e) from None
        except (RequestRejected, ModelError) as e:
            reply_text, meta = f"rejected: {e}", ScoresReply(org=org, error=str(e))
        else:
            reply_text = scores.label
            meta = ScoresReply(
                org=org,
                model=scores.model,
                tokens=scores.tokens,
                scores=ScoresOfOptions.of(scores.scores),
            )
        reply = _agent_message("", message.context_id, reply_text, {METADATA_KEY: meta.wire()})
        reply.ClearField("task_id")
        return await self._signed(reply, state)

    async def _signed(self, message: a2a_pb2.Message, state: Mapping[str, Any]) -> a2a_pb2.Message:
        """Signed and bound to the request when a peer sent it (the call's `state` holds
        its verified request), with the receipt of this node's audit-log entry of the
        request."""
        verified = state.get(VERIFIED_KEY)
        signer, receipts = self._signer, self._receipts
        if signer is None or not isinstance(verified, Verified):
            return message
        timing = state.get(SIGN_TIME_KEY)

        def sign() -> a2a_pb2.Message:
            if receipts is not None:
                receipt = receipts(verified.claims.message_id)
                if receipt is not None:
                    message.metadata.update({RECEIPT_KEY: receipt})
            # Timed where it runs: the signing, not the hop to a thread.
            with timing.signing() if isinstance(timing, SignTime) else contextlib.nullcontext():
                return signer.sign_reply(message, verified)

        return await self._offload(sign)

    # -- tasks -------------------------------------------------------------------------

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        reservation = context.call_context.state.pop(RESERVATION_KEY, None)
        if not isinstance(reservation, Reservation):
            reservation = UNLIMITED
        reservation.claim()
        try:
            await self._execute(context, event_queue, reservation)
        finally:
            reservation.settle(0)  # a task that never reached the service cost nothing

    async def _execute(
        self, context: RequestContext, event_queue: EventQueue, reservation: Reservation
    ) -> None:
        verified = context.call_context.state.get(VERIFIED_KEY)
        if self._signer is not None and isinstance(verified, Verified):
            timing = context.call_context.state.setdefault(SIGN_TIME_KEY, SignTime())
            event_queue = cast(
                EventQueue,
                SigningEventQueue(event_queue, self._signer, verified, timing, self._offload),
            )
        message = context.message
        task = context.current_task
        if task is None and message is not None and _is_direct_request(message):
            # A message-only exchange (a streaming client's scoring request or feedback):
            # one Message, no task.
            direct = await self.reply(message, context.call_context)
            assert direct is not None
            await event_queue.enqueue_event(direct)
            return
        if task is None:
            if message is None:
                raise ModelError("no message to answer")
            task = new_task_from_user_message(message)
            await event_queue.enqueue_event(task)
        # The server span of the message names its task, so an auditor finds its trace.
        trace.get_current_span().set_attribute("a2a.task.id", task.id)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        request = await self._request(context, task, updater)
        if request is None:
            return
        caller = caller_of(context.call_context)
        if caller is None:  # a handler always admits first; never act for nobody
            await self._refuse(updater, context, task, "the caller was not authenticated")
            return
        events = self.service.answer(request, caller, reservation)
        async with contextlib.aclosing(events):
            await self._publish(events, updater, context, task)

    async def _request(
        self, context: RequestContext, task: a2a_pb2.Task, updater: TaskUpdater
    ) -> ServiceRequest | None:
        """The service's request, or None when the A2A request is refused here."""
        text = context.get_user_input().strip()
        if not text:  # the service refuses it, before any option is looked at
            return ServiceRequest(text, task_id=task.id)
        try:
            options = request_options(context.message)
        except ValueError as e:
            await self._refuse(updater, context, task, str(e))
            return None
        if options.mode != "answer" or options.feedback is not None:
            reason = "scoring, feedback and trust reports cannot continue a task"
            await self._refuse(updater, context, task, reason)
            return None
        return ServiceRequest(text, options, task_id=task.id)

    async def _publish(
        self,
        events: AsyncIterator[TaskEvent],
        updater: TaskUpdater,
        context: RequestContext,
        task: a2a_pb2.Task,
    ) -> None:
        """The service's events as task updates. Streamed text is sent one piece behind,
        so that the last artifact update (last_chunk) carries text too."""
        artifact_id = str(uuid.uuid4())
        sent_any = False
        held: str | None = None
        async for event in events:
            if isinstance(event, Working):
                await updater.start_work()
            elif isinstance(event, TextChunk):
                if held is not None:
                    await updater.add_artifact(
                        [a2a_pb2.Part(text=held)],
                        artifact_id=artifact_id,
                        name="answer",
                        append=sent_any,
                        last_chunk=False,
                    )
                    sent_any = True
                held = event.text
            elif isinstance(event, Answered):
                metadata = _metadata(event.provenance)
                if event.streamed:
                    await updater.add_artifact(
                        [a2a_pb2.Part(text=held or "")],
                        artifact_id=artifact_id,
                        name="answer",
                        append=sent_any,
                        last_chunk=True,
                        metadata=metadata,
                    )
                else:
                    await updater.add_artifact(
                        [a2a_pb2.Part(text=event.text)],
                        name="answer",
                        last_chunk=True,
                        metadata=metadata,
                    )
                await updater.complete(await self._reply(context, task, event.text, metadata))
            elif isinstance(event, Rejected):
                await self._refuse(updater, context, task, event.reason)
            elif isinstance(event, Failed):
                await updater.failed(await self._reply(context, task, f"failed: {event.reason}"))
            elif isinstance(event, PeerUnfinished):
                text = f"{event.org} {event.state}: {event.text}"
                metadata = _metadata(event.provenance)
                await updater.failed(await self._reply(context, task, text, metadata))

    async def _refuse(
        self, updater: TaskUpdater, context: RequestContext, task: a2a_pb2.Task, reason: str
    ) -> None:
        await updater.reject(await self._reply(context, task, f"rejected: {reason}"))

    async def _reply(
        self,
        context: RequestContext,
        task: a2a_pb2.Task,
        text: str,
        metadata: dict[str, Any] | None = None,
    ) -> a2a_pb2.Message:
        """A status message; signed and bound to the request when a peer sent it."""
        message = _agent_message(task.id, task.context_id, text, metadata)
        return await self._signed(message, context.call_context.state)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        task_id = context.task_id or (task.id if task else "")
        context_id = context.context_id or (task.context_id if task else "")
        updater = TaskUpdater(event_queue, task_id, context_id)
        await updater.cancel(_agent_message(task_id, context_id, "canceled"))
        log.info("task %s canceled", task_id)
