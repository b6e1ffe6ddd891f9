"""The remote backend (`backend = "openai"`) against a real OpenAI-compatible server:
llama-cpp-python's `llama_cpp.server` on the bundled SmolLM2-135M, one per module, with
an API key and `logits_all` (prompt log-probabilities). Failures a server or a gateway
produces on demand (503, 500, silence) come from a small scripted HTTP server; a
refused connection from a closed port."""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consortium.errors import (
    ConfigError,
    InvalidResponseFormat,
    ModelError,
    PromptTooLongError,
    UnsupportedByModel,
)
from consortium.llm import openai_backend
from consortium.llm.backends import backend_factory, read_api_key
from consortium.llm.base import ChatMessage, Chunk, Completion, GenerationParams, ResponseFormat
from consortium.llm.openai_backend import OpenAIBackend
from consortium.llm.prompts import completion_prompt
from consortium.llm.settings import DEFAULT_SYSTEM_PROMPT, ModelSection
from tests.helpers import benchmark_module, drain
from tests.llm.scripted_server import Reply, Script, models, scripted_server

KEY = "sk-test-remote-backend-0123456789"
NAME = "smollm2-135m"


llama_server_module = benchmark_module("llama_server")


@pytest.fixture(scope="module")
def server(smollm_path: Path) -> Iterator[str]:
    with llama_server_module.llama_server(
        smollm_path, n_ctx=1024, api_key=KEY, logits_all=True, model_alias=NAME
    ) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def remote(server: str) -> Iterator[OpenAIBackend]:
    backend = OpenAIBackend(server, name=NAME, context_size=1024, api_key=KEY)
    yield backend
    backend.close()


def ask(question: str) -> list[ChatMessage]:
    return [ChatMessage("system", DEFAULT_SYSTEM_PROMPT), ChatMessage("user", question)]


def test_start_up_probes_what_the_server_supports(remote: OpenAIBackend, server: str) -> None:
    info = remote.info
    assert info.backend == "openai" and info.name == NAME and info.chat
    assert info.context_size == 1024 and info.path == server
    # logits_all gives prompt log-probabilities, but llama-cpp-python misaligns them for
    # SmolLM2 (no BOS token): scoring options with them is refused, not done wrong.
    assert info.capabilities == {"token_logprobs", "grammar"}
    assert "misaligned" in remote.missing["option_scoring"]
    with pytest.raises(UnsupportedByModel, match="prompt log-probabilities"):
        remote.score("The capital of France is", [" Paris", " Rome"])


def test_tokens_are_counted_by_the_server(remote: OpenAIBackend, smollm_path: Path) -> None:
    from consortium.llm.llama_cpp_backend import LlamaCppBackend

    local = LlamaCppBackend(smollm_path, name=NAME, context_size=256, threads=2)
    try:
        for text in ("Hello world", "Question: what is 2 + 2?\nAnswer: 4"):
            assert remote.count_tokens(text) == local.count_tokens(text)
    finally:
        local.close()


def test_chat_answers_with_usage_and_timings(remote: OpenAIBackend) -> None:
    chunks, done = drain(
        remote.stream_chat(
            ask("What is the capital of France?"),
            GenerationParams(max_tokens=16),
            threading.Event(),
        )
    )
    assert "Paris" in done.text
    assert done.text == "".join(c.text for c in chunks)
    assert done.finish_reason in ("stop", "length")
    assert 0 < done.usage.output_tokens <= 16
    assert done.usage.input_tokens > 5
    assert done.timings.total_s >= done.timings.prompt_s > 0


def test_chat_streams_token_logprobs(remote: OpenAIBackend) -> None:
    params = GenerationParams(max_tokens=8, logprobs=True, top_logprobs=3)
    chunks, done = drain(
        remote.stream_chat(ask("What is the capital of France?"), params, threading.Event())
    )
    assert len(chunks) > 1
    assert 1 < done.usage.output_tokens <= 8
    assert len(done.logprobs) == done.usage.output_tokens
    assert all(lp.logprob <= 0.0 for lp in done.logprobs)
    assert [lp for c in chunks for lp in c.logprobs] == done.logprobs
    # Greedy: the chosen token heads its alternatives.
    first = done.logprobs[0]
    assert 1 <= len(first.top) <= 3
    assert first.top[0][1] == pytest.approx(first.logprob, abs=1e-4)


