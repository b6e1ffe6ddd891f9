"""An error after a stream started, as OpenAI sends one: a `data: {"error": ...}` event,
then the stream ends (no [DONE]). Here the member streaming the answer stops mid-way."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from tests.integration.test_federation import Federation

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def slow_fed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Federation]:
    f = Federation(tmp_path_factory.mktemp("openai-slow-fed"), echo_token_delay_s=0.05)
    try:
        await f.start()
        yield f
    finally:
        await f.stop()


async def test_an_error_mid_stream_is_an_error_event(slow_fed: Federation) -> None:
    acme = slow_fed.nodes["acme"]
    assert acme.keys is not None and acme.endpoints is not None
    key = acme.keys.create("app")[1]
    words = " ".join(f"w{i}" for i in range(400))
    events = []
    async with (
        httpx.AsyncClient(timeout=60) as http,
        http.stream(
            "POST",
            f"{acme.endpoints.http_url}/v1/chat/completions",
            json={
                "model": "globex/default",
                "messages": [{"role": "user", "content": words}],
                "stream": True,
            },
            headers={"Authorization": f"Bearer {key}"},
        ) as r,
    ):
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line:
                continue
            events.append(line.removeprefix("data: "))
            if len(events) == 3:  # the role chunk and some text: globex goes away
                await slow_fed.nodes["globex"].stop()
    assert events[-1] != "[DONE]"
    error = json.loads(events[-1])["error"]
    assert error["type"] == "server_error" and error["message"]
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
    task_id = chunks[0]["id"].removeprefix("chatcmpl-")
    stored = [t for t in await _tasks(acme.endpoints.http_url, key) if t["id"] == task_id]
    assert stored and stored[0]["status"]["state"] == "TASK_STATE_FAILED"


async def _tasks(url: str, key: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient() as http:
        r = await http.post(
            url + "/",
            json={"jsonrpc": "2.0", "id": 1, "method": "ListTasks", "params": {"pageSize": 100}},
            headers={"Authorization": f"Bearer {key}", "A2A-Version": "1.0"},
        )
    tasks: list[dict[str, object]] = r.json()["result"]["tasks"]
    return tasks
