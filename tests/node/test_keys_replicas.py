"""API keys across two replicas of one organization's node on one PostgreSQL (echo
model; in-process nodes on loopback): a key made through one replica is accepted by the
other on both bindings and /v1; a revoked one is refused by the replica that revoked it
at once, and by the other within api_keys.CACHE_S."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from consortium.cli.app import app
from consortium.node.app import Node
from consortium.trust import api_keys
from tests.conftest import NodeStarter, PgDatabase, make_config
from tests.node.test_access import BINDINGS, UNAUTHENTICATED, Access

CACHE_S = 0.5


async def models_status(node: Node, token: str) -> int:
    assert node.endpoints is not None
    async with httpx.AsyncClient() as http:
        r = await http.get(
            node.endpoints.http_url + "/v1/models", headers={"Authorization": f"Bearer {token}"}
        )
    return r.status_code


async def test_a_key_made_on_one_replica_works_on_the_other_until_revoked(
    start_node: NodeStarter,
    pg_database: PgDatabase,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(api_keys, "CACHE_S", CACHE_S)
    storage = {"url": pg_database.url, "password_file": str(pg_database.password_file)}
    a = await start_node(make_config(tmp_path / "a", storage=storage))
    b = await start_node(make_config(tmp_path / "b", storage=storage))
    assert a.keys is not None and b.keys is not None
    key, token = a.keys.create("app")
    for binding in BINDINGS:
        assert await Access(b, token).code(binding, "ListTasks", {}) == "ok"
    assert await models_status(b, token) == 200
    assert a.keys.authenticate(token) == key
    b.keys.revoke(key.id)
    # Refused at once by the replica that revoked it...
    for binding in BINDINGS:
        assert await Access(b, token).code(binding, "ListTasks", {}) == UNAUTHENTICATED[binding]
    assert await models_status(b, token) == 401
    # ...and by the other once its cache of the key is older than CACHE_S.
    deadline = time.monotonic() + 10 * CACHE_S + 5
    while await models_status(a, token) != 401:
        assert time.monotonic() < deadline, "the revocation never reached replica a"
        await asyncio.sleep(0.05)
    for binding in BINDINGS:
        assert await Access(a, token).code(binding, "ListTasks", {}) == UNAUTHENTICATED[binding]


async def test_the_cli_manages_the_keys_the_replicas_share(
    start_node: NodeStarter,
    pg_database: PgDatabase,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`consortium keys create|list|revoke` with a node.toml whose [storage] url is the
    PostgreSQL database: the running replica sees the key, then its revocation."""
    monkeypatch.setattr(api_keys, "CACHE_S", CACHE_S)
    storage = {"url": pg_database.url, "password_file": str(pg_database.password_file)}
    node = await start_node(make_config(tmp_path / "a", storage=storage))
    config = tmp_path / "cli" / "node.toml"
    config.parent.mkdir()
    config.write_text(
        '[node]\norg_id = "acme"\ndisplay_name = "acme org"\n'
        '[model]\nbackend = "echo"\nname = "echo"\n'
        f'[storage]\nurl = "{pg_database.url}"\npassword_file = "{pg_database.password_file}"\n'
    )
    runner = CliRunner()
    created = await asyncio.to_thread(
        runner.invoke, app, ["keys", "create", "cli-app", "--config", str(config)]
    )
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("csk_")
    assert await models_status(node, token) == 200
    listed = await asyncio.to_thread(runner.invoke, app, ["keys", "list", "--config", str(config)])
    assert listed.exit_code == 0 and "cli-app  active" in listed.stdout
    assert not (tmp_path / "cli" / "data" / "api-keys.sqlite3").exists()  # not in a file
    revoked = await asyncio.to_thread(
        runner.invoke, app, ["keys", "revoke", "cli-app", "--config", str(config)]
    )
    assert revoked.exit_code == 0 and "revoked" in revoked.stdout
    deadline = time.monotonic() + 10 * CACHE_S + 5
    while await models_status(node, token) != 401:
        assert time.monotonic() < deadline, "the revocation never reached the node"
        await asyncio.sleep(0.05)


async def test_two_replicas_grant_a_key_its_requests_per_minute_once(
    start_node: NodeStarter, pg_database: PgDatabase, tmp_path: Path
) -> None:
    storage = {"url": pg_database.url, "password_file": str(pg_database.password_file)}
    limits = {"requests_per_minute": 6, "tokens_per_minute": 0, "concurrent_requests": 0}
    a = await start_node(make_config(tmp_path / "a", storage=storage, limits=limits))
    b = await start_node(make_config(tmp_path / "b", storage=storage, limits=limits))
    assert a.keys is not None
    _, token = a.keys.create("app")
    statuses = [await models_status((a, b)[i % 2], token) for i in range(8)]
    assert statuses == [200] * 6 + [429, 429]  # 6 in all across both, not 6 each
    assert await Access(a, token).code("grpc", "ListTasks", {}) == "RESOURCE_EXHAUSTED"
    _, other = a.keys.create("other")  # another key: a window of its own
    assert await models_status(b, other) == 200


async def test_while_the_database_is_away_keys_and_limits_answer_unavailable(
    start_node: NodeStarter, pg_cluster: Any, pg_database: PgDatabase, tmp_path: Path
) -> None:
    """A key the replica has not seen cannot be checked, and no call can be counted
    against its limits: a clear UNAVAILABLE / 503 within the timeouts, never a 500 or a
    hang; when the database is back, the same replica serves again (no restart)."""
    storage = {
        "url": pg_database.url,
        "password_file": str(pg_database.password_file),
        "connect_timeout_s": 2.0,
        "pool_timeout_s": 2.0,
    }
    node = await start_node(make_config(tmp_path / "a", storage=storage))
    assert node.keys is not None
    _, known = node.keys.create("known")
    _, unseen = node.keys.create("unseen")
    assert await models_status(node, known) == 200
    pg_cluster.stop()
    try:
        started = time.monotonic()
        # A key not in the replica's cache: it cannot be looked up.
        assert await Access(node, unseen).code("grpc", "ListTasks", {}) == "UNAVAILABLE"
        assert await Access(node, unseen).code("jsonrpc", "ListTasks", {}) == "-32050"
        # A key it knows: its call cannot be counted against its requests per minute.
        assert await models_status(node, known) == 503
        assert await models_status(node, unseen) == 503
        assert time.monotonic() - started < 60
    finally:
        await asyncio.to_thread(pg_cluster.start)
    deadline = time.monotonic() + 30
    while await models_status(node, unseen) != 200:
        assert time.monotonic() < deadline, "the replica did not recover"
        await asyncio.sleep(0.1)
    assert await Access(node, known).code("grpc", "ListTasks", {}) == "ok"
