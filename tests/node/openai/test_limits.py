"""The caller's token limit on /v1 ([limits] tokens_per_minute; node/limits.py, where
the requests per minute and requests in progress are tested on every binding): what a
request reserves and what it is settled to; a client that leaves a stream, or stops
waiting for a whole answer, stops the generation (its task canceled, what it cost so far
counted); a model that is gone answers 500."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.node.openai.conftest import NodeThread, node_thread

TPM = 5000


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeThread]:
    yield from node_thread(
        tmp_path_factory.mktemp("openai-limited"),
        limits={"requests_per_minute": 0, "tokens_per_minute": TPM},
        model={"echo_token_delay_s": 0.02},
    )


def test_tokens_per_minute(limited: NodeThread) -> None:
    client = limited.client(limited.new_key("wordy"))
    # Reserves its prompt (~473 estimated) and max_tokens; uses 400 in + 400 out.
    used = client.completions.create(model="echo", prompt=words(400), max_tokens=4000).usage
    assert used is not None and used.total_tokens == 800
    with pytest.raises(openai.RateLimitError) as e:  # 800 + 4301 > TPM
        client.completions.create(model="echo", prompt="more", max_tokens=4300)
    assert e.value.body["type"] == "tokens"  # type: ignore[index]
    assert e.value.code == "rate_limit_exceeded"
    assert int(e.value.response.headers["retry-after"]) >= 1
    # What the first did not use was given back: 800 + 4101 fit.
    client.completions.create(model="echo", prompt="more", max_tokens=4100)
    # A request that could never fit is told so.
    with pytest.raises(openai.RateLimitError, match="Request too large"):
        limited.client(limited.new_key("greedy")).completions.create(
            model="echo", prompt="x", max_tokens=TPM
        )


def leave_a_stream(limited: NodeThread, key: str, n_words: int, max_tokens: int) -> str:
    """Starts a long streamed completion, leaves after its first chunk; the state its task
    settles in (the node notices the disconnect on its own time)."""
    with httpx.stream(
        "POST",
        f"{limited.url}/v1/completions",
        json={"model": "echo", "prompt": words(n_words), "max_tokens": max_tokens, "stream": True},
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
    assert leave_a_stream(limited, key, 2000, 2000) == "TASK_STATE_CANCELED"
    # The model is free again: the next request is answered.
    client = limited.client(limited.new_key("next"))
    assert client.completions.create(model="echo", prompt="after").choices[0].text == "after"


def test_a_stream_left_before_its_end_counts_its_tokens(limited: NodeThread) -> None:
    # Leaving early must not make a generation free of the token limit: its reservation
    # is settled to the prompt and what was generated (~475 tokens estimated).
    key = limited.new_key("dodger")
    assert leave_a_stream(limited, key, 400, 4000) == "TASK_STATE_CANCELED"
    with pytest.raises(openai.RateLimitError) as e:  # ~475 + 4601 > TPM
        limited.client(key).completions.create(model="echo", prompt="again", max_tokens=4600)
    assert e.value.body["type"] == "tokens"  # type: ignore[index]
    # The same request from a key that spent nothing fits.
    fresh = limited.client(limited.new_key("fresh"))
    assert fresh.completions.create(model="echo", prompt="again", max_tokens=4600).choices


def test_a_client_that_stops_waiting_stops_the_generation(limited: NodeThread) -> None:
    key = limited.new_key("impatient")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{limited.url}/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": words(2000)}]},
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
