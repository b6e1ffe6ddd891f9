"""The OpenAI-compatible endpoint through the official `openai` client and raw HTTP:
chat and text completions (whole and streamed), the models list, typed errors, the
request guard's refusals in OpenAI's shape, and each request's A2A task, seen by its
owner only (echo model: these tests are about the API, not the model)."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import openai
import pytest

from tests.node.openai.conftest import NodeThread


@pytest.fixture(scope="module")
def key(api: NodeThread) -> str:
    return api.new_key("app")


def sse_events(text: str) -> list[Any]:
    """The `data:` events of a stream, `[DONE]` kept as the string."""
    out: list[Any] = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


# -- chat ----------------------------------------------------------------------------


def test_chat_completion(api: NodeThread, key: str) -> None:
    client = api.client(key)
    r = client.chat.completions.create(
        model="echo",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "hello there world"},
        ],
    )
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion"
    assert r.model == "echo"
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "hello there world"
    assert choice.finish_reason == "stop" and choice.logprobs is None
    assert r.usage is not None and r.usage.completion_tokens == 3
    # The whole conversation reached the model (echo counts its words as the prompt).
    assert r.usage.prompt_tokens == 9
    assert r.usage.total_tokens == r.usage.prompt_tokens + 3
    extra = r.model_extra or {}
    assert extra["consortium"]["org"] == "acme"
    assert extra["consortium"]["model"] == "echo"
    assert r.id == "chatcmpl-" + extra["consortium"]["task_id"]


def test_chat_parameters(api: NodeThread, key: str) -> None:
    client = api.client(key)
    r = client.chat.completions.create(
        model="echo",
        messages=[
            {"role": "developer", "content": "a system turn by its newer name"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "one two "},
                    {"type": "text", "text": "three four"},
                ],
            },
        ],
        max_completion_tokens=2,
        temperature=0.5,
        top_p=0.9,
        seed=7,
        stop=["zzz"],
        user="end-user-1",
        n=1,
        response_format={"type": "text"},
    )
    assert r.choices[0].message.content == "one two"
    assert r.choices[0].finish_reason == "length"
    r = client.chat.completions.create(
        model="consortium/auto",
        messages=[{"role": "user", "content": "routed by the node"}],
        max_tokens=50,
    )
    assert r.choices[0].message.content == "routed by the node"


def test_chat_logprobs(api: NodeThread, key: str) -> None:
    r = api.client(key).chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "alpha beta"}],
        logprobs=True,
        top_logprobs=2,
    )
    lp = r.choices[0].logprobs
    assert lp is not None and lp.content is not None
    assert [t.token for t in lp.content] == ["alpha", " beta"]
    assert lp.content[1].bytes == list(b" beta") and lp.content[0].logprob == 0.0
    assert lp.content[0].top_logprobs == []


def test_chat_streaming_with_the_client(api: NodeThread, key: str) -> None:
    stream = api.client(key).chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "streamed words come back"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "streamed words come back"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


def test_stream_invariants(api: NodeThread, key: str) -> None:
    body = {
        "model": "echo",
        "messages": [{"role": "user", "content": "one two three four five"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "logprobs": True,
    }
    with httpx.stream(
        "POST",
        f"{api.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.read().decode())
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    with_choices = [c for c in chunks if c["choices"]]
    finishes = [c["choices"][0]["finish_reason"] for c in with_choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    last = with_choices[-1]
    assert last["consortium"]["model"] == "echo"
    assert last["id"] == "chatcmpl-" + last["consortium"]["task_id"]
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 5
    assert all(c["usage"] is None for c in with_choices)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in with_choices)
    assert text == "one two three four five"
    tokens = [
        t["token"]
        for c in with_choices
        for t in (c["choices"][0]["logprobs"] or {}).get("content", [])
    ]
    assert "".join(tokens) == text


# -- text completions ----------------------------------------------------------------


def test_text_completion(api: NodeThread, key: str) -> None:
    client = api.client(key)
    r = client.completions.create(model="echo", prompt="Once upon a time", max_tokens=3, logprobs=1)
    assert r.id.startswith("cmpl-") and r.object == "text_completion"
    # Raw prompt mode: the prompt reaches the model as it is (no template, no few-shot).
    assert r.choices[0].text == "Once upon a"
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.prompt_tokens == 4
    assert r.choices[0].logprobs is not None
    assert r.choices[0].logprobs.tokens == ["Once", " upon", " a"]
    assert r.choices[0].logprobs.text_offset == [0, 4, 9]
    chunks = list(
        client.completions.create(model="echo", prompt=["raw text streamed"], stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "raw text streamed"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert (chunks[-1].model_extra or {})["consortium"]["task_id"]


def test_text_completion_refusals(api: NodeThread, key: str) -> None:
    client = api.client(key)
    for kw, param in (
        ({"echo": True}, "echo"),
        ({"best_of": 3}, "best_of"),
        ({"n": 2}, "n"),
        ({"logprobs": 9}, "logprobs"),
    ):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="echo", prompt="x", **kw)
        assert e.value.param == param, kw


# -- models --------------------------------------------------------------------------


def test_models(api: NodeThread, key: str) -> None:
    client = api.client(key)
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids[:2] == ["echo", "consortium/auto"]
    assert all(m.object == "model" and m.owned_by == "acme" for m in models.data)
    assert client.models.retrieve("consortium/auto").id == "consortium/auto"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("acme/nothing")


# -- errors --------------------------------------------------------------------------


def test_typed_errors(api: NodeThread, key: str) -> None:
    client = api.client(key)
    user = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError) as auth:
        api.client("csk_000000000000_" + "A" * 43).chat.completions.create(
            model="echo", messages=user
        )  # type: ignore[arg-type]
    assert auth.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-9", messages=user)  # type: ignore[arg-type]
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    with pytest.raises(openai.BadRequestError) as many:
        client.chat.completions.create(model="echo", messages=user, n=2)  # type: ignore[arg-type]
    assert many.value.param == "n" and "n=1" in many.value.message
    with pytest.raises(openai.BadRequestError) as image:
        client.chat.completions.create(
            model="echo",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
                    ],
                }
            ],
        )
    assert image.value.param == "messages[0].content"
    assert "image_url" in image.value.message
    # The echo backend has no grammar: a response format is refused, not ignored.
    for fmt in (
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    ):
        with pytest.raises(openai.BadRequestError) as unsupported:
            client.chat.completions.create(model="echo", messages=user, response_format=fmt)  # type: ignore[arg-type]
        assert "response_format" in unsupported.value.message
        assert unsupported.value.param == "response_format"
        assert unsupported.value.code == "unsupported_parameter"
    # The same refusal on a stream comes before the stream starts: a plain 400.
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="echo",
            messages=user,
            response_format={"type": "json_object"},
            stream=True,  # type: ignore[arg-type]
        )
    # Logprobs only from the node's own model.
    with pytest.raises(openai.BadRequestError) as routed:
        client.chat.completions.create(model="consortium/auto", messages=user, logprobs=True)  # type: ignore[arg-type]
    assert routed.value.param == "logprobs"
    with pytest.raises(openai.BadRequestError) as stops:
        client.chat.completions.create(model="echo", messages=user, stop=list("abcde"))  # type: ignore[arg-type]
    assert stops.value.param == "stop"
    for long_stop in ("x" * 1025, ["ok", "x" * 1025]):
        with pytest.raises(openai.BadRequestError) as stops:
            client.chat.completions.create(model="echo", messages=user, stop=long_stop)  # type: ignore[arg-type]
        assert stops.value.param == "stop" and "1024 characters" in stops.value.message
    with pytest.raises(openai.BadRequestError) as top:
        client.chat.completions.create(
            model="echo",
            messages=user,  # type: ignore[arg-type]
            logprobs=True,
            top_logprobs=21,
        )
    assert top.value.param == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as nothing:
        client.chat.completions.create(
            model="echo", messages=[{"role": "system", "content": "no user"}]
        )
    assert "user" in nothing.value.message
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": ""}])
    assert "no text" in empty.value.message


def test_unknown_fields_are_ignored(api: NodeThread, key: str) -> None:
    r = api.client(key).chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "still answered", "some_future_field": 1}],  # type: ignore[misc]
        extra_body={"frobnicate": True, "logit_bias": {"42": 1}, "presence_penalty": 0.5},
    )
    assert r.choices[0].message.content == "still answered"


def error_of(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


def test_malformed_bodies_get_openai_errors(api: NodeThread, key: str) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    url = f"{api.url}/v1/chat/completions"
    bad = httpx.post(
        url,
        content=b'{"model": "echo", "messages": [',
        headers={**auth, "Content-Type": "application/json"},
    )
    assert bad.status_code == 400 and error_of(bad)["type"] == "invalid_request_error"
    nan = httpx.post(
        url,
        content=b'{"model": "echo", "temperature": NaN}',
        headers={**auth, "Content-Type": "application/json"},
    )
    assert nan.status_code == 400 and error_of(nan)["code"] == "not_json"
    text = httpx.post(url, content=b"hello", headers={**auth, "Content-Type": "text/plain"})
    assert text.status_code == 415 and "application/json" in error_of(text)["message"]
    limit = api.config.server.max_message_bytes
    huge = httpx.post(url, json={"model": "echo", "pad": "x" * (limit + 10)}, headers=auth)
    assert huge.status_code == 413 and error_of(huge)["code"] == "too_large"
    array = httpx.post(url, json=[1, 2], headers=auth)
    assert array.status_code == 400 and "object" in error_of(array)["message"]
    # No Content-Type at all: parsed as JSON.
    bare = httpx.post(
        url,
        content=json.dumps(
            {"model": "echo", "messages": [{"role": "user", "content": "bare"}]}
        ).encode(),
        headers=auth,
    )
    assert bare.status_code == 200 and bare.json()["choices"][0]["message"]["content"] == "bare"
    # The A2A binding beside it still answers in JSON-RPC's words.
    rpc = httpx.post(
        api.url + "/", content=b"{", headers={**auth, "Content-Type": "application/json"}
    )
    assert rpc.json()["error"]["code"] == -32700


def test_stranger_gets_401_on_every_route(api: NodeThread, key: str) -> None:
    refused_before = sum(api.node.handler.refusals.values()) if api.node.handler else 0
    calls = [
        ("GET", "/v1/models", None),
        ("GET", "/v1/models/echo", None),
        (
            "POST",
            "/v1/chat/completions",
            {"model": "echo", "messages": [{"role": "user", "content": "x"}]},
        ),
        ("POST", "/v1/completions", {"model": "echo", "prompt": "x"}),
        ("GET", "/v1/nowhere", None),
    ]
    for header in ({}, {"Authorization": "Bearer not-a-key"}, {"Authorization": "Basic abc"}):
        for method, path, body in calls:
            r = httpx.request(method, api.url + path, json=body, headers=header)
            assert r.status_code == 401, (method, path, header)
            assert error_of(r)["code"] == "invalid_api_key"
    assert api.node.handler is not None
    assert sum(api.node.handler.refusals.values()) >= refused_before + 15
    # With a key, an unknown path is OpenAI's 404.
    r = httpx.get(api.url + "/v1/nowhere", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 404 and error_of(r)["message"] == "Invalid URL (GET /v1/nowhere)"


def raw_status(url: str, method: str, target: str) -> int:
    """The status of a request sent byte for byte (no client normalizes its path)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\n"
            f"Content-Type: application/json\r\nConnection: close\r\n\r\n{{}}".encode()
        )
        head = b""
        while b"\r\n" not in head:
            data = sock.recv(4096)
            if not data:
                break
            head += data
    return int(head.split(b" ", 2)[1])


