"""Fuzzing the OpenAI endpoint's request bodies: whatever a client sends, the node
answers 200 or an OpenAI-shaped client error, never a 500, and keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.node.openai.conftest import NodeThread, node_thread

FIELDS = [
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "n",
    "logprobs",
    "top_logprobs",
    "stream",
    "stream_options",
    "response_format",
    "user",
    "echo",
    "best_of",
    "consortium",
    "unknown",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(
        ["echo", "consortium/auto", "group/x", "user", "system", "text", "json_object"]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "role",
                    "content",
                    "type",
                    "text",
                    "include_usage",
                    "json_schema",
                    "name",
                    "schema",
                    "choices",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)
message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "system", "developer", "assistant", "tool"]),
        "content": values,
    }
)
bodies = st.dictionaries(st.sampled_from(FIELDS), values, max_size=8).flatmap(
    lambda body: st.builds(
        lambda model, messages: {"model": model, "messages": messages, "prompt": "p", **body},
        st.sampled_from(["echo", "consortium/auto", "nope"]),
        st.lists(message, min_size=0, max_size=3),
    )
)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeThread, str]]:
    for running in node_thread(
        tmp_path_factory.mktemp("openai-fuzz"),
        limits={"requests_per_minute": 0, "tokens_per_minute": 0},
    ):
        yield running, running.new_key("fuzz")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(body=bodies, path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
def test_no_server_errors(fuzzed: tuple[NodeThread, str], body: dict[str, Any], path: str) -> None:
    api, key = fuzzed
    r = httpx.post(
        api.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    assert r.status_code in (200, 400, 404), (r.status_code, r.text)
    if r.status_code != 200:
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"]
    elif body.get("stream") is True:
        assert r.text.rstrip().endswith("data: [DONE]") or '"error"' in r.text


def test_still_serving(fuzzed: tuple[NodeThread, str]) -> None:
    api, key = fuzzed
    r = api.client(key).chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "alive"}]
    )
    assert r.choices[0].message.content == "alive"
