"""Per-key rate limits ([openai] requests_per_minute, tokens_per_minute) on a node with
tiny limits; a client that leaves a stream, or stops waiting for a whole answer, stops
the generation (its task canceled, what it cost so far counted); a model that is gone
answers 500."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from consortium.node.openai.limits import RateLimits
from tests.node.openai.conftest import NodeThread, node_thread

RPM = 4
TPM = 40


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeThread]:
    yield from node_thread(
        tmp_path_factory.mktemp("openai-limited"),
        openai={"requests_per_minute": RPM, "tokens_per_minute": TPM},
        model={"echo_token_delay_s": 0.02},
    )


def test_requests_per_minute(limited: NodeThread) -> None:
    client = limited.client(limited.new_key("busy"))
    for _ in range(RPM):
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "rate_limit_exceeded"
    assert 1 <= int(e.value.response.headers["retry-after"]) <= 60
    # Another key has a window of its own.
    other = limited.client(limited.new_key("calm"))
    assert other.completions.create(model="echo", prompt="fine").choices[0].text == "fine"


def test_tokens_per_minute(limited: NodeThread) -> None:
    client = limited.client(limited.new_key("wordy"))
    words = " ".join(f"w{i}" for i in range(25))  # 25 in + 25 out > TPM
    client.completions.create(model="echo", prompt=words, max_tokens=100)
    with pytest.raises(openai.RateLimitError) as e:
        client.completions.create(model="echo", prompt="more")
    assert e.value.body["type"] == "tokens"  # type: ignore[index]
    assert int(e.value.response.headers["retry-after"]) >= 1


def test_limits_window_rolls() -> None:
    now = [0.0]
    limits = RateLimits(2, 100, clock=lambda: now[0])
    assert limits.admit("a") is None and limits.admit("a") is None
    refused = limits.admit("a")
    assert refused is not None and refused.kind == "requests" and refused.retry_after_s == 60.0
    now[0] = 30.0
    limits.spend("a", 150)
    now[0] = 60.5  # the two requests left the window; the tokens did not
    tokens = limits.admit("a")
    assert tokens is not None and tokens.kind == "tokens" and tokens.retry_after_s == 29.5
    now[0] = 90.5
    assert limits.admit("a") is None
    assert RateLimits(0, 0).admit("x") is None


def leave_a_stream(limited: NodeThread, key: str, words: int) -> str:
    """Starts a long streamed completion, leaves after its first chunk; the state its task
    settles in (the node notices the disconnect on its own time)."""
    prompt = " ".join(f"w{i}" for i in range(words))
    with httpx.stream(
        "POST",
        f"{limited.url}/v1/completions",
        json={"model": "echo", "prompt": prompt, "max_tokens": 4000, "stream": True},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    ) as r:
        first = next(r.iter_lines())
        assert first.startswith("data: ")
    task_id = first.split('"id":"cmpl-')[1].split('"')[0]
    state = ""
    for _ in range(200):
        task = limited.jsonrpc(key, "GetTask", {"id": task_id})["result"]
        state = task["status"]["state"]
        if state != "TASK_STATE_WORKING":
            break
        time.sleep(0.05)
    return state


def test_disconnect_stops_the_generation(limited: NodeThread) -> None:
    key = limited.new_key("leaver")
    assert leave_a_stream(limited, key, 2000) == "TASK_STATE_CANCELED"
    # The model is free again: the next request is answered.
    client = limited.client(limited.new_key("next"))
    assert client.completions.create(model="echo", prompt="after").choices[0].text == "after"


def test_a_stream_left_before_its_end_counts_its_tokens(limited: NodeThread) -> None:
    # Leaving just before the end must not make a generation free of the token limit.
    key = limited.new_key("dodger")
    # 400 words: ~500 tokens estimated, over the module's tokens per minute.
    assert leave_a_stream(limited, key, 400) == "TASK_STATE_CANCELED"
    with pytest.raises(openai.RateLimitError) as e:
        limited.client(key).completions.create(model="echo", prompt="again")
    assert e.value.body["type"] == "tokens"  # type: ignore[index]


def test_a_client_that_stops_waiting_stops_the_generation(limited: NodeThread) -> None:
    key = limited.new_key("impatient")
    words = " ".join(f"w{i}" for i in range(2000))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{limited.url}/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": words}]},
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(30, read=0.5),
        )
    tasks: list[dict[str, Any]] = []
    for _ in range(200):  # the node notices the disconnect on its own time
        tasks = limited.jsonrpc(key, "ListTasks", {"pageSize": 10})["result"]["tasks"]
        if tasks and tasks[0]["status"]["state"] != "TASK_STATE_WORKING":
            break
        time.sleep(0.05)
    assert [t["status"]["state"] for t in tasks] == ["TASK_STATE_CANCELED"]
    client = limited.client(limited.new_key("patient"))
    assert client.completions.create(model="echo", prompt="served").choices[0].text == "served"


def test_a_model_that_is_gone_is_a_server_error(limited: NodeThread) -> None:
    """Last in the module: stops the node's model worker."""
    key = limited.new_key("late")
    limited.run(limited.node.worker.stop())
    with pytest.raises(openai.InternalServerError) as e:
        limited.client(key).chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "anyone?"}]
        )
    assert e.value.status_code == 500
    assert e.value.body["type"] == "server_error"  # type: ignore[index]
    # The node itself keeps serving.
    assert httpx.get(limited.url + "/healthz").json()["status"] == "ok"
