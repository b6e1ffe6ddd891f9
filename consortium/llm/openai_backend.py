"""LLM backend on an OpenAI-compatible model server the organization already runs (vLLM,
Ollama, llama.cpp's server, llama-cpp-python's `llama_cpp.server`): `backend = "openai"`.

The node does not load the model; it streams chat completions (`/chat/completions`) or
text completions (`/completions`, for `prompt_format = "completion"`) from `base_url`,
scores multiple-choice options through the completions API's prompt log-probabilities
(`echo` with `logprobs`), and counts tokens with the server's tokenizer where it exposes
one. Like every backend it is synchronous and runs on the ModelWorker's thread.

Start-up (the constructor, on the worker thread) fails with ModelError unless the server
answers `GET /models` with the configured API key and lists `model.name`; then it probes
what the server can do, each with a request of a few tokens, and `info.capabilities` holds what
the probes saw, never what the server's name suggests:
- `token_logprobs`: a streamed one-token generation with `logprobs` returned them;
- `option_scoring`: `/completions` with `echo`, `logprobs` and `max_tokens = 1` returned
  the prompt tokens' log-probabilities (llama-cpp-python needs `--logits_all True`;
  Ollama has none), and they belong to their tokens: the model's greedy next token,
  echoed after the probe's prompt, is the most likely token at its position.
  llama-cpp-python's server fails this for models without a BOS token (SmolLM2): it
  gives each prompt token the log-probability of the position after it, which would rank
  options arbitrarily. `max_tokens` is 1, not 0: llama-cpp-python reads 0 as "up to the
  context size"; the generated token is left out of the sum;
- `grammar` (chat only): a chat completion asked to follow a small JSON Schema (an enum
  only a constrained model keeps to) did, with the schema sent as OpenAI's
  `response_format` `json_schema` (vLLM, OpenAI) or else as llama-cpp-python's
  `json_object` with a `schema`; requests then pass `GenerationParams.response_format`
  through in the style that worked (a schema `grammar.check_schema` refuses, e.g. one
  asking for too many repetitions, is refused first, as the llama.cpp backend does).
  Without it a request that sets `response_format` is refused (UnsupportedByModel)
  rather than answered unconstrained.
A probe the server refuses (4xx/5xx) means the capability is missing, logged with the
server's reason; a configured router that needs it then stops the node at start-up
(consortium/node/orchestrator.py `required_capabilities`).

Token counting: `POST /extras/tokenize/count` or `/extras/tokenize` (llama-cpp-python)
or `POST /tokenize` (llama.cpp's server, vLLM) at the server's root, whichever answers
at start-up; with neither (Ollama, hosted APIs) an estimate of one token per 4 UTF-8
bytes, at least 1. Counts are cached per text (option scoring counts the same prompt often).
Usage comes from the server (`stream_options.include_usage`) when it reports it; else
the output is counted as the streamed tokens (the log-probability entries, or one per
streamed delta, which is how these servers stream) and the input as the estimate or
tokenizer count of the messages' text (without the chat template's tokens).

Cancellation (the worker's event) is checked after each streamed event: the stream is
closed at once, which llama.cpp-based servers and vLLM take as an abort. A server that
sends nothing for a while holds the cancellation up until its next event or
`model.timeout_s`.

Why httpx and not the `openai` client: the retry policy below must know whether a
request could have reached the server, which httpx says by exception type (ConnectError
and ConnectTimeout: never sent) and which the client folds into one APIConnectionError;
the servers differ in what they add to the OpenAI schema (prompt logprobs' `text_offset`,
tokenize endpoints outside `/v1`, error bodies as `{"error": {...}}`, `{"error": "..."}`,
`{"message": ...}` or `{"detail": ...}`), which plain JSON reads uniformly; and closing a
cancelled stream is closing the httpx response, with nothing in between.

Concurrency: the backend is safe to call from several threads at once, and says so
(`info.concurrency` = `model.parallel`, default DEFAULT_PARALLEL), so the node's worker
sends up to that many requests to the server at once instead of one after another: the
server (vLLM, llama.cpp's server with slots, Ollama) batches concurrent requests itself.
The threads share one httpx client (thread-safe, with a connection pool holding a
keep-alive connection per thread) and the token-count cache (behind a lock); the only
other state written after start-up is the `stream_options` fallback below, a flag that
only ever goes from True to False.

Retries (`model.retries`, default 2; waits of 0.5 s, 1 s, 2 s ... capped at 4 s):
- Idempotent calls, `GET /models` and the tokenize calls (read-only, no generation):
  retried on any transport failure (connection refused, timeouts, a dropped connection)
  and on HTTP 502, 503 and 504.
- Generation and scoring calls (`POST /chat/completions`, `POST /completions`, streamed
  or not) are not idempotent in cost, and with sampling not in result: retried only when
  the server cannot have started on them, i.e. the connection could not be established
  (the request was never sent: ConnectError, ConnectTimeout, PoolTimeout) or the answer
  is HTTP 502, 503 or 504 (a gateway or an overloaded server refusing it), read before
  any generated output (only such an answer's error page is read). A read timeout or a
  connection dropped after the request was sent is not retried (the server may still be
  generating), nor is any other status, and a stream that started (HTTP 200 received)
  is never retried: its error fails the task.

Other servers (`model.fallback_base_urls`: replicas of the server, or of a Consortium
node's /v1): a call that would be retried for the reasons above — never sent, or refused
with 502/503/504 before any output — goes at once to the next server instead of waiting,
each server tried once per call before the back-off above; the server that took it
stays the current one for every call (a warning says when it changes). A stream that
started is never moved.

One more re-send: a server that refuses `stream_options` (usage in streams) as an unknown
field (HTTP 400/422 naming it: it did nothing) gets the request again without it, and
from then on never; usage is then counted.

A server is not trusted to keep to the request: a stream is read line by line with no
line over MAX_LINE_BYTES; at most `max_tokens` deltas with text are taken (a server
that ignores `max_tokens` is cut off there: finish reason "length"), holding at most
MAX_CHARS_PER_TOKEN characters each on average; a stream that goes on past
2 x `max_tokens` + MAX_EXTRA_LINES lines without ending, an event that is not the
OpenAI shape (a NaN log-probability included), or a whole answer over MAX_BODY_BYTES is
a ModelError; a log-probability of -Infinity (a masked token) becomes -9999.0, since the
node's own answers are strict JSON. Redirects are not
followed (the API key goes to `base_url` only): a 3xx is an error like any other status.

Errors map to ModelError with the server's reason (escaped as `logsafe.safe` does and cut
to MAX_REASON_CHARS), so the task fails with it;
PromptTooLongError (the task is refused) when the server says the prompt exceeds its
context, or before sending when the server's tokenizer counts more tokens in the
messages' text alone than `model.context_size` holds. A stream that ends without
`[DONE]` or a finish reason is an error, never a short answer (llama-cpp-python answers
200 and drops the stream when a generation fails to start), and the connection pool is
then renewed, since such a server resets the connection it left in it. the API key, request
bodies and prompts are never logged or put in a message. The key travels as
`Authorization: Bearer`, read by consortium/llm/backends.py from `model.api_key_file`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import httpx

from consortium.errors import ModelError, PromptTooLongError, RequestRejected, UnsupportedByModel
from consortium.llm.base import (
    Capability,
    ChatMessage,
    Chunk,
    Completion,
    FinishReason,
    GenerationParams,
    ModelInfo,
    ResponseFormat,
    Timings,
    TokenLogprob,
    Usage,
)
from consortium.llm.grammar import check_schema
from consortium.logsafe import safe

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({502, 503, 504})
# Exceptions raised before a request was written to the wire: safe to retry any call.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
BACKOFF_S = 0.5
MAX_BACKOFF_S = 4.0
MAX_REASON_CHARS = 300
# What a server may send: one SSE line, text per token on average, lines beyond the
# 2 x max_tokens a stream can need, and a whole (non-streamed) answer.
MAX_LINE_BYTES = 1 << 20
MAX_CHARS_PER_TOKEN = 256
MAX_EXTRA_LINES = 64
MAX_BODY_BYTES = 32 << 20
# What a masked token's log-probability (-Infinity, which JSON cannot carry) becomes.
MIN_LOGPROB = -9999.0
CHARS_PER_TOKEN = 4
# The most alternatives per token the OpenAI API (and vLLM by default) returns.
MAX_TOP_LOGPROBS = 20
COUNT_CACHE = 512
CONTEXT_ERROR = re.compile(
    r"context.{0,24}(length|size|window)|maximum context|prompt is too long|too many tokens",
    re.I,
)
PROBE_PROMPT = "The capital of France is"
PROBE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["Paris", "Rome"]}},
    "required": ["answer"],
    "additionalProperties": False,
}
# Requests in flight to the server when `model.parallel` is 0: enough for a CPU server to
# batch (llama-server --parallel 8 gave about twice its one-stream throughput on this
# project's 2-core machines, issue 26), few enough not to flood a small one; a GPU
# server (vLLM) takes more: set `model.parallel` (up to 64).
DEFAULT_PARALLEL = 8
# How a server takes a JSON Schema: OpenAI's `json_schema` response format, or
# llama-cpp-python's `json_object` with a `schema` beside it.
GrammarStyle = Literal["json_schema", "json_object_schema"]


class _Clients:
    """The httpx client the backend's threads share, renewed when a server broke off a
    stream (such a server may reset the connection it left in the pool, failing the next
    request). A client renewed away is closed once the last request using it has ended,
    so renewing never breaks another thread's request."""

    def __init__(self, new: Callable[[], httpx.Client]) -> None:
        self._new = new
        self._lock = threading.Lock()
        self._current = new()
        self._users: dict[httpx.Client, int] = {}

    @contextmanager
    def use(self) -> Iterator[httpx.Client]:
        """The current client, for the length of one request (a stream included)."""
        with self._lock:
            client = self._current
            self._users[client] = self._users.get(client, 0) + 1
        try:
            yield client
        finally:
            with self._lock:
                left = self._users[client] - 1
                if left:
                    self._users[client] = left
                else:
                    del self._users[client]
                retired = not left and client is not self._current
            if retired:
                client.close()

    def renew(self, client: httpx.Client) -> None:
        """A fresh client for new requests instead of `client` (unless renewed already)."""
        with self._lock:
            if client is not self._current:
                return
            self._current = self._new()
            idle = client not in self._users
        if idle:
            client.close()

    def close(self) -> None:
        with self._lock:
            clients = [self._current, *self._users]
        for client in clients:
            client.close()


