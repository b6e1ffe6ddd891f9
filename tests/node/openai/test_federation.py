"""The OpenAI endpoint of a node in a federation of echo nodes: members' models listed
as ORG/MODEL and answered by that member (verified, with its provenance), the
conversation flattened for it, local-only options refused on a peer's route, and a
member that is gone answering 503."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest
import pytest_asyncio

from tests.integration.test_federation import Federation

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Federation]:
    f = Federation(tmp_path_factory.mktemp("openai-fed"))
    try:
        await f.start()
        yield f
    finally:
        await f.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(fed: Federation) -> AsyncIterator[openai.AsyncOpenAI]:
    node = fed.nodes["acme"]
    assert node.keys is not None and node.endpoints is not None
    key = node.keys.create("app")[1]
    c = openai.AsyncOpenAI(base_url=f"{node.endpoints.http_url}/v1", api_key=key, max_retries=0)
    try:
        yield c
    finally:
        await c.close()


async def test_members_are_models(client: openai.AsyncOpenAI) -> None:
    ids = [m.id async for m in client.models.list()]
    assert ids == ["echo-acme", "consortium/auto", "globex/echo-globex", "initech/echo-initech"]


async def test_a_member_answers_through_its_model_name(client: openai.AsyncOpenAI) -> None:
    r = await client.chat.completions.create(
        model="globex/echo-globex", messages=[{"role": "user", "content": "ask globex"}]
    )
    assert r.choices[0].message.content == "ask globex"
    meta = (r.model_extra or {})["consortium"]
    assert meta["org"] == "globex" and meta["route"] == "acme->globex" and meta["verified"]
    assert r.usage is not None and r.usage.completion_tokens == 2
    # The member gets a conversation as one text.
    r = await client.chat.completions.create(
        model="globex/default",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi there"},
        ],
    )
    assert r.choices[0].message.content == "System: be brief User: hi there"


async def test_a_member_streams(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="initech/echo-initech",
        messages=[{"role": "user", "content": "streamed from initech"}],
        stream=True,
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "streamed from initech"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert (chunks[-1].model_extra or {})["consortium"]["route"] == "acme->initech"


async def test_local_only_options_are_refused_for_a_member(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(
            model="globex/echo-globex",
            messages=[{"role": "user", "content": "x"}],
            logprobs=True,
        )
    assert e.value.param == "logprobs"
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(
            model="globex/gpt-4", messages=[{"role": "user", "content": "x"}]
        )


async def test_a_member_that_is_gone_is_unavailable(
    fed: Federation, client: openai.AsyncOpenAI
) -> None:
    """Last in the module: stops initech."""
    await fed.nodes["initech"].stop()
    with pytest.raises(openai.InternalServerError) as e:
        await client.completions.create(model="initech/default", prompt="anyone there?")
    assert e.value.status_code == 503
