"""A node whose model is an OpenAI-compatible server (`model.backend = "openai"`):
llama-cpp-python's `llama_cpp.server` on the bundled SmolLM2-135M, started once for the
module with an API key and without `logits_all`, so it generates but returns no
log-probabilities (what a start-up capability check must notice)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consortium.errors import ConfigError
from consortium.node.client import ask, fetch_agent_card, open_client
from tests.conftest import NodeStarter
from tests.helpers import benchmark_module
from tests.llm.scripted_server import Reply, Script, models, scripted_server

KEY = "sk-node-test-0123456789"
NAME = "smollm2-135m"


@pytest.fixture(scope="module")
def server(smollm_path: Path) -> Iterator[str]:
    with benchmark_module("llama_server").llama_server(
        smollm_path, n_ctx=1024, api_key=KEY, model_alias=NAME
    ) as base_url:
        yield base_url


def remote_model(
    tmp_path: Path, base_url: str, key: str = KEY, name: str = NAME, mode: int = 0o600
) -> dict[str, Any]:
    key_file = tmp_path / "model-server.key"
    key_file.write_text(key + "\n")
    key_file.chmod(mode)
    return {
        "backend": "openai",
        "name": name,
        "base_url": base_url,
        "api_key_file": str(key_file),
        "context_size": 1024,
        "retries": 0,
    }


async def test_a_node_answers_with_the_remote_model(
    start_node: NodeStarter, server: str, tmp_path: Path
) -> None:
    node = await start_node(model=remote_model(tmp_path, server))
    assert node.worker.info.capabilities == {"grammar"}  # no logits_all: no logprobs
    card = await fetch_agent_card(node.endpoints.http_url)
    client = open_client(card)
    pieces: list[str] = []
    try:
        answer = await ask(
            client,
            "What is the capital of France?",
            options={"max_tokens": 16},
            on_text=pieces.append,
        )
        # Multiple choice needs prompt log-probabilities: refused, with the reason.
        choice = await ask(
            client, "What is the capital of France?", options={"choices": ["Paris", "Rome"]}
        )
    finally:
        await client.close()
    assert choice.state == "rejected"
    assert "no prompt log-probabilities" in choice.status_text
    assert answer.state == "completed", answer.status_text
    assert "Paris" in answer.text
    assert "".join(pieces) == answer.text
    p = answer.provenance
    assert p.model == NAME and p.backend == "openai"
    assert 0 < p.output_tokens <= 16 and p.input_tokens > 5


async def test_a_router_needing_logprobs_stops_start_up_in_one_line(
    start_node: NodeStarter, server: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as e:
        await start_node(model=remote_model(tmp_path, server), routing={"router": "self"})
    message = str(e.value)
    assert "\n" not in message
    assert "lacks token_logprobs (needed by routing.router = 'self')" in message
    assert "option_scoring" in message


async def test_a_group_of_its_own_model_needs_option_scoring(
    start_node: NodeStarter, server: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"lacks option_scoring \(needed by \[groups.panel\]"):
        await start_node(
            model=remote_model(tmp_path, server),
            groups={"panel": {"members": ["self"]}},
        )


async def test_a_wrong_key_stops_start_up(
    start_node: NodeStarter, server: str, tmp_path: Path
) -> None:
    from consortium.errors import ModelError

    with pytest.raises(ModelError, match="refused the API key"):
        await start_node(model=remote_model(tmp_path, server, key="sk-wrong"))


async def test_a_server_error_fails_the_task_with_its_reason(
    start_node: NodeStarter, tmp_path: Path
) -> None:
    script = Script()
    script.replies = {
        "/v1/models": [models("tiny")],
        "/v1/chat/completions": [Reply(500, {"error": {"message": "CUDA out of memory"}})],
    }
    with scripted_server(script) as url:
        node = await start_node(model=remote_model(tmp_path, url, name="tiny"))
        card = await fetch_agent_card(node.endpoints.http_url)
        client = open_client(card)
        try:
            answer = await ask(client, "Hi", options={"max_tokens": 4})
        finally:
            await client.close()
    assert answer.state == "failed"
    assert "CUDA out of memory" in answer.status_text
    assert "HTTP 500" in answer.status_text


async def test_a_readable_key_file_stops_start_up(
    start_node: NodeStarter, server: str, tmp_path: Path
) -> None:
    model = remote_model(tmp_path, server, mode=0o640)
    with pytest.raises(ConfigError, match=r"model.api_key_file: .*readable by others") as e:
        await start_node(model=model)
    assert KEY not in str(e.value)


def test_which_settings_need_which_capabilities(tmp_path: Path) -> None:
    from consortium.node.orchestrator import required_capabilities
    from tests.conftest import make_config

    def need(**sections: dict[str, Any]) -> dict[str, str]:
        cfg = make_config(tmp_path, **sections)
        return dict(required_capabilities(cfg.routing, cfg.groups, cfg.node.org_id))

    assert need() == {}
    assert need(routing={"router": "heuristic"}) == {}
    for router in ("self:mean_logprob", "cascade", "learned"):
        assert set(need(routing={"router": router})) == {"token_logprobs", "option_scoring"}
    # A group of peers only, refusing when short, never asks this node's model.
    peers_only = {"members": ["globex", "initech"], "on_short": "refuse"}
    assert need(groups={"panel": peers_only}) == {}
    assert need(groups={"panel": {**peers_only, "on_short": "local"}}) == {
        "option_scoring": "[groups.panel] (its own model scores options)"
    }
    assert set(need(groups={"panel": {"members": ["acme"], "on_short": "refuse"}})) == {
        "option_scoring"
    }
