"""The remote backend called from several threads at once (`model.parallel`): how many
it declares, and the one piece of shared state requests change, the httpx client renewed
after a server dropped a stream, which must not break another thread's stream. Requests
really in flight together at a server are shown against a node's /v1 in
tests/node/test_remote_concurrency.py."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from consortium.errors import ModelError
from consortium.llm.backends import backend_factory
from consortium.llm.base import ChatMessage, GenerationParams
from consortium.llm.openai_backend import DEFAULT_PARALLEL, OpenAIBackend
from consortium.llm.settings import ModelSection
from tests.helpers import drain
from tests.llm.scripted_server import Reply, Script, models, scripted_server

CHAT = "/v1/chat/completions"


def _event(content: str | None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    event = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def _script() -> Script:
    script = Script()
    script.replies = {"/v1/models": [models("tiny")]}
    return script


def test_the_backend_declares_its_parallel_requests(tmp_path: Path) -> None:
    with scripted_server(_script()) as url:
        section: dict[str, Any] = {"backend": "openai", "name": "tiny", "base_url": url}
        default = backend_factory(ModelSection(**section), tmp_path)()
        four = backend_factory(ModelSection(**section, parallel=4), tmp_path)()
        default.close()
        four.close()
        with pytest.raises(ValueError, match="parallel must be at least 1"):
            OpenAIBackend(url, name="tiny", parallel=0)
    assert default.info.concurrency == DEFAULT_PARALLEL == 8
    assert four.info.concurrency == 4
    echo = backend_factory(ModelSection(backend="echo", name="echo"), tmp_path)()
    assert echo.info.concurrency == 1  # the network tests' timing


def test_a_dropped_stream_renews_the_client_without_breaking_another_stream() -> None:
    """One stream is open on the shared client when another request's stream is dropped
    by the server: the client is renewed for new requests, and the open stream ends
    normally on the old one, which is closed after it."""
    release = threading.Event()

    def held(out: Any) -> None:
        out.write(_event("a"))
        out.flush()
        release.wait(30)
        out.write(_event(" b"))
        out.write(_event(None, "stop"))
        out.write(b"data: [DONE]\n\n")
        out.flush()

    script = _script()
    with scripted_server(script) as url:
        backend = OpenAIBackend(url, name="tiny", retries=0, parallel=2)
        first_client = backend._http._current
        script.replies[CHAT] = [
            Reply(write=held),
            Reply(events=[], done=False),
            Reply(events=[{"choices": [{"index": 0, "delta": {"content": "c"}}]}]),
        ]
        question = [ChatMessage("user", "Hi")]
        open_stream = backend.stream_chat(question, GenerationParams(), threading.Event())
        assert next(open_stream).text == "a"
        with pytest.raises(ModelError, match="without finishing it"):
            drain(backend.stream_chat(question, GenerationParams(), threading.Event()))
        renewed = backend._http._current
        assert renewed is not first_client and not first_client.is_closed
        release.set()
        chunks, done = drain(open_stream)
        assert [c.text for c in chunks] == [" b"] and done.text == "a b"
        assert done.finish_reason == "stop"
        assert first_client.is_closed  # its last request has ended
        _, after = drain(backend.stream_chat(question, GenerationParams(), threading.Event()))
        assert after.text == "c"
        backend.close()
    assert renewed.is_closed
