"""The node's answering logic, apart from any transport: `NodeService.answer(request,
caller)` yields what happens to a task as plain events, ending with its answer and
Provenance, or with why it was refused or failed.

A task is answered in one of four ways, chosen from its options and the node's [routing]:
a peer named in the request (`peer`), a multiple-choice task routed by the orchestrator
(local model, one peer or a group), a free-text task the router escalates to a peer, or
the local model, streaming. The same service scores options (`score`) and records an
owner's feedback on a routed task (`feedback`).

The trust layer's standings reach it through the orchestrator and the peer client, which
share the node's one assessor: a task naming a quarantined peer is rejected before
anything is sent, and a router's decision to answer locally instead (its target
quarantined) is in the answer's provenance.

A request may carry more than one A2A message holds: a whole conversation (earlier
turns, system messages included), sampling overrides (top_p, seed, stop sequences, token
log-probabilities, a JSON response format) and raw-prompt mode (the text goes to the
model as it is, without a chat template or the few-shot prompt). The node's own model
takes all of them; a peer gets the conversation flattened into one text
(`ServiceRequest.sent_text`), and a request that needs the local model (log-probabilities,
a response format) is rejected on any other route. What the local model cannot do (a
response format without the backend's `grammar` capability) is rejected before it runs.

A binding adapts it: node/a2a/executor.py maps the events to A2A task updates,
node/openai/ to OpenAI's chat and text completions. The service knows no transport: no
protobuf, no task store, no event queue. A consumer that stops iterating (the task
canceled, the client gone) closes the event stream, which stops a generation before its
next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field, replace

from opentelemetry import trace
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from consortium.errors import (
    InvalidResponseFormat,
    ModelError,
    NodeOverloaded,
    NodeUnavailableError,
    PromptTooLongError,
    RequestRejected,
    UnsupportedByModel,
    UntrustedAnswer,
)
from consortium.learning.records import RoutingDataError, RoutingRecord
from consortium.llm.base import (
    ChatMessage,
    Completion,
    GenerationParams,
    ResponseFormat,
    TokenLogprob,
)
from consortium.llm.prompts import build_request, flatten_conversation
from consortium.llm.registry import PromptFormat
from consortium.llm.worker import GenerationRequest, Lane, ModelWorker
from consortium.logsafe import safe
from consortium.node.auth import Caller
from consortium.node.config import RoutingSection
from consortium.node.limits import UNLIMITED, Reservation, estimate_tokens
from consortium.node.orchestrator import LocalMember, Orchestrator
from consortium.node.peers import PeerAnswer, PeerClient, PeerError
from consortium.node.redaction import RedactionBlocked, TaskRedaction
from consortium.protocols.multiple_choice import OptionScores, Question, argmax
from consortium.protocols.provenance import PeerVerdict, Provenance, RoutingDecision
from consortium.protocols.request_options import Feedback, RequestOptions, forwarded
from consortium.protocols.routing import Decision
from consortium.redaction.pseudonyms import PlaceholderFragment

log = logging.getLogger(__name__)


TOO_LONG = "context_length_exceeded"
UNSUPPORTED = "unsupported_parameter"
INVALID_FORMAT = "invalid_response_format"


@dataclass(frozen=True)
class ServiceSettings:
    org_id: str
    prompt_format: PromptFormat
    system_prompt: str
    max_tokens: int
    temperature: float
    # Coalesce streamed tokens into one chunk per interval (0: every token).
    stream_interval_s: float = 0.05


@dataclass(frozen=True)
class Sampling:
    """Generation overrides beyond RequestOptions' max_tokens and temperature: what an
    OpenAI-style request may set. The defaults change nothing."""

    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # A log-probability per generated token, with this many alternatives each.
    logprobs: bool = False
    top_logprobs: int = 0
    response_format: ResponseFormat | None = None

    @property
    def local_only(self) -> str:
        """What in these overrides only the node's own model serves ("" if nothing)."""
        wanted = [
            name
            for name, on in (
                ("logprobs", self.logprobs),
                ("response_format", self.response_format is not None),
            )
            if on
        ]
        return " and ".join(wanted)