def test_completion_prompt_stops_at_the_stop_string(remote: OpenAIBackend) -> None:
    params = GenerationParams(max_tokens=24, stop=("\n",))
    _, done = drain(
        remote.stream_complete(
            completion_prompt("What is the capital of France?"), params, threading.Event()
        )
    )
    assert "\n" not in done.text
    assert done.usage.output_tokens > 0


def test_cancel_between_tokens_closes_the_stream(remote: OpenAIBackend) -> None:
    cancel = threading.Event()
    gen = remote.stream_chat(
        ask("Write a long story about a dragon."), GenerationParams(max_tokens=400), cancel
    )
    seen = [next(gen) for _ in range(3)]
    cancel.set()
    rest, done = drain(gen)
    assert done.finish_reason == "cancelled"
    assert len(rest) <= 1 and done.usage.output_tokens <= 4
    assert done.text == "".join(c.text for c in seen + rest)
    # The server is free again at once (the stream was closed, not read to the end).
    _, nxt = drain(remote.stream_chat(ask("Say hi."), GenerationParams(max_tokens=4), cancel))
    assert nxt.finish_reason == "cancelled"  # the same event: stopped after one token
    _, ok = drain(
        remote.stream_chat(ask("Say hi."), GenerationParams(max_tokens=4), threading.Event())
    )
    assert ok.usage.output_tokens > 0


def test_a_prompt_beyond_the_context_is_too_long(remote: OpenAIBackend) -> None:
    with pytest.raises(PromptTooLongError, match="context"):
        drain(
            remote.stream_chat(
                ask("word " * 1500), GenerationParams(max_tokens=4), threading.Event()
            )
        )


def test_json_schema_constrains_the_answer(remote: OpenAIBackend) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
        "required": ["answer"],
    }
    params = GenerationParams(
        max_tokens=12, response_format=ResponseFormat("json_schema", json.dumps(schema))
    )
    _, done = drain(remote.stream_chat(ask("Is Paris in France?"), params, threading.Event()))
    assert json.loads(done.text)["answer"] in ("yes", "no")


def test_a_wrong_api_key_fails_start_up(server: str) -> None:
    with pytest.raises(ModelError, match=r"refused the API key \(HTTP 401") as e:
        OpenAIBackend(server, name=NAME, api_key="sk-wrong", retries=0)
    assert "sk-wrong" not in str(e.value)
    with pytest.raises(ModelError, match="refused the API key"):
        OpenAIBackend(server, name=NAME, retries=0)


def test_a_model_the_server_does_not_serve_fails_start_up(server: str) -> None:
    with pytest.raises(ModelError, match=r"does not serve 'gpt-9'.*smollm2-135m"):
        OpenAIBackend(server, name="gpt-9", api_key=KEY)


def test_the_factory_reads_the_key_file(server: str, tmp_path: Path) -> None:
    key_file = tmp_path / "model.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    section = ModelSection(
        backend="openai", name=NAME, base_url=server, api_key_file="model.key", context_size=1024
    )
    backend = backend_factory(section, tmp_path)()
    try:
        assert backend.info.backend == "openai"
    finally:
        backend.close()


# -- failures: a closed port and a scripted server ------------------------------------


def test_connection_refused_is_retried_then_fails(caplog: pytest.LogCaptureFixture) -> None:
    port = llama_server_module.free_port()  # nothing listens on it
    caplog.set_level(logging.WARNING, logger="consortium.llm.openai_backend")
    with pytest.raises(ModelError, match=r"cannot reach .*connection refused.*after 2 retries"):
        OpenAIBackend(f"http://127.0.0.1:{port}/v1", name=NAME, retries=2, backoff_s=0.01)
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2


def scripted(**replies: list[Reply]) -> Script:
    script = Script()
    script.replies = {"/v1/models": [models("tiny")]}
    script.replies.update({"/v1/" + k.replace("_", "/"): v for k, v in replies.items()})
    return script