class OpenAIBackend:
    """A model served by an OpenAI-compatible server; up to `parallel` callers at once,
    each on its own thread (ModelWorker)."""

    def __init__(
        self,
        base_url: str,
        *,
        name: str,
        context_size: int = 2048,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
        retries: int = 2,
        chat: bool = True,
        backoff_s: float = BACKOFF_S,
        parallel: int = DEFAULT_PARALLEL,
        fallback_base_urls: Sequence[str] = (),
    ) -> None:
        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, not {parallel}")
        # base_url, then the same model's other servers, each once (see _fail_over).
        self._bases = list(dict.fromkeys(u.rstrip("/") for u in (base_url, *fallback_base_urls)))
        self._current = 0
        self._bases_lock = threading.Lock()
        self._name = name
        self._context_size = context_size
        self._timeout_s = timeout_s
        self._retries = retries
        self._backoff_s = backoff_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        # A keep-alive connection for each thread that may call at once (httpx keeps 20).
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=max(20, parallel))
        # No redirects: the API key is for base_url, not wherever a server points.
        self._http = _Clients(
            lambda: httpx.Client(
                headers=headers, timeout=timeout, follow_redirects=False, limits=limits
            )
        )
        self._counts: dict[str, int] = {}
        self._counts_lock = threading.Lock()
        self._count_remote: Callable[[str], int] | None = None
        self._chat = chat
        self._grammar: GrammarStyle | None = None
        self._usage_in_stream = True
        # Why each capability the probes did not find is missing, in the server's words.
        self.missing: dict[Capability, str] = {}
        try:
            self._check_model()
            self._count_remote = self._find_tokenizer()
            capabilities = self._probe()
        except BaseException:
            self._http.close()
            raise
        self._info = ModelInfo(
            name=name,
            backend="openai",
            context_size=context_size,
            chat=chat,
            path=self._base,
            capabilities=capabilities,
            concurrency=parallel,
        )
        log.info(
            "model server %s serves %s; capabilities: %s; token counts: %s",
            self._base,
            name,
            ", ".join(sorted(capabilities)) or "none",
            "the server's tokenizer" if self._count_remote else "estimated",
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def _base(self) -> str:
        """The API root of the server calls go to now."""
        return self._bases[self._current]

    @property
    def _root(self) -> str:
        """The current server's root: its tokenize endpoints live there, not under /v1."""
        return self._base.removesuffix("/v1")

    def _fail_over(self, url: str, tried: int, reason: str) -> str | None:
        """`url` on the next server of `model.fallback_base_urls` after the current one
        could not take a call that it cannot have acted on (`reason`), and makes that
        server the current one for every call; None when each was `tried` already."""
        if tried >= len(self._bases) - 1:
            return None
        with self._bases_lock:
            old_base, old_root = self._base, self._root
            if url.startswith(old_base) or url.startswith(old_root):
                self._current = (self._current + 1) % len(self._bases)
            base, root = self._base, self._root
        log.warning("model server %s: %s; calls go to %s now", old_base, reason, base)
        if url.startswith(old_base):
            return base + url[len(old_base) :]
        if url.startswith(old_root):
            return root + url[len(old_root) :]
        return url

    def close(self) -> None:
        self._http.close()

    # -- start-up ------------------------------------------------------------------------

    def _check_model(self) -> None:
        r = self._request("GET", f"{self._base}/models", idempotent=True, what="model list")
        if r.status_code == 404:
            raise ModelError(
                f"{self._base}/models not found (HTTP 404); is model.base_url the server's "
                "API root (often ending in /v1)?"
            )
        if r.status_code != 200:
            raise self._error(r, "model list")
        try:
            ids = [str(m["id"]) for m in r.json()["data"]]
        except (RecursionError, ValueError, KeyError, TypeError):
            raise ModelError(
                f"{self._base}/models did not answer with an OpenAI model list; "
                "is model.base_url the API root (often ending in /v1)?"
            ) from None
        if self._name not in ids:
            served = ", ".join(safe(i, 64) for i in ids[:10]) or "nothing"
            raise ModelError(
                f"the model server at {self._base} does not serve {self._name!r} (it serves: "
                f"{served}); set model.name to the server's name for the model"
            )

    def _find_tokenizer(self) -> Callable[[str], int] | None:
        candidates: list[tuple[str, Callable[[str], dict[str, Any]], str]] = [
            (f"{self._root}/extras/tokenize/count", lambda t: {"input": t}, "count"),
            (f"{self._root}/extras/tokenize", lambda t: {"input": t}, "tokens"),
            (
                f"{self._root}/tokenize",
                lambda t: {"model": self._name, "prompt": t, "content": t},
                "tokens",
            ),
        ]
        for url, body, field in candidates:

            def count(text: str, url: str = url, body: Any = body, field: str = field) -> int:
                r = self._request("POST", url, json=body(text), idempotent=True, what="tokenize")
                if r.status_code != 200:
                    raise self._error(r, "tokenize")
                data = r.json()
                return int(data["count"]) if "count" in data else len(data[field])

            try:
                if count("Hello world") > 0:
                    return count
            except (RecursionError, ModelError, ValueError, KeyError, TypeError):
                continue
        return None

    def _probe(self) -> frozenset[Capability]:
        found: set[Capability] = set()
        try:
            params = GenerationParams(max_tokens=1, logprobs=True, top_logprobs=1)
            messages = [ChatMessage("user", PROBE_PROMPT)]
            done = _drain(
                self._stream_chat(messages, params, threading.Event())
                if self._chat
                else self._stream_complete(PROBE_PROMPT, params, threading.Event())
            )
            if done.logprobs:
                found.add("token_logprobs")
            else:
                self.missing["token_logprobs"] = "the generation came without log-probabilities"
        except ModelError as e:
            self.missing["token_logprobs"] = str(e)
        try:
            self._check_prompt_logprobs()
            found.add("option_scoring")
        except ModelError as e:
            self.missing["option_scoring"] = str(e)
        if self._chat:
            self._grammar = self._find_grammar_style()
            if self._grammar is not None:
                found.add("grammar")
        else:
            self.missing["grammar"] = "JSON-constrained generation is probed for chat only"
        for capability, why in self.missing.items():
            log.info("model server %s: no %s: %s", self._base, capability, why)
        return frozenset(found)

    def _check_prompt_logprobs(self) -> None:
        """Prompt log-probabilities are returned and belong to their tokens: the model's
        greedy next token, echoed after the prompt, must be the most likely token at its
        position. (llama-cpp-python's server shifts them by one position for a model
        without a BOS token, e.g. SmolLM2: each token gets the log-probability the next
        position gives it; scores from that would rank options arbitrarily.)"""
        greedy = _drain(
            self._stream_complete(PROBE_PROMPT, GenerationParams(max_tokens=1), threading.Event())
        ).text
        if not greedy:
            raise ModelError("the probe's one-token completion came back empty")
        tokens, values, offsets, tops = self._echo(PROBE_PROMPT + greedy)
        at = [i for i, o in enumerate(offsets) if o == len(PROBE_PROMPT)]
        if not at or tokens[at[0]] != greedy or values[at[0]] is None:
            raise ModelError("cannot check the prompt log-probabilities' alignment")
        value, top = values[at[0]], tops[at[0]]
        assert value is not None
        best = max(top.values(), default=value)
        if best - value > 1e-3 + 1e-3 * abs(value):
            raise ModelError(
                f"the prompt log-probabilities are misaligned: the greedy token {safe(greedy)!r} "
                f"has {value:.3f}, the position's best {best:.3f}"
            )

    def _find_grammar_style(self) -> GrammarStyle | None:
        """The response-format style under which the server's answer follows a JSON
        Schema (an enum only a constrained model keeps to), if any."""
        question = [ChatMessage("user", "What is the capital of France? Answer in JSON.")]
        schema = json.dumps(PROBE_SCHEMA)
        reasons = []
        styles: tuple[GrammarStyle, ...] = ("json_schema", "json_object_schema")
        for style in styles:
            self._grammar = style
            params = GenerationParams(
                max_tokens=12, response_format=ResponseFormat("json_schema", schema)
            )
            try:
                text = _drain(self._stream_chat(question, params, threading.Event())).text
            except ModelError as e:
                reasons.append(f"{style}: {e}")
                continue
            finally:
                self._grammar = None
            try:
                value = json.loads(text)
            except (ValueError, RecursionError):
                value = None
            if _follows_probe_schema(value):
                return style
            reasons.append(f"{style}: the answer did not follow the schema")
        self.missing["grammar"] = "; ".join(reasons)
        return None

    # -- tokens --------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        with self._counts_lock:
            n = self._counts.get(text)
        if n is None:
            # Outside the lock: two threads may count the same text, never wait on another.
            if self._count_remote is not None:
                n = self._count_remote(text)
            else:
                n = max(1, math.ceil(len(text.encode()) / CHARS_PER_TOKEN))
            with self._counts_lock:
                if len(self._counts) >= COUNT_CACHE:
                    self._counts.clear()
                self._counts[text] = n
        return n

    # -- generation ----------------------------------------------------------------------

    def stream_chat(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: threading.Event
    ) -> Generator[Chunk, None, Completion]:
        self._check_params(params)
        return self._stream_chat(messages, params, cancel)

    def stream_complete(
        self, prompt: str, params: GenerationParams, cancel: threading.Event
    ) -> Generator[Chunk, None, Completion]:
        self._check_params(params)
        return self._stream_complete(prompt, params, cancel)

    def _check_params(self, params: GenerationParams) -> None:
        caps = self._info.capabilities
        if params.response_format is not None and "grammar" not in caps:
            raise UnsupportedByModel(
                f"the model server at {self._base} does not constrain generation to JSON "
                "(no grammar capability)"
            )
        if params.logprobs and "token_logprobs" not in caps:
            raise UnsupportedByModel(
                f"the model server at {self._base} returns no token log-probabilities"
            )

    def _stream_chat(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: threading.Event
    ) -> Generator[Chunk, None, Completion]:
        body = self._body(params)
        body["messages"] = [{"role": m.role, "content": m.content} for m in messages]
        if params.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = min(params.top_logprobs, MAX_TOP_LOGPROBS)
        text = "\n".join(m.content for m in messages)
        return self._stream("/chat/completions", body, text, params, cancel, chat=True)

    def _stream_complete(
        self, prompt: str, params: GenerationParams, cancel: threading.Event
    ) -> Generator[Chunk, None, Completion]:
        body = self._body(params)
        body["prompt"] = prompt
        if params.logprobs:
            body["logprobs"] = min(params.top_logprobs, MAX_TOP_LOGPROBS)
        return self._stream("/completions", body, prompt, params, cancel, chat=False)

    def _body(self, params: GenerationParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._name,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": True,
        }
        if self._usage_in_stream:
            body["stream_options"] = {"include_usage": True}
        rf = params.response_format
        if rf is not None and self._grammar is not None:
            body["response_format"] = _response_format(rf, self._grammar)
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    def _stream(
        self,
        path: str,
        body: dict[str, Any],
        prompt_text: str,
        params: GenerationParams,
        cancel: threading.Event,
        *,
        chat: bool,
    ) -> Generator[Chunk, None, Completion]:
        with self._http.use() as http:
            return (yield from self._stream_on(http, path, body, prompt_text, params, cancel, chat))

    def _stream_on(
        self,
        http: httpx.Client,
        path: str,
        body: dict[str, Any],
        prompt_text: str,
        params: GenerationParams,
        cancel: threading.Event,
        chat: bool,
    ) -> Generator[Chunk, None, Completion]:
        started = time.perf_counter()
        what = "chat completion" if chat else "completion"
        if self._count_remote is not None:
            # Only a lower bound for chat (the template adds tokens), so only a sure refusal;
            # a server that fails a longer prompt without saying so is caught below.
            n = self.count_tokens(prompt_text)
            if n >= self._context_size:
                raise PromptTooLongError(
                    f"the prompt has {n} tokens or more; the context of {self._name} "
                    f"holds {self._context_size} (model.context_size)"
                )
        try:
            response = self._open_stream(http, f"{self._base}{path}", body, what)
        except ModelError as e:
            if not (self._usage_in_stream and _refused_field(e, "stream_options")):
                raise
            # A server that validates strictly and predates usage in streams refused the
            # request as malformed (HTTP 400/422): it did no work. Sent again without it;
            # usage is then counted. (Threads racing here all end with False.)
            self._usage_in_stream = False
            body = {k: v for k, v in body.items() if k != "stream_options"}
            response = self._open_stream(http, f"{self._base}{path}", body, what)
        ended: list[bool] = []
        text: list[str] = []
        logprobs: list[TokenLogprob] = []
        deltas = 0
        usage: dict[str, Any] | None = None
        finish: FinishReason | None = None
        prompt_s = 0.0
        limit = params.max_tokens
        chars = 0
        cut = False  # the server went on past max_tokens
        lines = 2 * limit + MAX_EXTRA_LINES
        try:
            for event in _sse_events(response, self._base, self._timeout_s, ended, lines):
                if "error" in event:
                    raise ModelError(
                        f"the model server at {self._base} failed during the {what}: "
                        f"{_reason(event)}"
                    )
                event_usage, choices = _event_parts(event, chat, params.top_logprobs, self._base)
                usage = event_usage or usage
                for piece, lps, finish_reason in choices:
                    if finish_reason:
                        finish = "length" if finish_reason == "length" else "stop"
                    if not piece and not lps:
                        continue
                    if deltas >= limit:
                        # Each delta holds at least one token: the server ignores
                        # max_tokens. The answer ends where it should have.
                        cut = True
                        break
                    chars += len(piece)
                    if chars > limit * MAX_CHARS_PER_TOKEN:
                        raise ModelError(
                            f"the model server at {self._base} sent more text than "
                            f"{limit} tokens hold during the {what}"
                        )
                    lps = lps[: max(0, limit - len(logprobs))]
                    if not deltas:
                        prompt_s = time.perf_counter() - started
                    deltas += 1
                    text.append(piece)
                    logprobs.extend(lps)
                    yield Chunk(piece, lps[-1] if lps else None, tuple(lps) if len(lps) > 1 else ())
                if cut:
                    finish = "length"
                    break
                if cancel.is_set():
                    finish = "cancelled"
                    break
        finally:
            response.close()
            if finish is None and not ended:
                # A server that dropped a stream may reset the connection it leaves in the
                # pool, failing the next request: start afresh.
                self._http.renew(http)
        if finish is None and not ended:
            # llama-cpp-python, for one, answers 200 and then drops a stream that failed
            # to start (e.g. a prompt beyond its context) without an error event.
            raise ModelError(
                f"the model server at {self._base} ended the {what} without finishing it"
                + ("" if deltas else " before its first token (its log may say why)")
            )
        if not cut and usage and isinstance(usage.get("completion_tokens"), int):
            prompt_tokens = usage.get("prompt_tokens")
            counted = Usage(
                max(0, prompt_tokens) if isinstance(prompt_tokens, int) else 0,
                max(0, usage["completion_tokens"]),
            )
        else:
            n_out = len(logprobs) if params.logprobs and logprobs else deltas
            counted = Usage(self.count_tokens(prompt_text), n_out)
        return Completion(
            text="".join(text),
            finish_reason=finish or "stop",
            usage=counted,
            timings=Timings(prompt_s=prompt_s, total_s=time.perf_counter() - started),
            logprobs=logprobs,
        )

    # -- scoring -------------------------------------------------------------------------

    def score(self, prompt: str, continuations: Sequence[str]) -> list[float]:
        if "option_scoring" not in self._info.capabilities:
            raise UnsupportedByModel(
                f"the model server at {self._base} returns no prompt log-probabilities, "
                "which scoring multiple-choice options needs"
            )
        return [self._score_one(prompt, c) if c else 0.0 for c in continuations]

    def _score_one(self, prompt: str, continuation: str) -> float:
        """The log-likelihood of `continuation` after `prompt`: the sum of the prompt
        log-probabilities of the tokens that end past the prompt's last character (a
        token straddling the boundary belongs to the continuation, as in the llama.cpp
        backend, which sums from the first token where the two tokenizations part)."""
        whole = prompt + continuation
        tokens, values, offsets, _ = self._echo(whole)
        total, counted = 0.0, 0
        for i, value in enumerate(values):
            start = offsets[i]
            end = offsets[i + 1] if i + 1 < len(offsets) else start + len(tokens[i])
            if start >= len(whole):
                break  # the generated token
            if end > len(prompt):
                counted += 1
                total += float(value) if value is not None else 0.0
        if not counted:
            raise ModelError(
                f"the model server at {self._base} returned no log-probability for the option"
            )
        return total

    def _echo(
        self, text: str
    ) -> tuple[list[str], list[float | None], list[int], list[dict[str, float]]]:
        """The prompt log-probabilities of `text` (with the top alternative at each
        position): `/completions` with `echo`, `logprobs = 1` and one generated token."""
        body = {
            "model": self._name,
            "prompt": text,
            "max_tokens": 1,
            "temperature": 0.0,
            "echo": True,
            "logprobs": 1,
        }
        r = self._request("POST", f"{self._base}/completions", json=body, what="scoring")
        if r.status_code != 200:
            raise self._error(r, "scoring")
        try:
            choice = r.json()["choices"][0]
            lp = choice["logprobs"]
            tokens = [str(t) for t in lp["tokens"]]
            values = [None if v is None else _logprob(v) for v in lp["token_logprobs"]]
            offsets = lp.get("text_offset")
            tops = [
                {str(k): _logprob(v) for k, v in t.items() if v is not None}
                if isinstance(t, dict)
                else {}
                for t in lp.get("top_logprobs") or []
            ]
        except (RecursionError, ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise ModelError(
                f"the model server at {self._base} returned no prompt log-probabilities"
            ) from None
        echoed = str(choice.get("text") or "")
        if not echoed.startswith(text) or not tokens or len(values) != len(tokens):
            raise ModelError(f"the model server at {self._base} did not echo the prompt")
        if not isinstance(offsets, list) or len(offsets) != len(tokens):
            offsets, at = [], 0
            for t in tokens:
                offsets.append(at)
                at += len(t)
        if len(tops) != len(tokens):
            tops = [{} for _ in tokens]
        return tokens, values, [int(o) for o in offsets], tops

    # -- HTTP ----------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        idempotent: bool = False,
        what: str,
    ) -> httpx.Response:
        attempt = tried = 0
        while True:
            try:
                with self._http.use() as http:
                    r = self._read(
                        http.send(http.build_request(method, url, json=json), stream=True)
                    )
            except httpx.TransportError as e:
                if idempotent or isinstance(e, NOT_SENT):
                    other = self._fail_over(url, tried, _transport_reason(e))
                    if other is not None:
                        url, tried = other, tried + 1
                        continue
                if attempt < self._retries and (idempotent or isinstance(e, NOT_SENT)):
                    attempt = self._wait(attempt, what, _transport_reason(e))
                    continue
                raise self._transport_error(e, what, attempt) from None
            if r.status_code in RETRY_STATUS:
                other = self._fail_over(url, tried, f"HTTP {r.status_code}")
                if other is not None:
                    url, tried = other, tried + 1
                    continue
                if attempt < self._retries:
                    attempt = self._wait(attempt, what, f"HTTP {r.status_code}")
                    continue
            return r

    def _open_stream(
        self, http: httpx.Client, url: str, body: dict[str, Any], what: str
    ) -> httpx.Response:
        attempt = tried = 0
        while True:
            request = http.build_request("POST", url, json=body)
            try:
                r = http.send(request, stream=True)
            except httpx.TransportError as e:
                if isinstance(e, NOT_SENT):
                    other = self._fail_over(url, tried, _transport_reason(e))
                    if other is not None:
                        url, tried = other, tried + 1
                        continue
                if attempt < self._retries and isinstance(e, NOT_SENT):
                    attempt = self._wait(attempt, what, _transport_reason(e))
                    continue
                raise self._transport_error(e, what, attempt) from None
            if r.status_code == 200:
                return r
            try:
                if r.status_code in RETRY_STATUS:
                    other = self._fail_over(url, tried, f"HTTP {r.status_code}")
                    if other is not None:
                        url, tried = other, tried + 1
                        continue
                    if attempt < self._retries:
                        attempt = self._wait(attempt, what, f"HTTP {r.status_code}")
                        continue
                raise self._error(self._read(r), what)
            finally:
                r.close()

    def _read(self, r: httpx.Response) -> httpx.Response:
        """`r`, a streamed response, read whole (and closed): ModelError past
        MAX_BODY_BYTES."""
        body = bytearray()
        try:
            for chunk in r.iter_bytes():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise ModelError(
                        f"the model server at {self._base} sent an answer over "
                        f"{MAX_BODY_BYTES} bytes"
                    )
        except httpx.DecodingError:
            raise ModelError(
                f"the model server at {self._base} sent a body its Content-Encoding cannot decode"
            ) from None
        finally:
            r.close()
        # The body is decoded already: the copy must not say how it was encoded.
        headers = {
            k: v for k, v in r.headers.items() if k not in ("content-encoding", "content-length")
        }
        return httpx.Response(
            r.status_code, headers=headers, content=bytes(body), request=r.request
        )

    def _wait(self, attempt: int, what: str, reason: str) -> int:
        delay = min(self._backoff_s * 2**attempt, MAX_BACKOFF_S)
        log.warning(
            "model server %s, %s: %s; retry %d of %d in %.1f s",
            self._base,
            what,
            reason,
            attempt + 1,
            self._retries,
            delay,
        )
        time.sleep(delay)
        return attempt + 1

    def _transport_error(self, e: httpx.TransportError, what: str, retried: int) -> ModelError:
        after = f" (after {retried} retries)" if retried else ""
        if isinstance(e, httpx.TimeoutException) and not isinstance(e, NOT_SENT):
            return ModelError(
                f"the model server at {self._base} did not answer the {what} request within "
                f"{self._timeout_s:g} s (model.timeout_s){after}"
            )
        return ModelError(
            f"cannot reach the model server at {self._base} for the {what} request: "
            f"{_transport_reason(e)}{after}"
        )

    def _error(self, r: httpx.Response, what: str) -> ModelError:
        try:
            reason = _reason(r.json())
        except (ValueError, RecursionError):
            reason = _clip(r.text) or r.reason_phrase
        status = f"HTTP {r.status_code}: {reason}"
        if r.status_code in (401, 403):
            return ModelError(
                f"the model server at {self._base} refused the API key ({status}); "
                "check model.api_key_file"
            )
        if r.status_code in (400, 413, 422) and CONTEXT_ERROR.search(reason):
            return PromptTooLongError(
                f"the prompt does not fit the context of {self._name} at {self._base}: {reason}"
            )
        return ModelError(
            f"the model server at {self._base} answered the {what} request with {status}"
        )


def _follows_probe_schema(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and set(value) == {"answer"}
        and value["answer"] in ("Paris", "Rome")
    )


def _refused_field(e: ModelError, field: str) -> bool:
    text = str(e)
    return field in text and ("HTTP 400" in text or "HTTP 422" in text)


def _response_format(rf: ResponseFormat, style: GrammarStyle) -> dict[str, Any]:
    if rf.kind == "json_object" or not rf.schema:
        return {"type": "json_object"}
    try:
        schema = json.loads(rf.schema)
    except (ValueError, RecursionError):
        raise RequestRejected("the response format's JSON Schema is not valid JSON") from None
    if isinstance(schema, dict):
        # Servers convert it as llama-cpp-python does, writing every repetition out.
        check_schema(schema)
    if style == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
    return {"type": "json_object", "schema": schema}


def _drain(gen: Generator[Chunk, None, Completion]) -> Completion:
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            done: Completion = stop.value
            return done


def _sse_events(
    response: httpx.Response, base: str, timeout_s: float, done: list[bool], max_lines: int
) -> Iterator[dict[str, Any]]:
    """The JSON events of a server-sent event stream, up to `[DONE]` (then `done` gets
    True appended); ModelError after `max_lines` lines that are not blank, or at a line
    over MAX_LINE_BYTES."""
    lines = 0
    try:
        for line in _lines(response, base):
            if not line:
                continue
            lines += 1
            if lines > max_lines:
                raise ModelError(
                    f"the model server at {base} went on streaming past {max_lines} lines "
                    "without ending the answer"
                )
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done.append(True)
                return
            if not data:
                continue
            try:
                event = json.loads(data)
            except (ValueError, RecursionError):
                raise ModelError(f"the model server at {base} sent a malformed event") from None
            if isinstance(event, dict):
                yield event
    except httpx.TimeoutException:
        raise ModelError(
            f"the model server at {base} sent nothing for {timeout_s:g} s (model.timeout_s)"
        ) from None
    except httpx.TransportError as e:
        raise ModelError(
            f"the model server at {base} broke off the answer: {_transport_reason(e)}"
        ) from None
    except httpx.DecodingError:
        raise ModelError(
            f"the model server at {base} sent a body its Content-Encoding cannot decode"
        ) from None


def _lines(response: httpx.Response, base: str) -> Iterator[str]:
    """The lines of a streamed body (ended by LF or CRLF), none over MAX_LINE_BYTES:
    httpx's own `iter_lines` holds a line of any length in memory."""
    pending = bytearray()
    for chunk in response.iter_bytes():
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            pending += chunk[start:end]
            if len(pending) > MAX_LINE_BYTES:
                break
            yield pending.decode("utf-8", "replace").removesuffix("\r")
            pending.clear()
            start = end + 1
        else:
            pending += chunk[start:]
        if len(pending) > MAX_LINE_BYTES:
            raise ModelError(f"the model server at {base} sent a line over {MAX_LINE_BYTES} bytes")
    if pending:
        yield pending.decode("utf-8", "replace").removesuffix("\r")


def _event_parts(
    event: dict[str, Any], chat: bool, top_n: int, base: str
) -> tuple[dict[str, Any] | None, list[tuple[str, list[TokenLogprob], Any]]]:
    """An event's usage (if any) and its first choice's text, logprobs and finish reason;
    ModelError if the event is not in OpenAI's shape."""
    try:
        usage = event.get("usage")
        if usage is not None and not isinstance(usage, dict):
            raise TypeError("usage")
        parts = []
        for choice in event.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            parts.append(
                (
                    _choice_text(choice, chat),
                    _choice_logprobs(choice, chat, top_n),
                    choice.get("finish_reason"),
                )
            )
    except (AttributeError, TypeError, ValueError, KeyError):
        raise ModelError(
            f"the model server at {base} sent an event that is not in OpenAI's shape"
        ) from None
    return usage or None, parts


def _choice_text(choice: dict[str, Any], chat: bool) -> str:
    if chat:
        delta = choice.get("delta") or {}
        return str(delta.get("content") or "")
    return str(choice.get("text") or "")


def _choice_logprobs(choice: dict[str, Any], chat: bool, top_n: int) -> list[TokenLogprob]:
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return []
    out: list[TokenLogprob] = []
    if chat:
        for entry in lp.get("content") or []:
            if not isinstance(entry, dict) or entry.get("logprob") is None:
                continue
            top = [
                (str(t.get("token", "")), _logprob(t["logprob"]))
                for t in entry.get("top_logprobs") or []
                if isinstance(t, dict) and t.get("logprob") is not None
            ]
            out.append(
                TokenLogprob(
                    str(entry.get("token", "")), _logprob(entry["logprob"]), _top(top, top_n)
                )
            )
        return out
    tokens = lp.get("tokens") or []
    values = lp.get("token_logprobs") or []
    tops = lp.get("top_logprobs") or []
    for i, (token, value) in enumerate(zip(tokens, values, strict=False)):
        if value is None:
            continue
        alternatives = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        top = [(str(t), _logprob(v)) for t, v in alternatives.items() if v is not None]
        out.append(TokenLogprob(str(token), _logprob(value), _top(top, top_n)))
    return out


def _logprob(value: Any) -> float:
    """A log-probability as JSON can carry it: -Infinity (a token the server masked)
    becomes OpenAI's -9999.0; NaN or +Infinity is no log-probability (ValueError)."""
    number = float(value)
    if math.isnan(number) or number == math.inf:
        raise ValueError(f"log-probability {number}")
    return MIN_LOGPROB if number == -math.inf else number


def _top(top: list[tuple[str, float]], n: int) -> tuple[tuple[str, float], ...]:
    return tuple(sorted(top, key=lambda t: -t[1])[:n])


def _reason(body: Any, depth: int = 0) -> str:
    """The server's own words from an error body, in any of the shapes servers use."""
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            value = body.get(key)
            if isinstance(value, dict) and depth < 4:
                return _reason(value, depth + 1)
            if isinstance(value, str) and value:
                return _clip(value)
            if isinstance(value, list) and value:
                return _clip(_dumps(value))
    return _clip(_dumps(body)) if body else "no reason given"


def _dumps(value: Any) -> str:
    try:
        return json.dumps(value)
    except RecursionError:  # nested as deep as json.loads allows
        return "(a deeply nested error body)"


def _clip(text: str) -> str:
    """A server's words as one printable line (control characters and escapes shown
    escaped, as `logsafe.safe` does), cut to MAX_REASON_CHARS."""
    return safe(" ".join(text.split()), MAX_REASON_CHARS)


def _transport_reason(e: httpx.TransportError) -> str:
    if isinstance(e, httpx.ConnectTimeout):
        return "connection timed out (model.connect_timeout_s)"
    cause = e.__cause__ or e.__context__
    text = str(e) or type(e).__name__
    if isinstance(cause, OSError) and cause.strerror:
        text = cause.strerror
    elif "Connection refused" in text or "Errno 111" in text:
        text = "connection refused"
    return _clip(text)
