"""Shared fixtures: node configs in temporary directories, in-process nodes on loopback
with ephemeral ports, and the bundled model files."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from consortium.llm.backends import backend_factory
from consortium.llm.registry import resolve_model_file
from consortium.node.app import Node
from consortium.node.config import NodeConfig, parse_config

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_config(tmp: Path, org_id: str = "acme", **sections: dict[str, Any]) -> NodeConfig:
    data: dict[str, Any] = {
        "node": {"org_id": org_id, "display_name": f"{org_id} org"},
        # Network tests see one artifact update per token; test_streaming_coalesces_tokens
        # covers the default interval.
        "server": {
            "grpc_port": 0,
            "http_port": 0,
            "shutdown_grace_s": 2.0,
            "stream_interval_s": 0.0,
        },
        "model": {"backend": "echo", "name": "echo"},
        # Tests not about access control call as the anonymous loopback user.
        "auth": {"anonymous_loopback": True},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    tmp.mkdir(parents=True, exist_ok=True)
    return parse_config(data, path=tmp / "node.toml")


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    return resolve_model_file("smollm2-135m", None)


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    return resolve_model_file("gemma3-270m", None)


NodeStarter = Callable[..., Any]


@pytest.fixture
async def start_node(tmp_path: Path) -> AsyncIterator[NodeStarter]:
    """Starts in-process nodes (real gRPC and HTTP on loopback); stops them at the end."""
    nodes: list[Node] = []

    async def start(config: NodeConfig | None = None, **sections: dict[str, Any]) -> Node:
        cfg = config or make_config(tmp_path / f"node{len(nodes)}", **sections)
        node = Node(cfg, backend_factory(cfg.model, cfg.base_dir))
        await node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        await node.stop()
