"""The node's agent logic behind a2a-sdk's AgentExecutor: answer a task with the local model.

Protocol handling (A2A methods, task store, streaming, cancellation plumbing) stays in
a2a-sdk's request handler; this module only turns a user message into a generation and
the generation into task events: SUBMITTED -> WORKING -> artifact chunks -> COMPLETED,
or REJECTED (nothing to answer, bad parameters, prompt too long), FAILED (the model
failed) or CANCELED.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, cast

from a2a.helpers.proto_helpers import new_task_from_user_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.context import ServerCallContext
from a2a.server.events import EventQueue
from a2a.server.tasks.task_updater import TaskUpdater
from a2a.types import a2a_pb2
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from consortium.errors import ModelError, PromptTooLongError, RequestRejected, UntrustedAnswer
from consortium.learning.records import RoutingDataError
from consortium.llm.base import GenerationParams
from consortium.llm.prompts import build_request
from consortium.llm.registry import PromptFormat
from consortium.llm.worker import ModelWorker
from consortium.logsafe import safe
from consortium.node.a2a.direct import DirectReplies
from consortium.node.a2a.request_handler import VERIFIED_KEY, SigningEventQueue
from consortium.node.auth import caller_of
from consortium.node.config import RoutingSection
from consortium.node.orchestrator import LocalMember, Orchestrator
from consortium.node.peers import PeerClient, PeerError
from consortium.protocols.multiple_choice import Question, argmax
from consortium.protocols.request_options import METADATA_KEY, RequestOptions, request_options
from consortium.trust.admission import Verified
from consortium.trust.signing import Signer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExecutorSettings:
    org_id: str
    prompt_format: PromptFormat
    system_prompt: str
    max_tokens: int
    temperature: float
    # Coalesce streamed tokens into one artifact update per interval (0: every token).
    stream_interval_s: float = 0.05


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


def _is_direct_request(message: a2a_pb2.Message) -> bool:
    """A scoring request or feedback: answered with one Message, no task."""
    try:
        options = request_options(message)
    except ValueError:
        return False  # the task path rejects it with the reason
    return options.mode == "score" or options.feedback is not None


def _owner(context: ServerCallContext) -> str:
    """Whose task this is: the scope of the caller the request handler admitted."""
    caller = caller_of(context)
    if caller is None:  # a handler always admits first; never act for nobody
        raise RequestRejected("the caller was not authenticated")
    return caller.owner


class ModelExecutor(AgentExecutor, DirectReplies):
    def __init__(
        self,
        worker: ModelWorker,
        settings: ExecutorSettings,
        *,
        signer: Signer | None = None,
        peers: PeerClient | None = None,
        tracer: trace.Tracer | None = None,
        orchestrator: Orchestrator | None = None,
    ) -> None:
        self._tracer = tracer or trace.NoOpTracer()
        self._worker = worker
        self._settings = settings
        self._signer = signer
        self._peers = peers
        self._orchestrator = orchestrator or Orchestrator(
            org_id=settings.org_id,
            worker=worker,
            routing=RoutingSection(),
            groups={},
            peers=peers,
        )

    async def reply(
        self, message: a2a_pb2.Message, context: ServerCallContext
    ) -> a2a_pb2.Message | None:
        """Scoring requests are answered on the spot, with one (signed) Message."""
        try:
            options = request_options(message)
        except ValueError:
            return None  # the task path rejects it with the reason
        if options.feedback is not None:
            return self._feedback_message(message, options, context)
        if options.mode != "score":
            return None
        return await self._scores_message(message, options, context.state.get(VERIFIED_KEY))

    def _feedback_message(
        self, message: a2a_pb2.Message, options: RequestOptions, context: ServerCallContext
    ) -> a2a_pb2.Message:
        """Labels the routing record of an earlier task of the same owner."""
        assert options.feedback is not None
        fb = options.feedback
        records = self._orchestrator.records
        meta: dict[str, Any] = {"org": self._settings.org_id, "taskId": fb.task_id}
        if records is None:
            text = "rejected: this node keeps no routing records"
            meta["error"] = text
        else:
            try:
                rec = records.feedback(
                    fb.task_id, _owner(context), adequate=fb.adequate, correct_choice=fb.correct
                )
            except RoutingDataError as e:
                text = f"rejected: {e}"
                meta["error"] = str(e)
            else:
                text = "feedback recorded"
                meta["localAdequate"] = rec.local_adequate
                meta["labelSource"] = rec.label_source
                log.info("task %s: feedback recorded (%s)", safe(fb.task_id), rec.label_source)
        reply = _agent_message("", message.context_id, text, {METADATA_KEY: meta})
        reply.ClearField("task_id")
        verified = context.state.get(VERIFIED_KEY)
        if self._signer is not None and isinstance(verified, Verified):
            return self._signer.sign_reply(reply, verified)
        return reply

    async def _scores_message(
        self, message: a2a_pb2.Message, options: RequestOptions, verified: object
    ) -> a2a_pb2.Message:
        text = "".join(p.text for p in message.parts).strip()
        try:
            if not options.choices:
                raise ValueError("a scoring request needs metadata.consortium.choices")
            question = Question(text, tuple(options.choices))
            member = LocalMember(self._settings.org_id, self._worker)
            scored = await member.score(question, options.context)
            reply_text = question.shown_labels[argmax(scored.scores.logprobs)]
            meta: dict[str, Any] = {
                "org": self._settings.org_id,
                "model": self._worker.info.name,
                "tokens": scored.tokens,
                "scores": {
                    "logprobs": list(scored.scores.logprobs),
                    "tokens": list(scored.scores.tokens),
                    "chars": list(scored.scores.chars),
                },
            }
        except (ValueError, ModelError) as e:
            reply_text, meta = f"rejected: {e}", {"org": self._settings.org_id, "error": str(e)}
        reply = _agent_message("", message.context_id, reply_text, {METADATA_KEY: meta})
        reply.ClearField("task_id")
        if self._signer is not None and isinstance(verified, Verified):
            return self._signer.sign_reply(reply, verified)
        return reply

    def _reply(
        self,
        context: RequestContext,
        task: a2a_pb2.Task,
        text: str,
        metadata: dict[str, Any] | None = None,
    ) -> a2a_pb2.Message:
        """A status message; signed and bound to the request when a peer sent it."""
        message = _agent_message(task.id, task.context_id, text, metadata)
        verified = context.call_context.state.get(VERIFIED_KEY)
        if self._signer is not None and isinstance(verified, Verified):
            return self._signer.sign_reply(message, verified)
        return message

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        verified = context.call_context.state.get(VERIFIED_KEY)
        if self._signer is not None and isinstance(verified, Verified):
            event_queue = cast(EventQueue, SigningEventQueue(event_queue, self._signer, verified))
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
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        question = context.get_user_input().strip()
        if not question:
            await updater.reject(
                self._reply(context, task, "rejected: the message has no text to answer")
            )
            return
        try:
            options = request_options(message)
        except ValueError as e:
            await updater.reject(self._reply(context, task, f"rejected: {e}"))
            return
        if options.mode == "score" or options.feedback is not None:
            await updater.reject(
                self._reply(context, task, "rejected: scoring and feedback cannot continue a task")
            )
            return
        if options.peer is not None:
            await self._ask_peer(context, task, updater, question, options)
            return
        if options.choices:
            await self._answer_choice(context, task, updater, question, options)
            return
        if options.route or self._orchestrator.routes_text():
            try:
                target = await self._route_text(question, options)
            except RequestRejected as e:
                await updater.reject(self._reply(context, task, f"rejected: {e}"))
                return
            except ModelError as e:
                await updater.failed(self._reply(context, task, f"failed: {e}"))
                return
            if target is not None:
                await self._ask_peer(
                    context, task, updater, question, options.model_copy(update={"peer": target})
                )
                return
        s = self._settings
        params = GenerationParams(
            max_tokens=options.max_tokens or s.max_tokens,
            temperature=s.temperature if options.temperature is None else options.temperature,
        )
        request = build_request(
            question, prompt_format=s.prompt_format, system_prompt=s.system_prompt, params=params
        )
        await updater.start_work()
        started = time.perf_counter()
        info = self._worker.info
        with self._tracer.start_as_current_span(
            f"chat {info.name}",
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": info.name,
                "gen_ai.request.max_tokens": params.max_tokens,
                "gen_ai.request.temperature": params.temperature,
                "a2a.task.id": task.id,
            },
        ) as span:
            stream = self._worker.generate(request, coalesce_s=s.stream_interval_s)
            artifact_id = str(uuid.uuid4())
            sent_any = False
            held: str | None = None
            try:
                async with stream:
                    async for chunk in stream:
                        # The newest piece is held back so the last update (last_chunk) has text.
                        if held is not None:
                            await updater.add_artifact(
                                [a2a_pb2.Part(text=held)],
                                artifact_id=artifact_id,
                                name="answer",
                                append=sent_any,
                                last_chunk=False,
                            )
                            sent_any = True
                        held = chunk.text
            except PromptTooLongError as e:
                await updater.reject(self._reply(context, task, f"rejected: {e}"))
                return
            except ModelError as e:
                log.error("task %s failed in the model: %s", task.id, e)
                await updater.failed(self._reply(context, task, f"failed: {e}"))
                return
            completion = stream.completion
            if completion is not None:
                span.set_attributes(
                    {
                        "gen_ai.response.model": info.name,
                        "gen_ai.usage.input_tokens": completion.usage.input_tokens,
                        "gen_ai.usage.output_tokens": completion.usage.output_tokens,
                        "gen_ai.response.finish_reasons": [completion.finish_reason],
                    }
                )
        completion = stream.completion
        assert completion is not None
        latency = time.perf_counter() - started
        provenance = {
            METADATA_KEY: {
                "org": s.org_id,
                "model": info.name,
                "backend": info.backend,
                "inputTokens": completion.usage.input_tokens,
                "outputTokens": completion.usage.output_tokens,
                "finishReason": completion.finish_reason,
                "latencyMs": round(latency * 1000, 1),
                "timeToFirstTokenMs": round(completion.timings.prompt_s * 1000, 1),
                "decodeTokensPerS": round(completion.decode_tokens_per_s, 1),
            }
        }
        await updater.add_artifact(
            [a2a_pb2.Part(text=held or "")],
            artifact_id=artifact_id,
            name="answer",
            append=sent_any,
            last_chunk=True,
            metadata=provenance,
        )
        await updater.complete(self._reply(context, task, completion.text, provenance))
        log.info(
            "task %s completed: %d in / %d out tokens in %.0f ms",
            task.id,
            completion.usage.input_tokens,
            completion.usage.output_tokens,
            latency * 1000,
        )

    async def _ask_peer(
        self,
        context: RequestContext,
        task: a2a_pb2.Task,
        updater: TaskUpdater,
        question: str,
        options: RequestOptions,
    ) -> None:
        peer = options.peer
        assert peer is not None
        if self._peers is None:
            await updater.reject(
                self._reply(context, task, "rejected: this node is not in a federation")
            )
            return
        await updater.start_work()
        forwarded = options.model_dump(exclude_none=True, exclude={"peer"})
        try:
            answer = await self._peers.ask(peer, question, forwarded or None)
        except (PeerError, UntrustedAnswer) as e:
            log.warning("task %s: asking %s failed: %s", task.id, safe(peer), safe(e, 300))
            await updater.failed(self._reply(context, task, f"failed: {e}"))
            return
        p = answer.provenance
        provenance = {
            METADATA_KEY: {
                **p,
                "org": answer.org,
                "route": f"{self._settings.org_id}->{answer.org}",
                "verified": answer.verified,
                "verifiedEvents": answer.verified_events,
                "latencyMs": round(answer.latency_s * 1000, 1),
            }
        }
        if answer.state != "completed":
            await updater.failed(
                self._reply(
                    context, task, f"{answer.org} {answer.state}: {answer.text}", provenance
                )
            )
            return
        await updater.add_artifact(
            [a2a_pb2.Part(text=answer.text)], name="answer", last_chunk=True, metadata=provenance
        )
        await updater.complete(self._reply(context, task, answer.text, provenance))
        log.info("task %s answered by %s (verified)", task.id, answer.org)

    async def _answer_choice(
        self,
        context: RequestContext,
        task: a2a_pb2.Task,
        updater: TaskUpdater,
        question_text: str,
        options: RequestOptions,
    ) -> None:
        assert options.choices is not None
        await updater.start_work()
        try:
            question = Question(question_text, tuple(options.choices))
            with self._tracer.start_as_current_span("consortium.route") as span:
                routed = await self._orchestrator.answer_choice(
                    question, options, task_id=task.id, owner=_owner(context.call_context)
                )
                span.set_attributes(
                    {
                        "consortium.route": routed.provenance["route"],
                        "consortium.router": routed.provenance["router"],
                    }
                )
        except (ValueError, RequestRejected) as e:
            await updater.reject(self._reply(context, task, f"rejected: {e}"))
            return
        except (PeerError, UntrustedAnswer, ModelError) as e:
            log.warning("task %s: routing failed: %s", task.id, safe(e, 300))
            await updater.failed(self._reply(context, task, f"failed: {e}"))
            return
        label = question.shown_labels[routed.choice]
        text = f"{label}. {question.choices[routed.choice].strip()}"
        provenance = {
            METADATA_KEY: {
                **routed.provenance,
                "choice": routed.choice,
                "probabilities": [round(p, 4) for p in routed.probabilities],
            }
        }
        await updater.add_artifact(
            [a2a_pb2.Part(text=text)], name="answer", last_chunk=True, metadata=provenance
        )
        await updater.complete(self._reply(context, task, text, provenance))
        log.info("task %s answered by route %s", task.id, safe(routed.provenance["route"]))

    async def _route_text(self, question: str, options: RequestOptions) -> str | None:
        """For a free-text task: the peer to escalate to, or None to answer locally."""
        decision = await self._orchestrator.route_text(question, options)
        return decision.target if decision.route == "escalate" else None

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        task_id = context.task_id or (task.id if task else "")
        context_id = context.context_id or (task.context_id if task else "")
        updater = TaskUpdater(event_queue, task_id, context_id)
        await updater.cancel(_agent_message(task_id, context_id, "canceled"))
        log.info("task %s canceled", task_id)