def tiny(base_url: str, **kwargs: Any) -> OpenAIBackend:
    return OpenAIBackend(base_url, name="tiny", backoff_s=0.01, **kwargs)


def test_the_model_list_is_retried_after_503() -> None:
    script = scripted()
    script.replies["/v1/models"] = [Reply(503, {"error": "loading"}), models("tiny")]
    with scripted_server(script) as url:
        backend = tiny(url, retries=2)
        backend.close()
    assert script.count("GET", "/v1/models") == 2
    # The server answered no probe (404): nothing is claimed.
    assert backend.info.capabilities == frozenset()


def test_a_generation_is_retried_only_before_the_server_started_on_it() -> None:
    script = scripted()
    with scripted_server(script) as url:
        backend = tiny(url, retries=2, timeout_s=0.5)
        chat = "/v1/chat/completions"
        before = script.count("POST", chat)  # the start-up probe
        # 503: a refusal before any work; retried, then the server's reason.
        script.replies[chat] = [Reply(503, {"error": {"message": "server overloaded"}})]
        with pytest.raises(ModelError, match=r"HTTP 503: server overloaded"):
            drain(backend.stream_chat(ask("Hi"), GenerationParams(), threading.Event()))
        assert script.count("POST", chat) - before == 3
        # 500: the server failed on it; not retried.
        before = script.count("POST", chat)
        script.replies[chat] = [Reply(500, {"error": {"message": "CUDA out of memory"}})]
        with pytest.raises(ModelError, match=r"HTTP 500: CUDA out of memory"):
            drain(backend.stream_chat(ask("Hi"), GenerationParams(), threading.Event()))
        assert script.count("POST", chat) - before == 1
        # Silence after the request was sent: the server may be generating; not retried.
        before = script.count("POST", chat)
        script.replies[chat] = [Reply(200, {}, delay_s=2.0)]
        with pytest.raises(
            ModelError, match=r"did not answer the chat completion request within 0.5 s"
        ):
            drain(backend.stream_chat(ask("Hi"), GenerationParams(), threading.Event()))
        assert script.count("POST", chat) - before == 1
        # A stream that started is never retried, whatever ends it.
        before = script.count("POST", chat)
        script.replies[chat] = [
            Reply(
                events=[
                    {"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
                    {"error": {"message": "decode failed"}},
                ]
            )
        ]
        gen = backend.stream_chat(ask("Hi"), GenerationParams(), threading.Event())
        assert next(gen).text == "Hel"
        with pytest.raises(ModelError, match="decode failed"):
            drain(gen)
        assert script.count("POST", chat) - before == 1
        # A stream the server dropped before its end is an error, not a short answer.
        script.replies[chat] = [Reply(events=[], done=False)]
        with pytest.raises(ModelError, match="without finishing it before its first token"):
            drain(backend.stream_chat(ask("Hi"), GenerationParams(), threading.Event()))
        # JSON-constrained generation needs the grammar this server did not show.
        params = GenerationParams(response_format=ResponseFormat("json_object"))
        with pytest.raises(UnsupportedByModel, match="grammar"):
            drain(backend.stream_chat(ask("Hi"), params, threading.Event()))
        # Scoring needs prompt log-probabilities, which this server did not show.
        with pytest.raises(UnsupportedByModel, match="prompt log-probabilities"):
            backend.score("Q", [" A"])
        backend.close()


def test_calls_move_to_a_fallback_server_when_the_current_one_cannot_take_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """model.fallback_base_urls: a server that refuses connections or answers 503 is left
    for the next at once (no back-off), and the next is used for every call from then on."""
    dead = f"http://127.0.0.1:{llama_server_module.free_port()}/v1"
    chat = "/v1/chat/completions"
    answer = Reply(events=[{"choices": [{"index": 0, "delta": {"content": "hi"}}]}])
    first, second = scripted(), scripted()
    caplog.set_level(logging.WARNING, logger="consortium.llm.openai_backend")
    with scripted_server(first) as one, scripted_server(second) as two:
        backend = tiny(dead, retries=0, fallback_base_urls=[one, two])
        assert "calls go to " + one in caplog.text  # the model list moved on
        first.replies[chat] = [Reply(503, {"error": "draining"})]
        second.replies[chat] = [answer]
        before = (first.count("POST", chat), second.count("POST", chat))
        chunks, _ = drain(backend.stream_chat(ask("Hi"), GenerationParams(), threading.Event()))
        assert "".join(c.text for c in chunks) == "hi"
        assert first.count("POST", chat) - before[0] == 1  # refused there, once
        assert second.count("POST", chat) - before[1] == 1
        assert "retry" not in caplog.text  # no back-off: another server was there
        # The server that answered takes the next call first.
        second.replies[chat] = [answer]
        drain(backend.stream_chat(ask("Hi"), GenerationParams(), threading.Event()))
        assert first.count("POST", chat) - before[0] == 1
        # Every server refusing: the last one's error, after each was tried once.
        first.replies[chat] = [Reply(503, {"error": "draining"})]
        second.replies[chat] = [Reply(503, {"error": "draining"})]
        with pytest.raises(ModelError, match="HTTP 503"):
            drain(backend.stream_chat(ask("Hi"), GenerationParams(), threading.Event()))
        backend.close()


def test_a_scripted_stream_gives_usage_logprobs_and_finish_reason() -> None:
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": "Hi"},
                    "logprobs": {
                        "content": [
                            {"token": "H", "logprob": -0.5, "top_logprobs": []},
                            {"token": "i", "logprob": -0.25, "top_logprobs": []},
                        ]
                    },
                }
            ]
        },
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
        {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2}},
    ]
    script = scripted(chat_completions=[Reply(events=events)])
    with scripted_server(script) as url:
        backend = tiny(url)
        assert backend.info.capabilities == {"token_logprobs"}
        params = GenerationParams(max_tokens=2, logprobs=True)
        chunks, done = drain(backend.stream_chat(ask("Hi"), params, threading.Event()))
        backend.close()
    assert [c.text for c in chunks] == ["Hi"]
    assert [lp.logprob for lp in chunks[0].logprobs] == [-0.5, -0.25]
    assert done.finish_reason == "length"
    assert (done.usage.input_tokens, done.usage.output_tokens) == (11, 2)