@dataclass(frozen=True)
class ServiceRequest:
    """A task to answer: the user's text and the request's options.

    `conversation`, when given, is the whole chat the local model answers (system turns
    included, `text` its last user turn); routers and peers see it flattened
    (`sent_text`). `raw_prompt`: `text` goes to the local model as it is, without a
    chat template or the node's few-shot prompt."""

    text: str
    options: RequestOptions = field(default_factory=RequestOptions)
    # The binding's id of the task: named in logs, and the key of its routing record.
    task_id: str = ""
    conversation: tuple[ChatMessage, ...] = ()
    sampling: Sampling = field(default_factory=Sampling)
    raw_prompt: bool = False
    # The caller's place in the model's fair queue (llm/worker.py): set by `answer`.
    lane: Lane | str = ""

    @property
    def sent_text(self) -> str:
        """What a router judges and a peer is sent: `text`, or the conversation as one
        text when it holds more than that one user turn."""
        turns = self.conversation
        if not turns or (len(turns) == 1 and turns[0].role == "user"):
            return self.text
        return flatten_conversation(turns)


# -- what happens to a task ----------------------------------------------------------


@dataclass(frozen=True)
class Working:
    """The node has started on the task."""


@dataclass(frozen=True)
class TextChunk:
    """The next piece of an answer being generated, with its tokens' log-probabilities
    when the request asked for them (a local generation only)."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Answered:
    """The answer. `streamed`: its text came before as TextChunks (a local generation);
    otherwise it arrives whole here."""

    text: str
    provenance: Provenance
    streamed: bool = False
    # The local model's completion (usage, finish reason, every token's logprob); None
    # when a peer or a group answered (their token counts are in the provenance).
    completion: Completion | None = None


@dataclass(frozen=True)
class Rejected:
    """The node will not answer the task as asked (nothing to answer, a route, member or
    budget it cannot serve, a prompt too long). `code`, when the refusal has a name a
    binding may pass on: "context_length_exceeded" (the prompt does not fit the model),
    "unsupported_parameter" (a sampling override the model cannot serve),
    "invalid_response_format" (a response_format json_schema that is not JSON or cannot
    be made a grammar)."""

    reason: str
    code: str | None = None


@dataclass(frozen=True)
class Failed:
    """The node could not answer: the model failed, a peer could not be asked
    (`unavailable`: the model or the peer could not be reached, rather than failing).
    `overloaded`: the model refused the task for load before starting it (the reason of
    errors.NodeOverloaded: "queue_full", "queue_timeout"), with `retry_after_s`."""

    reason: str
    unavailable: bool = False
    overloaded: str = ""
    retry_after_s: float = 0.0

    @classmethod
    def refused(cls, error: NodeOverloaded) -> Failed:
        return cls(str(error), True, error.reason, error.retry_after_s)


@dataclass(frozen=True)
class PeerUnfinished:
    """The peer asked ended the task in `state` (rejected, failed...) with `text`."""

    org: str
    state: str
    text: str
    provenance: Provenance


TaskEvent = Working | TextChunk | Answered | Rejected | Failed | PeerUnfinished


@dataclass(frozen=True)
class Scores:
    """The local model's scores of a question's options."""

    label: str  # the best option's label
    model: str
    tokens: int
    scores: OptionScores


class _Usage:
    """What a task cost, for its caller's token limit: the answer's usage; nothing when
    it was refused before any generation; otherwise (failed, canceled, the client gone)
    its prompt and the text generated so far, estimated (node.limits.estimate_tokens)."""

    def __init__(self, prompt_bytes: int) -> None:
        self._prompt_bytes = prompt_bytes
        self._generated_bytes = 0
        self._counted: int | None = None

    def see(self, event: TaskEvent) -> None:
        if isinstance(event, TextChunk):
            self._generated_bytes += len(event.text.encode())
        elif isinstance(event, Answered):
            self._counted = _answer_tokens(event)
        elif isinstance(event, Rejected) and not self._generated_bytes:
            self._counted = 0

    @property
    def tokens(self) -> int:
        if self._counted is not None:
            return self._counted
        return estimate_tokens(self._prompt_bytes + self._generated_bytes)


def _answer_tokens(answered: Answered) -> int | None:
    """Prompt + completion tokens of an answer, as its usage (or its provenance) says."""
    if answered.completion is not None:
        usage = answered.completion.usage
        return usage.input_tokens + usage.output_tokens
    prov = answered.provenance
    if prov.input_tokens is None and prov.output_tokens is None:
        return None
    return (prov.input_tokens or 0) + (prov.output_tokens or 0)


class NoRoutingRecords(RequestRejected):
    """Feedback sent to a node that keeps no routing records."""


class NodeService:
    def __init__(
        self,
        worker: ModelWorker,
        settings: ServiceSettings,
        *,
        peers: PeerClient | None = None,
        tracer: trace.Tracer | None = None,
        orchestrator: Orchestrator | None = None,
    ) -> None:
        self._tracer = tracer or trace.NoOpTracer()
        self._worker = worker
        self._settings = settings
        self._peers = peers
        self.orchestrator = orchestrator or Orchestrator(
            org_id=settings.org_id,
            worker=worker,
            routing=RoutingSection(),
            groups={},
            peers=peers,
        )

    @property
    def org_id(self) -> str:
        return self._settings.org_id

    async def answer(
        self, request: ServiceRequest, caller: Caller, reservation: Reservation = UNLIMITED
    ) -> AsyncGenerator[TaskEvent, None]:
        """The task's events, ending with Answered, Rejected, Failed or PeerUnfinished.
        Close the iterator to stop early (a generation stops before its next token).
        The task's redaction scope (its pseudonyms) lives as long as this iterator, and
        so does its `reservation` of the caller's limits (node.limits), settled when it
        ends to what the task used."""
        reservation.claim()
        scope = TaskRedaction(request.task_id)
        used = _Usage(len(request.sent_text.encode()))
        # A member organization other than this one is a peer: its escalations share
        # the model's slots under [model] peer_slots.
        peer = caller.kind == "member" and caller.id != self._settings.org_id
        request = replace(request, lane=Lane(caller.owner, peer))
        try:
            async with contextlib.aclosing(self._answer(request, caller, scope)) as events:
                async for event in events:
                    used.see(event)
                    yield event
        finally:
            scope.close()
            reservation.settle(used.tokens)

    async def _answer(
        self, request: ServiceRequest, caller: Caller, scope: TaskRedaction
    ) -> AsyncGenerator[TaskEvent, None]:
        if not request.text:
            yield Rejected("the message has no text to answer")
            return
        if caller.kind == "member" and caller.id != self._settings.org_id:
            # Another organization asked this node: its own model answers. A member's
            # `peer` or `route` is not followed, nor this node's router, so an escalation
            # is one hop and two nodes never pass a task back and forth.
            local = request.options.model_copy(update={"peer": None, "route": "local"})
            request = replace(request, options=local)
        options = request.options
        local_only = request.sampling.local_only
        if local_only and not self._stays_local(options):
            yield Rejected(
                f"{local_only} can only be served by this node's own model, and this "
                "request's route may go elsewhere (a peer, a group or the router)"
            )
            return
        if options.peer is not None:
            async for event in self._ask_peer(request, options, scope):
                yield event
            return
        if options.choices:
            async for event in self._answer_choice(request, caller, scope):
                yield event
            return
        # A route of "local" (what a member's task gets) needs no routing decision.
        if options.route != "local" and (options.route or self.orchestrator.routes_text()):
            try:
                with scope.active():
                    decision = await self.orchestrator.route_text(request.sent_text, options)
            except RequestRejected as e:
                yield Rejected(str(e))
                return
            except NodeOverloaded as e:  # the router's draft found the model's queue full
                yield Failed.refused(e)
                return
            except ModelError as e:
                yield Failed(str(e))
                return
            if decision.route == "escalate":
                escalated = options.model_copy(update={"peer": decision.target})
                async for event in self._ask_peer(request, escalated, scope, decision):
                    yield event
                return
            async for event in self._generate(request, decision, scope):
                yield event
            return
        async for event in self._generate(request):
            yield event

    def uses_local_model(self, options: RequestOptions, caller: Caller) -> bool:
        """Whether answering a request with `options` for `caller` may take a turn of the
        local model: everything but a task sent to a named peer (a member's task is always
        answered here; a router or a group may ask the local model)."""
        if caller.kind == "member" and caller.id != self._settings.org_id:
            return True
        return options.peer is None or options.mode == "score"

    def _stays_local(self, options: RequestOptions) -> bool:
        """Whether a request with `options` is answered by the local model, whatever the
        router would decide."""
        if options.peer is not None or options.choices:
            return False
        return options.route == "local" or (
            options.route is None and not self.orchestrator.routes_text()
        )

    def _generation(self, request: ServiceRequest) -> GenerationRequest:
        """What the local model is asked: the node's prompt around the text or the
        conversation, or the raw prompt; with the request's sampling overrides."""
        s, options, sampling = self._settings, request.options, request.sampling
        params = GenerationParams(
            max_tokens=options.max_tokens or s.max_tokens,
            temperature=s.temperature if options.temperature is None else options.temperature,
            top_p=1.0 if sampling.top_p is None else sampling.top_p,
            stop=sampling.stop,
            logprobs=sampling.logprobs,
            top_logprobs=sampling.top_logprobs,
            seed=sampling.seed,
            response_format=sampling.response_format,
        )
        if request.raw_prompt:
            return GenerationRequest(params=params, prompt=request.text)
        return build_request(
            request.text,
            prompt_format=s.prompt_format,
            system_prompt=s.system_prompt,
            params=params,
            conversation=request.conversation,
        )

    def _unsupported(self, request: ServiceRequest) -> str:
        """Why the local model cannot serve the request's sampling overrides ("" if it
        can): a backend without the capability is not asked at all."""
        info, sampling = self._worker.info, request.sampling
        if sampling.response_format is not None and "grammar" not in info.capabilities:
            return (
                f"model {info.name} ({info.backend} backend) cannot constrain its output to "
                "JSON: response_format is not supported"
            )
        if sampling.logprobs and "token_logprobs" not in info.capabilities:
            return f"model {info.name} ({info.backend} backend) does not return logprobs"
        return ""

    async def _generate(
        self,
        request: ServiceRequest,
        decision: Decision | None = None,
        scope: TaskRedaction | None = None,
    ) -> AsyncIterator[TaskEvent]:
        """The local model's answer, streamed; with the router's `decision` when one
        chose the local model."""
        s = self._settings
        unsupported = self._unsupported(request)
        if unsupported:
            yield Rejected(str(UnsupportedByModel(unsupported)), UNSUPPORTED)
            return
        generation = self._generation(request)
        params = generation.params
        yield Working()
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
                "a2a.task.id": request.task_id,
            },
        ) as span:
            stream = self._worker.generate(
                generation, coalesce_s=s.stream_interval_s, lane=request.lane
            )
            try:
                async with stream:
                    async for chunk in stream:
                        yield TextChunk(chunk.text, chunk.logprobs)
            except PromptTooLongError as e:
                yield Rejected(str(e), TOO_LONG)
                return
            except UnsupportedByModel as e:  # what the backend found it cannot do
                yield Rejected(str(e), UNSUPPORTED)
                return
            except InvalidResponseFormat as e:  # a json_schema the model's grammar cannot take
                yield Rejected(str(e), INVALID_FORMAT)
                return
            except ModelError as e:
                log.error("task %s failed in the model: %s", request.task_id, safe(e, 300))
                yield Failed(str(e))
                return
            except NodeOverloaded as e:  # the model's queue: full, or waited too long
                yield Failed.refused(e)
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
        provenance = self._generated(completion, latency)
        if decision is not None:
            provenance = provenance.model_copy(
                update={
                    "decision": RoutingDecision.of(decision.reason, decision.score),
                    "redaction": None if scope is None else scope.report(),
                }
            )
        yield Answered(completion.text, provenance, streamed=True, completion=completion)
        log.info(
            "task %s completed: %d in / %d out tokens in %.0f ms",
            request.task_id,
            completion.usage.input_tokens,
            completion.usage.output_tokens,
            latency * 1000,
        )

    def _generated(self, completion: Completion, latency_s: float) -> Provenance:
        info = self._worker.info
        return Provenance(
            org=self._settings.org_id,
            model=info.name,
            backend=info.backend,
            input_tokens=completion.usage.input_tokens,
            output_tokens=completion.usage.output_tokens,
            finish_reason=completion.finish_reason,
            latency_ms=round(latency_s * 1000, 1),
            time_to_first_token_ms=round(completion.timings.prompt_s * 1000, 1),
            decode_tokens_per_s=round(completion.decode_tokens_per_s, 1),
        )

    async def _ask_peer(
        self,
        request: ServiceRequest,
        options: RequestOptions,
        scope: TaskRedaction,
        decision: Decision | None = None,
    ) -> AsyncIterator[TaskEvent]:
        """The answer of the peer `options.peer`, verified, its streamed text relayed as
        it comes and restored (the task's pseudonyms replaced by their values). When the
        router chose the peer (`decision`) and the redaction policy will not let the
        task go to it, the local model answers instead, saying why. A peer that cannot be
        reached before any of its answer was shown is replaced as the orchestrator's
        `retry` says (a peer the request named is only asked again)."""
        peer = options.peer
        assert peer is not None
        if self._peers is None:
            yield Rejected("this node is not in a federation")
            return
        yield Working()
        # The route chose this peer here; the peer answers with its own model.
        sent = forwarded(options)
        started = time.perf_counter()
        tried: list[str] = []
        while True:
            tried.append(peer)
            chunks: asyncio.Queue[str] = asyncio.Queue()
            restorer = scope.stream()
            streamed = False
            with scope.active():
                call = asyncio.create_task(
                    self._peers.ask(peer, request.sent_text, sent or None, chunks.put_nowait)
                )
            try:
                while not call.done() or not chunks.empty():
                    getter = asyncio.ensure_future(chunks.get())
                    done, _ = await asyncio.wait({call, getter}, return_when=FIRST_COMPLETED)
                    if getter not in done:
                        getter.cancel()
                        continue
                    shown = restorer.feed(getter.result())
                    if shown:
                        streamed = True
                        yield TextChunk(shown)
                answer = call.result()
                provenance = self._relayed(answer, scope)
                rest = restorer.finish()
            except RedactionBlocked as e:  # nothing was sent
                log.warning("task %s: %s", request.task_id, safe(e, 300))
                if decision is None:
                    yield Rejected(str(e))
                    return
                local = Decision("local", "", f"{decision.reason}; {e}", decision.score)
                self.orchestrator.record_decision("redaction", local)
                async for event in self._generate(request, local, scope):
                    yield event
                return
            except RequestRejected as e:  # a quarantined peer, a failed redaction: not sent
                log.warning("task %s: %s", request.task_id, safe(e, 300))
                yield Rejected(str(e))
                return
            except (PeerError, UntrustedAnswer) as e:
                log.warning(
                    "task %s: asking %s failed: %s", request.task_id, safe(peer), safe(e, 300)
                )
                # Asked again only while nothing of an answer was shown: one answer a task.
                retry = None
                if isinstance(e, PeerError) and not streamed:
                    retry = await self.orchestrator.retry(
                        tried,
                        e.failure,
                        [request.sent_text],
                        options,
                        time.perf_counter() - started,
                        decision,
                    )
                if retry is not None:
                    log.info("task %s: asking %s instead", request.task_id, safe(retry.target))
                    peer = retry.target
                    decision = decision if decision is None else retry
                    continue
                yield Failed(str(e), unavailable=isinstance(e, NodeUnavailableError))
                return
            except PlaceholderFragment:
                log.warning(
                    "task %s: the answer of %s ended in a placeholder", request.task_id, peer
                )
                yield Failed(f"the answer from {peer} ended inside a pseudonym: not shown")
                return
            finally:
                if not call.done():
                    call.cancel()
            break
        if rest:
            streamed = True
            yield TextChunk(rest)
        text = scope.restore(answer.text)
        if answer.state != "completed":
            yield PeerUnfinished(answer.org, answer.state, text, provenance)
            return
        yield Answered(text, provenance, streamed=streamed)
        log.info("task %s answered by %s (verified)", request.task_id, answer.org)

    def _relayed(self, answer: PeerAnswer, scope: TaskRedaction) -> Provenance:
        """The peer's provenance, with the route, the verdict on its answer and the
        peer's reputation when it was asked."""
        try:
            theirs = Provenance.model_validate(answer.provenance)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise PeerError(
                f"the answer from {answer.org} carries malformed provenance: {where}: {err['msg']}"
            ) from None
        return theirs.model_copy(
            update={
                "org": answer.org,
                "route": f"{self._settings.org_id}->{answer.org}",
                "verified": answer.verified,
                "verified_events": answer.verified_events,
                "latency_ms": round(answer.latency_s * 1000, 1),
                "reputation": {answer.org: round(answer.reputation, 4)},
                "verdicts": {
                    answer.org: PeerVerdict(claim=answer.claim or None, canary=answer.canary)
                },
                "redaction": scope.report(),
            }
        )

    async def _answer_choice(
        self, request: ServiceRequest, caller: Caller, scope: TaskRedaction
    ) -> AsyncIterator[TaskEvent]:
        """A multiple-choice task, routed: the chosen option, `LABEL. text`."""
        options = request.options
        assert options.choices is not None
        yield Working()
        try:
            question = Question(request.text, tuple(options.choices))
            with self._tracer.start_as_current_span("consortium.route") as span, scope.active():
                routed = await self.orchestrator.answer_choice(
                    question, options, task_id=request.task_id, owner=caller.owner
                )
                span.set_attributes(
                    {
                        "consortium.route": routed.provenance.route or "",
                        "consortium.router": routed.provenance.router or "",
                    }
                )
        except (ValueError, RequestRejected) as e:
            yield Rejected(str(e))
            return
        except (NodeUnavailableError, UntrustedAnswer, ModelError) as e:
            if isinstance(e, NodeOverloaded) and not isinstance(e, PeerError):
                yield Failed.refused(e)  # this node's model refused for load
                return
            log.warning("task %s: routing failed: %s", request.task_id, safe(e, 300))
            yield Failed(str(e))
            return
        label = question.shown_labels[routed.choice]
        text = f"{label}. {question.choices[routed.choice].strip()}"
        provenance = routed.provenance.model_copy(
            update={
                "choice": routed.choice,
                "probabilities": [round(p, 4) for p in routed.probabilities],
                "redaction": scope.report(),
            }
        )
        yield Answered(text, provenance)
        log.info("task %s answered by route %s", request.task_id, safe(routed.provenance.route))

    async def score(self, text: str, options: RequestOptions) -> Scores:
        """The local model's scores of the options in `options.choices` (with
        `options.context` shown first). Raises RequestRejected for a request without
        valid options, ModelError if the model fails."""
        try:
            if not options.choices:
                raise ValueError("a scoring request needs metadata.consortium.choices")
            question = Question(text, tuple(options.choices))
            member = LocalMember(self._settings.org_id, self._worker)
            scored = await member.score(question, options.context)
        except ValueError as e:
            raise RequestRejected(str(e)) from None
        label = question.shown_labels[argmax(scored.scores.logprobs)]
        return Scores(label, self._worker.info.name, scored.tokens, scored.scores)

    async def feedback_async(self, feedback: Feedback, caller: Caller) -> RoutingRecord:
        """`feedback`, off the event loop when the routing records are on PostgreSQL."""
        records = self.orchestrator.records
        if records is not None and records.remote:
            return await records.db.run(lambda: self.feedback(feedback, caller))
        return self.feedback(feedback, caller)

    def feedback(self, feedback: Feedback, caller: Caller) -> RoutingRecord:
        """Labels the routing record of an earlier task of the caller's. Raises
        NoRoutingRecords, or RequestRejected for a task that is not the caller's or
        cannot take this label."""
        records = self.orchestrator.records
        if records is None:
            raise NoRoutingRecords("this node keeps no routing records")
        try:
            record = records.feedback(
                feedback.task_id,
                caller.owner,
                adequate=feedback.adequate,
                correct_choice=feedback.correct,
            )
        except RoutingDataError as e:
            raise RequestRejected(str(e)) from None
        log.info("task %s: feedback recorded (%s)", safe(feedback.task_id), record.label_source)
        return record
