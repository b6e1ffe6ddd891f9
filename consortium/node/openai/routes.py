"""The endpoints of the OpenAI-compatible API and the run of one request through the
node's service.

Every /v1 request is admitted first: an API key (`Authorization: Bearer`, the node's
keys, the same rule as A2A's `node.auth.key_caller`) or, where `auth.anonymous_loopback`
allows it, the anonymous loopback user; members' signatures are not taken here (members
use A2A). A missing or invalid key is 401 invalid_api_key, counted with the A2A
handler's refusals. Every call on every route is then counted against the caller's
requests per minute (node.limits, the same limiter as A2A's; 429 with Retry-After). A
completion request is parsed (400 naming the field), its model resolved (`catalogue`,
404 model_not_found), its tokens (prompt + max_tokens) and a place among the caller's
requests in progress reserved (429), admitted by the node's load shedding
(node/admission.py: 429 `overloaded` with Retry-After when the node holds all it may, or
the model's queue is too long or full), recorded as a task (`tasks`) and answered by
`NodeService.answer`, which settles the reservation when the task ends; it holds its
place in the node's load until its response (or stream) ends.

What the service says becomes OpenAI's answer: Answered -> the completion (streamed or
whole); Rejected -> 400; Failed -> 500, or 503 when the model or peer could not be
reached, or 429 `overloaded` with Retry-After when the model's queue refused the task
(full, or it waited past [model] queue_timeout_s); a peer's unfinished task -> 400 when
it rejected it, 500 otherwise. A stream first waits for the service's first event, so
that a request refused before anything is generated gets a plain HTTP error; an error
after the stream started is sent as one `data: {"error": ...}` event, and the stream
ends. A client that goes away, mid-stream or while it waits for a whole answer, closes
the service's event stream, which stops the generation; its task is canceled, and what
it cost so far (prompt and generated text, estimated) counts against the caller's tokens
per minute, as an answer's usage does (the service settles both).

Each completion request is one SERVER span (`openai chat.completion` /
`openai text_completion`), the parent of the service's spans, naming the task, the
model asked for and the caller's kind, and the error code when it fails; nothing here
logs or traces a message's text.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from consortium.errors import NodeOverloaded, RateLimited, StorageUnavailable
from consortium.llm.base import TokenLogprob
from consortium.node.admission import Admission, Ticket
from consortium.node.auth import ANONYMOUS, Caller, http_credentials, key_caller_async
from consortium.node.limits import UNLIMITED, CallerLimits, Reservation
from consortium.node.openai.catalogue import Catalogue, ModelRoute
from consortium.node.openai.errors import (
    OpenAIError,
    bad_request,
    from_validation,
    json_response,
    model_not_found,
    overloaded,
    rate_limited,
    server_error,
    storage_unavailable,
    unauthorized,
)
from consortium.node.openai.responses import ChatShape, Shape, TextShape, Usage
from consortium.node.openai.schemas import ChatCompletionRequest, CompletionRequest
from consortium.node.openai.streaming import (
    DONE,
    ClientGone,
    EventStream,
    event,
    until_disconnect,
)
from consortium.node.openai.tasks import TaskRecord
from consortium.node.service import (
    INVALID_FORMAT,
    TOO_LONG,
    UNSUPPORTED,
    Answered,
    Failed,
    NodeService,
    PeerUnfinished,
    Rejected,
    Sampling,
    ServiceRequest,
    TaskEvent,
    TextChunk,
    Working,
)
from consortium.node.store import NodeTaskStore
from consortium.protocols.request_options import RequestOptions
from consortium.trust.api_keys import ApiKeys

log = logging.getLogger(__name__)

PREFIX = "/v1"
# Consortium's own request options an OpenAI request may set (`consortium: {...}`).
EXTENSION_OPTIONS = frozenset({"choices", "max_cost", "deadline_s", "max_peers"})
FINISH_REASONS = frozenset({"stop", "length"})

Refused = Callable[[str, str], None]
Parsed = TypeVar("Parsed", ChatCompletionRequest, CompletionRequest)


def _nothing_refused(reason: str, what: str) -> None:
    pass


@dataclass
class _Run:
    """One completion request on its way through the service."""

    caller: Caller
    request: ServiceRequest
    shape: Shape
    task: TaskRecord
    # Its claim on the caller's limits, settled by the service when the task ends.
    reservation: Reservation = UNLIMITED
    span: Span = field(default_factory=lambda: trace.INVALID_SPAN)
    # The tokens' logprobs as they streamed (when the answer carries none itself).
    tokens: list[TokenLogprob] = field(default_factory=list)


class OpenAIApi:
    """The /v1 routes over one node's service, task store, keys and limits."""

    def __init__(
        self,
        service: NodeService,
        store: NodeTaskStore,
        keys: ApiKeys | None,
        catalogue: Catalogue,
        limits: CallerLimits,
        *,
        anonymous_loopback: bool = False,
        refused: Refused = _nothing_refused,
        tracer: trace.Tracer | None = None,
        admission: Admission | None = None,
        require_writable: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.admission = admission
        self.tracer = tracer or trace.NoOpTracer()
        # Raises StorageUnavailable while the node cannot write (node.storage_health).
        self.require_writable = require_writable
        self.service = service
        self.store = store
        self.keys = keys
        self.catalogue = catalogue
        self.limits = limits
        self.anonymous_loopback = anonymous_loopback
        self._refused = refused

    def routes(self) -> list[BaseRoute]:
        return [
            Route(f"{PREFIX}/chat/completions", self._endpoint(self._chat), methods=["POST"]),
            Route(f"{PREFIX}/completions", self._endpoint(self._text), methods=["POST"]),
            Route(f"{PREFIX}/models", self._endpoint(self._models), methods=["GET"]),
            Route(f"{PREFIX}/models/{{model:path}}", self._endpoint(self._model), methods=["GET"]),
            # Anything else under /v1: OpenAI's 404 (after admission, like every route).
            Route(
                f"{PREFIX}/{{rest:path}}",
                self._endpoint(self._unknown),
                methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            ),
        ]

    def _endpoint(self, handler: Callable[[Request, Caller], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Any:
            try:
                caller = await self._admit(request)
                await self._count(caller)
                return await handler(request, caller)
            except OpenAIError as e:
                return e.response()
            except StorageUnavailable as e:  # nothing was accepted: the task is not stored
                return storage_unavailable(e).response()

        return endpoint

    # -- admission -------------------------------------------------------------------

    async def _admit(self, request: Request) -> Caller:
        creds = http_credentials(request)
        what = f"{request.method} {request.url.path} call"
        if creds.authorization is not None:
            caller = await key_caller_async(creds.authorization, self.keys)
            if caller is None:
                self._refused("invalid_key", what)
                raise unauthorized("Incorrect API key provided")
            return caller
        if creds.loopback and self.anonymous_loopback:
            return ANONYMOUS
        self._refused("no_credentials", what)
        if creds.proof is not None:
            raise unauthorized(
                "members' signatures are not accepted on /v1 (members use A2A); "
                "send an API key: Authorization: Bearer <key>"
            )
        raise unauthorized("You didn't provide an API key: send Authorization: Bearer <key>")

    async def _count(self, caller: Caller) -> None:
        """Counts the call against the caller's requests per minute (every route)."""
        try:
            await self.limits.count_request_async(caller)
        except RateLimited as e:
            raise _too_many(e) from None

    async def _reserve(self, caller: Caller, request: ServiceRequest) -> Reservation:
        """Reserves the task's tokens and a place among the caller's requests in
        progress (node.limits), the same rule as A2A's."""
        try:
            return await self.limits.reserve_task_async(
                caller, request.sent_text, request.options.max_tokens
            )
        except RateLimited as e:
            raise _too_many(e) from None

    # -- models ----------------------------------------------------------------------

    def _model_object(self, route: ModelRoute) -> dict[str, Any]:
        return {
            "id": route.id,
            "object": "model",
            "created": self.catalogue.created,
            "owned_by": route.owned_by,
        }

    async def _models(self, request: Request, caller: Caller) -> Response:
        models = [self._model_object(m) for m in self.catalogue.models()]
        return json_response({"object": "list", "data": models})

    async def _model(self, request: Request, caller: Caller) -> Response:
        name = request.path_params["model"]
        route = self.catalogue.listed(name)
        if route is None:
            raise model_not_found(name)
        return json_response(self._model_object(route))

    async def _unknown(self, request: Request, caller: Caller) -> Response:
        raise OpenAIError(
            404, f"Invalid URL ({request.method} {request.url.path})", code="unknown_url"
        )

    # -- completions -----------------------------------------------------------------

    async def _chat(self, request: Request, caller: Caller) -> Any:
        return await self._complete(request, caller, ChatCompletionRequest)

    async def _text(self, request: Request, caller: Caller) -> Any:
        return await self._complete(request, caller, CompletionRequest)

    async def _complete(self, request: Request, caller: Caller, kind: type[Parsed]) -> Any:
        """A chat or text completion: the body, its route, the caller's limits, its
        task, the answer."""
        body = _parse(kind, await _json(request))
        route = self._route(body.model)
        sampling = body.sampling()
        _local_only(route, sampling.local_only)
        options = _options(route, body.token_limit(), body.temperature, body.consortium)
        if self.require_writable is not None:  # a task that cannot be stored: no work
            await self.require_writable()
        ticket = self._shed(caller, options)
        try:
            response = await self._run(request, caller, body, sampling, options)
        except BaseException:
            ticket.release()
            raise
        if isinstance(response, EventStream):
            response.on_close(ticket.release)  # the stream holds its place until it ends
        else:
            ticket.release()
        return response

    def _shed(self, caller: Caller, options: RequestOptions) -> Ticket:
        """The request's place in the node's load, or 429 with Retry-After."""
        if self.admission is None:
            return Ticket(None, None)
        try:
            return self.admission.admit(
                caller.owner, local_model=self.service.uses_local_model(options, caller)
            )
        except NodeOverloaded as e:
            raise overloaded(e) from None

    async def _run(
        self,
        request: Request,
        caller: Caller,
        body: ChatCompletionRequest | CompletionRequest,
        sampling: Sampling,
        options: RequestOptions,
    ) -> Any:
        """An admitted completion: its task, and the answer."""
        task = TaskRecord(self.store, caller.owner)
        shape_of: type[Shape]
        if isinstance(body, ChatCompletionRequest):
            service_request = ServiceRequest(
                body.question(),
                options,
                task_id=task.id,
                conversation=body.conversation(),
                sampling=sampling,
            )
            shape_of = ChatShape
        else:
            service_request = ServiceRequest(
                body.text(), options, task_id=task.id, sampling=sampling, raw_prompt=True
            )
            shape_of = TextShape
        shape = shape_of(
            task.id,
            body.model,
            top_logprobs=sampling.top_logprobs if sampling.logprobs else None,
            include_usage=body.include_usage,
        )
        reservation = await self._reserve(caller, service_request)
        run = _Run(caller, service_request, shape, task, reservation)
        try:
            await task.submitted(
                service_request.sent_text,
                {"id": shape.id, "object": shape.object_name, "model": body.model},
            )
            return await self._respond(request, run, body.streaming)
        finally:
            reservation.release_unclaimed()  # when the service never took it

    def _route(self, model: str) -> ModelRoute:
        route = self.catalogue.resolve(model)
        if route is None:
            raise model_not_found(model)
        return route

    async def _respond(self, request: Request, run: _Run, streaming: bool) -> Any:
        """The answer: a stream of chunks, or one response once it is complete. A client
        that goes away before then stops the generation (its task is canceled)."""
        try:
            async with until_disconnect(request.receive):
                return await self._answer(run, streaming)
        except ClientGone:
            log.info("task %s: the client went away", run.task.id)
            return Response(status_code=499)  # nobody reads it

    async def _answer(self, run: _Run, streaming: bool) -> Any:
        run.span = self.tracer.start_span(
            f"openai {run.shape.object_name}",
            kind=SpanKind.SERVER,
            attributes={
                "gen_ai.request.model": run.shape.model,
                "a2a.task.id": run.task.id,
                "consortium.caller.kind": run.caller.kind,
                "consortium.stream": streaming,
            },
        )
        # Current while the service starts on the task (its spans are children of this
        # one); never across a yield of the stream.
        events: AsyncGenerator[TaskEvent, None] | None = None
        try:
            with _current(run.span):
                events = self.service.answer(run.request, run.caller, run.reservation)
                first = await self._first(run, events)
                if not streaming:
                    async with contextlib.aclosing(events):
                        response = await self._whole(run, first, events)
                    _end(run.span)
                    return response
        except OpenAIError as e:
            await _close(events)
            _end(run.span, e)
            raise
        except StorageUnavailable as e:  # the task's state cannot be stored: no answer
            await _close(events)
            error = storage_unavailable(e)
            _end(run.span, error)
            raise error from None
        except Exception as e:
            await _close(events)
            log.exception("task %s failed in the endpoint", run.task.id)
            await run.task.failed(type(e).__name__)
            error = server_error("the node failed to answer")
            _end(run.span, error)
            raise error from None
        except BaseException:
            await _close(events)
            self._canceled(run)
            _end(run.span)
            raise
        assert events is not None
        return EventStream(self._stream(run, first, events))

    async def _first(self, run: _Run, events: AsyncGenerator[TaskEvent, None]) -> TaskEvent | None:
        """The service's first event that is not Working; raises the HTTP error when the
        request is refused or fails before any text."""
        async for ev in events:
            if isinstance(ev, Working):
                await run.task.working()
                continue
            await self._raise_if_ended_badly(run, ev)
            return ev
        await run.task.failed("the node gave no answer")
        raise server_error("the node gave no answer")

    async def _raise_if_ended_badly(self, run: _Run, ev: TaskEvent) -> None:
        """Records and raises the error an unsuccessful end event stands for."""
        if isinstance(ev, Rejected):
            await run.task.rejected(ev.reason)
            raise bad_request(ev.reason, param=_param_of(run, ev), code=ev.code)
        if isinstance(ev, Failed):
            await run.task.failed(ev.reason)
            if ev.overloaded:  # the model's queue refused it: 429, come back later
                refusal = NodeOverloaded(
                    ev.reason, retry_after_s=ev.retry_after_s, reason=ev.overloaded
                )
                raise overloaded(refusal)
            raise server_error(ev.reason, unavailable=ev.unavailable)
        if isinstance(ev, PeerUnfinished):
            reason = f"{ev.org} {ev.state}: {ev.text}"
            if ev.state == "rejected":
                await run.task.rejected(reason)
                raise bad_request(reason)
            await run.task.failed(reason, ev.provenance)
            raise server_error(reason)

    async def _whole(
        self, run: _Run, first: TaskEvent | None, events: AsyncIterator[TaskEvent]
    ) -> Response:
        async for ev in _chain(first, events):
            if isinstance(ev, Working):
                await run.task.working()
            elif isinstance(ev, TextChunk):
                run.tokens.extend(ev.logprobs)
            elif isinstance(ev, Answered):
                finish, usage, tokens, provenance = await self._answered(run, ev)
                body = run.shape.whole(ev.text, tokens, finish, usage, provenance)
                return json_response(body)
            else:
                await self._raise_if_ended_badly(run, ev)
        await run.task.failed("the node gave no answer")
        raise server_error("the node gave no answer")

    async def _answered(
        self, run: _Run, ev: Answered
    ) -> tuple[str, Usage, list[TokenLogprob], dict[str, Any]]:
        """Records the answer (task, token budget); its finish reason, usage, tokens and
        the provenance as sent."""
        await run.task.completed(ev.text, ev.provenance)
        completion = ev.completion
        prov = ev.provenance
        if completion is not None:
            usage = Usage(completion.usage.input_tokens, completion.usage.output_tokens)
            finish: str = completion.finish_reason
            tokens = list(completion.logprobs) or run.tokens
        else:
            usage = Usage(prov.input_tokens or 0, prov.output_tokens or 0)
            finish = prov.finish_reason or "stop"
            tokens = run.tokens
        if finish not in FINISH_REASONS:
            finish = "stop"
        return finish, usage, tokens, prov.wire()

    async def _stream(
        self, run: _Run, first: TaskEvent | None, events: AsyncGenerator[TaskEvent, None]
    ) -> AsyncGenerator[bytes, None]:
        shape = run.shape
        sent = 0  # characters of text sent (a text completion's logprob offsets)
        async with contextlib.aclosing(events):
            try:
                opening = shape.opening()
                if opening is not None:
                    yield event(opening)
                async for ev in _chain(first, events):
                    if isinstance(ev, Working):
                        await run.task.working()
                    elif isinstance(ev, TextChunk):
                        if ev.text or ev.logprobs:
                            yield event(shape.piece(ev.text, ev.logprobs, sent))
                            sent += len(ev.text)
                    elif isinstance(ev, Answered):
                        finish, usage, _, provenance = await self._answered(run, ev)
                        if not ev.streamed and ev.text:
                            yield event(shape.piece(ev.text, (), sent))
                        yield event(shape.closing(finish, provenance))
                        if shape.include_usage:
                            yield event(shape.usage_chunk(usage))
                        yield DONE
                        return
                    else:
                        await self._raise_if_ended_badly(run, ev)
                await run.task.failed("the node gave no answer")
                raise server_error("the node gave no answer")
            except OpenAIError as e:
                _end(run.span, e)
                yield event(e.body())
            except StorageUnavailable as e:  # the answer is not stored: not sent either
                error = storage_unavailable(e)
                _end(run.span, error)
                yield event(error.body())
            except Exception as e:
                log.exception("task %s: the stream failed", run.task.id)
                await run.task.failed(f"{type(e).__name__}")
                error = server_error("the node failed while streaming")
                _end(run.span, error)
                yield event(error.body())
            finally:
                if not run.task.finished:
                    self._canceled(run)
                    run.span.set_attribute("consortium.canceled", True)
                _end(run.span)

    def _canceled(self, run: _Run) -> None:
        """Records that the client went away before the answer (the service counts what
        the request cost so far against the caller's tokens)."""
        if run.task.finished:
            return
        # Nobody waits for this write; on a full disk the next start marks the task failed.
        with contextlib.suppress(StorageUnavailable):
            run.task.canceled("canceled: the client went away")


def _too_many(limited: RateLimited) -> OpenAIError:
    return rate_limited(str(limited), limited.retry_after_s, limited.kind)


def _param_of(run: _Run, rejected: Rejected) -> str | None:
    """The request field a refusal is about, when the service's code tells."""
    if rejected.code == UNSUPPORTED:
        sampling = run.request.sampling
        if sampling.response_format is not None:
            return "response_format"
        if sampling.logprobs:
            return "logprobs"
    if rejected.code == INVALID_FORMAT:
        return "response_format"
    if rejected.code == TOO_LONG:
        return "prompt" if run.request.raw_prompt else "messages"
    return None


def _current(span: Span) -> contextlib.AbstractContextManager[Span]:
    """`span` made current, recording no exception: an error's message may quote text."""
    return trace.use_span(span, record_exception=False, set_status_on_exception=False)


def _end(span: Span, error: OpenAIError | None = None) -> None:
    """Ends the request's span (once), with the error's status and code if any."""
    if not span.is_recording():
        return
    if error is not None:
        span.set_attribute("http.response.status_code", error.status)
        span.set_status(Status(StatusCode.ERROR, error.code or error.type))
    span.end()


async def _close(events: AsyncGenerator[TaskEvent, None] | None) -> None:
    if events is not None:
        await events.aclose()


async def _chain(
    first: TaskEvent | None, rest: AsyncIterator[TaskEvent]
) -> AsyncIterator[TaskEvent]:
    if first is not None:
        yield first
    async for ev in rest:
        yield ev


async def _json(request: Request) -> Any:
    body = await request.body()
    try:
        return json.loads(body)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise bad_request(
            f"We could not parse the JSON body of your request: {e}", code="not_json"
        ) from None


def _parse(cls: type[Parsed], data: Any) -> Parsed:
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise from_validation(e) from None


def _local_only(route: ModelRoute, wanted: str) -> None:
    if wanted and not route.local:
        raise bad_request(
            f"{wanted} can only be served by this node's own model, not by {route.id}",
            param=wanted.split(" ")[0],
        )


def _options(
    route: ModelRoute,
    max_tokens: int | None,
    temperature: float | None,
    extension: dict[str, Any] | None,
) -> RequestOptions:
    values: dict[str, Any] = dict(route.options)
    if max_tokens is not None:
        values["max_tokens"] = max_tokens
    if temperature is not None:
        values["temperature"] = temperature
    for key, value in (extension or {}).items():
        if key not in EXTENSION_OPTIONS:
            allowed = ", ".join(sorted(EXTENSION_OPTIONS))
            raise bad_request(
                f"consortium.{key} is not an option here (allowed: {allowed})",
                param=f"consortium.{key}",
            )
        values[key] = value
    try:
        return RequestOptions.model_validate(values)
    except ValidationError as e:
        err = from_validation(e)
        if err.param in EXTENSION_OPTIONS:
            err.param = f"consortium.{err.param}"
        raise err from None