# -- configuration ---------------------------------------------------------------------


def test_the_api_key_file_must_be_private(tmp_path: Path) -> None:
    key_file = tmp_path / "model.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by others \(mode 0644\); run: chmod 600") as e:
        read_api_key(key_file)
    assert KEY not in str(e.value) and "model.api_key_file" in str(e.value)
    key_file.chmod(0o600)
    assert read_api_key(key_file) == KEY
    with pytest.raises(ConfigError, match="not found"):
        read_api_key(tmp_path / "missing.key")
    key_file.write_text("one\ntwo\n")
    with pytest.raises(ConfigError, match="on one line"):
        read_api_key(key_file)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"backend": "openai"}, "needs model.base_url"),
        ({"backend": "openai", "base_url": "ftp://host/v1"}, "http:// or https://"),
        ({"backend": "openai", "base_url": "127.0.0.1:8080/v1"}, "http:// or https://"),
        ({"backend": "openai", "base_url": "http://h:99999/v1"}, "not a valid URL"),
        ({"backend": "openai", "base_url": "http://u:secret@h/v1"}, "must not hold credentials"),
        ({"backend": "openai", "base_url": "http://h/v1", "path": "m.gguf"}, "do not apply"),
        ({"backend": "openai", "base_url": "http://h/v1", "threads": 4}, "model.threads"),
        ({"backend": "llama_cpp", "base_url": "http://h/v1"}, 'only apply to backend = "openai"'),
        ({"backend": "echo", "retries": 1}, "model.retries only apply"),
        (
            {"backend": "openai", "base_url": "http://h/v1", "fallback_base_urls": ["h2/v1"]},
            "model.fallback_base_urls 'h2/v1' must be an http",
        ),
        (
            {
                "backend": "openai",
                "base_url": "http://h/v1",
                "fallback_base_urls": ["http://u:secret@h2/v1"],
            },
            "model.fallback_base_urls must not hold credentials",
        ),
        ({"backend": "echo", "fallback_base_urls": ["http://h/v1"]}, "fallback_base_urls only"),
    ],
)
def test_config_validation(tmp_path: Path, fields: dict[str, Any], error: str) -> None:
    from tests.conftest import make_config

    with pytest.raises(ConfigError, match=error) as e:
        make_config(tmp_path, model=fields)
    assert "secret" not in str(e.value)