def test_no_method_or_path_spelling_reaches_v1_without_a_key(api: NodeThread) -> None:
    paths = [
        "/v1/models",
        "/v1/models/",
        "/v1/models/echo",
        "/v1/chat/completions",
        "/v1/chat/completions/",
        "/v1/completions",
        "/v1/../v1/models",
        "/v1/./models",
        "/v1/%2e%2e/v1/models",
        "/v1%2Fmodels",
        "/v1/models%2F..%2F..",
        "/v1/",
    ]
    for path in paths:
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            assert raw_status(api.url, method, path) == 401, (method, path)
    # Not /v1 at all: nothing under it is served there.
    for path in ("//v1/models", "/V1/models", "/v1models", "/%76%31/models"):
        assert raw_status(api.url, "GET", path) in (401, 404, 405), path
        assert raw_status(api.url, "GET", path) != 200, path
    # A member's signed call proof is not a credential here (members use A2A).
    r = httpx.get(api.url + "/v1/models", headers={"X-Consortium-Proof": "v1.acme.whatever"})
    assert r.status_code == 401 and "members use A2A" in error_of(r)["message"]


# -- tasks ---------------------------------------------------------------------------


def test_each_request_is_a_task_its_owner_sees_over_a2a(api: NodeThread, key: str) -> None:
    r = api.client(key).chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "remember this task"}]
    )
    task_id = (r.model_extra or {})["consortium"]["task_id"]
    got = api.jsonrpc(key, "GetTask", {"id": task_id})["result"]
    assert got["status"]["state"] == "TASK_STATE_COMPLETED"
    assert got["history"][0]["parts"][0]["text"] == "remember this task"
    assert got["artifacts"][0]["parts"][0]["text"] == "remember this task"
    assert got["artifacts"][0]["metadata"]["consortium"]["model"] == "echo"
    assert got["metadata"]["openai"]["id"] == r.id
    assert got["status"]["message"]["metadata"]["consortium"]["org"] == "acme"
    listed = api.jsonrpc(key, "ListTasks", {"pageSize": 100})["result"]["tasks"]
    assert task_id in {t["id"] for t in listed}
    # A rejected request is a task too.
    with pytest.raises(openai.BadRequestError):
        api.client(key).chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_object"},
        )
    states = {
        t["status"]["state"]
        for t in api.jsonrpc(key, "ListTasks", {"pageSize": 100})["result"]["tasks"]
    }
    assert "TASK_STATE_REJECTED" in states
    # Another key neither gets nor lists it.
    other = api.new_key("other")
    assert api.jsonrpc(other, "GetTask", {"id": task_id})["error"]["code"] == -32001
    others = api.jsonrpc(other, "ListTasks", {"pageSize": 100})["result"].get("tasks", [])
    assert task_id not in {t["id"] for t in others}


def test_consortium_options(api: NodeThread, key: str) -> None:
    """`consortium` carries the node's own options: a multiple-choice task, a budget."""
    client = api.client(key)
    r = client.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "Which one is a fruit?"}],
        extra_body={"consortium": {"choices": ["a rock", "a fruit"], "max_peers": 0}},
    )
    meta = (r.model_extra or {})["consortium"]
    assert len(meta["probabilities"]) == 2
    label, text = "AB"[meta["choice"]], ["a rock", "a fruit"][meta["choice"]]
    assert r.choices[0].message.content == f"{label}. {text}"
    for extension, param in (
        ({"peer": "globex"}, "consortium.peer"),
        # the model names the route: a second one in the extension is refused
        ({"route": "local"}, "consortium.route"),
        ({"choices": ["only one"]}, "consortium.choices"),
        ({"max_cost": -1}, "consortium.max_cost"),
    ):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(
                model="echo",
                messages=[{"role": "user", "content": "x"}],
                extra_body={"consortium": extension},
            )
        assert e.value.param == param, extension
