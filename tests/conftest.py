"""Shared fixtures: node configs in temporary directories, in-process nodes on loopback
with ephemeral ports, and the bundled model files."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
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


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """One throwaway PostgreSQL server for the session (consortium/launch/pgcluster.py),
    started when a test first asks for it."""
    from consortium.launch.pgcluster import PgCluster

    # Not under pytest's tmp directory: as root the server runs as `postgres`, which must
    # reach its directory (pytest's base is 0700, root's).
    cluster = PgCluster.create(Path(tempfile.mkdtemp(prefix="consortium-pg-")))
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_database(pg_cluster: Any, tmp_path: Path) -> PgDatabase:
    """A new empty database on the session's server, and a 0600 file with the password."""
    import secrets

    name = f"t_{secrets.token_hex(6)}"
    url = pg_cluster.create_database(name)
    password_file = tmp_path / "db-password"
    password_file.write_text(pg_cluster.password + "\n")
    password_file.chmod(0o600)
    return PgDatabase(url, password_file, pg_cluster.password)


class PgDatabase:
    """A test database: its URL (no password), the password and a 0600 file holding it."""

    def __init__(self, url: str, password_file: Path, password: str) -> None:
        self.url = url
        self.password_file = password_file
        self.password = password

    def storage(self, **settings: Any) -> Any:
        """A Storage on this database (a replica's view of it)."""
        from consortium.storage.storage import PoolSettings, Storage
        from consortium.storage.url import parse_location

        location = parse_location(
            self.url,
            base_dir=self.password_file.parent,
            data_dir=self.password_file.parent,
            password_file=str(self.password_file),
        )
        return Storage(location, PoolSettings(**settings))