def test_config_defaults(tmp_path: Path) -> None:
    from tests.conftest import make_config

    m = make_config(tmp_path, model={"backend": "openai", "base_url": "https://h/v1"}).model
    assert (m.timeout_s, m.connect_timeout_s, m.retries, m.api_key_file) == (120.0, 5.0, 2, "")


# -- a hostile or broken server --------------------------------------------------------

CHAT = "/v1/chat/completions"


def _delta(content: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": delta}]}).encode() + b"\n\n"


def _forever(data: bytes) -> Any:
    """A body writer that sends `data` again and again until the client goes away."""

    def write(out: Any) -> None:
        for _ in range(1_000_000):
            out.write(data)
            out.flush()

    return write


def _chat(backend: OpenAIBackend, **params: Any) -> tuple[list[Chunk], Completion]:
    return drain(backend.stream_chat(ask("Hi"), GenerationParams(**params), threading.Event()))


def test_a_server_that_ignores_max_tokens_is_cut_off_there() -> None:
    # An endless stream of tokens: the answer ends at max_tokens, as asked.
    script = scripted(chat_completions=[Reply(write=_forever(_delta("ab")))])
    with scripted_server(script) as url:
        backend = tiny(url, retries=0)
        chunks, done = _chat(backend, max_tokens=5)
        again, _ = _chat(backend, max_tokens=3)  # the connection pool still serves
        backend.close()
    assert [c.text for c in chunks] == ["ab"] * 5
    assert (done.text, done.finish_reason, done.usage.output_tokens) == ("ababababab", "length", 5)
    assert len(again) == 3


@pytest.mark.parametrize(
    "data",
    [_delta(), _delta(""), b": keep-alive\n\n", b"event: ping\n"],
    ids=["empty-deltas", "empty-content", "comments", "other-fields"],
)
def test_a_stream_that_never_ends_without_text_fails(data: bytes) -> None:
    script = scripted(chat_completions=[Reply(write=_forever(data))])
    with scripted_server(script) as url:
        backend = tiny(url, retries=0)
        with pytest.raises(ModelError, match=r"went on streaming past 72 lines"):
            _chat(backend, max_tokens=4)
        backend.close()


def test_a_gigantic_line_or_text_fails_without_holding_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(openai_backend, "MAX_LINE_BYTES", 4096)
    script = scripted(chat_completions=[Reply(write=_forever(b"data: " + b"x" * 1000))])
    with scripted_server(script) as url:
        backend = tiny(url, retries=0)
        with pytest.raises(ModelError, match=r"sent a line over 4096 bytes"):
            _chat(backend)
        # Lines under the limit, but more text than max_tokens tokens can hold.
        script.replies[CHAT] = [Reply(write=_forever(_delta("y" * 2000)))]
        with pytest.raises(ModelError, match=r"sent more text than 4 tokens hold"):
            _chat(backend, max_tokens=4)
        backend.close()


@pytest.mark.parametrize(
    "event",
    [
        {"choices": {"0": {"delta": {"content": "a"}}}},
        {"choices": ["a"]},
        {"choices": [{"index": 0, "delta": "a"}]},
        {"choices": [], "usage": [1, 2]},
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": "a"},
                    "logprobs": {"content": [{"token": "a", "logprob": "high"}]},
                }
            ]
        },
    ],
)
def test_an_event_not_in_openais_shape_fails_the_generation(event: dict[str, Any]) -> None:
    script = scripted(chat_completions=[Reply(events=[event])])
    with scripted_server(script) as url:
        backend = tiny(url, retries=0)
        with pytest.raises(ModelError, match=r"sent an event that is not in OpenAI's shape"):
            _chat(backend)
        backend.close()


def test_a_redirect_is_not_followed_so_the_key_stays_with_the_server() -> None:
    elsewhere = Script()
    with scripted_server(elsewhere) as other:
        script = scripted()
        with scripted_server(script) as url:
            backend = tiny(url, retries=0, api_key="sk-secret")
            script.replies[CHAT] = [
                Reply(307, {}, headers={"Location": f"{other}/chat/completions"})
            ]
            with pytest.raises(ModelError, match=r"HTTP 307"):
                _chat(backend)
            backend.close()
        # At start-up too: the model list.
        script.replies["/v1/models"] = [Reply(302, {}, headers={"Location": f"{other}/models"})]
        with scripted_server(script) as url, pytest.raises(ModelError, match=r"HTTP 302"):
            tiny(url, retries=0, api_key="sk-secret")
    assert elsewhere.requests == []


def test_the_servers_error_text_is_escaped_and_cut(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="consortium.llm.openai_backend")
    hostile = "\x1b[2J\x1b[31mpwned\r\n2026-01-01 INFO fake log line " + "z" * 100_000
    script = scripted(chat_completions=[Reply(500, {"error": {"message": hostile}})])
    with scripted_server(script) as url:
        backend = tiny(url, retries=0)
        with pytest.raises(ModelError) as failed:
            _chat(backend)
        reason = str(failed.value)
        assert "\x1b" not in reason and "\n" not in reason and "\r" not in reason
        assert "\\u001b[2J" in reason and len(reason) < 600
        # An error body nested as deep as a parser allows, and one that is not JSON.
        for body in (b"[" * 100_000, b"\x1b]0;title\x07 oops"):
            script.replies[CHAT] = [Reply(500, write=lambda out, body=body: out.write(body))]
            with pytest.raises(ModelError, match=r"HTTP 500") as failed:
                _chat(backend)
            assert "\x1b" not in str(failed.value) and len(str(failed.value)) < 600
        backend.close()
    logged = [r.getMessage() for r in caplog.records]
    assert any("pwned" in m for m in logged)  # the start-up probes' failures
    assert not any("\x1b" in m or "\n" in m for m in logged)


def test_an_answer_over_the_body_limit_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openai_backend, "MAX_BODY_BYTES", 1000)
    script = scripted()
    script.replies["/v1/models"] = [models("tiny", *(f"m{i}" * 50 for i in range(20)))]
    with scripted_server(script) as url, pytest.raises(ModelError, match="over 1000 bytes"):
        tiny(url, retries=0)


def test_a_schema_asking_for_huge_repetitions_is_not_sent() -> None:
    answer = {"choices": [{"index": 0, "delta": {"content": '{"answer": "Paris"}'}}]}
    script = scripted(chat_completions=[Reply(events=[answer])])
    with scripted_server(script) as url:
        backend = tiny(url, retries=0)
        assert "grammar" in backend.info.capabilities
        before = script.count("POST", CHAT)
        schema = {"type": "array", "items": {"type": "integer"}, "maxItems": 10**9}
        rf = ResponseFormat("json_schema", json.dumps(schema))
        with pytest.raises(InvalidResponseFormat, match="too many repetitions"):
            _chat(backend, response_format=rf)
        assert script.count("POST", CHAT) == before
        backend.close()


def test_infinite_log_probabilities_become_finite() -> None:
    masked = {"token": "x", "logprob": -math.inf}
    event = {
        "choices": [
            {
                "index": 0,
                "delta": {"content": "a"},
                "logprobs": {
                    "content": [{"token": "a", "logprob": -0.5, "top_logprobs": [masked]}]
                },
            }
        ]
    }
    script = scripted(chat_completions=[Reply(events=[event])])
    with scripted_server(script) as url:
        backend = tiny(url, retries=0)
        chunks, _ = _chat(backend, logprobs=True, top_logprobs=1)
        assert chunks[0].logprob is not None and chunks[0].logprob.top == (("x", -9999.0),)
        event["choices"][0]["logprobs"]["content"][0]["logprob"] = math.nan
        script.replies[CHAT] = [Reply(events=[event])]
        with pytest.raises(ModelError, match="not in OpenAI's shape"):
            _chat(backend, logprobs=True, top_logprobs=1)
        backend.close()
