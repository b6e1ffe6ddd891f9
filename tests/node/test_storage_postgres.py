"""A node whose state is on PostgreSQL ([storage] url): ready only while the database is
reachable — /healthz probes it even when nothing writes, says "degraded" (503) naming
the problem once it goes away, new requests get 503 rather than a hang or a 500 — and
back to "ok" by itself when it returns, no restart. A node whose database refuses its
password does not start, in one clear error without the password."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from consortium.errors import StorageUnavailable
from consortium.llm.backends import backend_factory
from consortium.node.app import Node
from tests.conftest import NodeStarter, PgDatabase, make_config

DEADLINE_S = 60.0


async def health(http: httpx.AsyncClient, url: str) -> tuple[int, dict[str, Any]]:
    r = await http.get(url + "/healthz")
    return r.status_code, r.json()


async def chat(http: httpx.AsyncClient, url: str) -> httpx.Response:
    return await http.post(
        url + "/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "hello"}]},
    )


async def until(check: Any, what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE_S} s: {what}")
        await asyncio.sleep(0.2)


async def test_ready_only_while_the_database_is_reachable(
    start_node: NodeStarter, pg_cluster: Any, pg_database: PgDatabase
) -> None:
    node: Node = await start_node(
        storage={
            "url": pg_database.url,
            "password_file": str(pg_database.password_file),
            "connect_timeout_s": 2.0,
            "pool_timeout_s": 2.0,
        }
    )
    assert node.endpoints is not None and node.databases is not None
    assert node.databases.kind == "postgresql"
    url = node.endpoints.http_url
    async with httpx.AsyncClient(timeout=30) as http:
        status, body = await health(http, url)
        assert status == 200 and body["storage"] == {"writable": True}
        assert (await chat(http, url)).status_code == 200

        pg_cluster.stop()
        try:

            async def degraded() -> dict[str, Any] | None:
                status, body = await health(http, url)
                return body if status == 503 else None

            body = await until(degraded, "/healthz degraded")
            assert body["status"] == "degraded"
            assert body["storage"]["problem"] == "database_unavailable"
            assert pg_database.password not in str(body)
            r = await chat(http, url)
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "storage_unavailable"
        finally:
            pg_cluster.start()

        async def ready() -> bool:
            return (await health(http, url))[0] == 200

        await until(ready, "/healthz ok again")
        assert (await chat(http, url)).status_code == 200


async def test_a_wrong_password_refuses_the_start(tmp_path: Path, pg_database: PgDatabase) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    cfg = make_config(
        tmp_path / "node", storage={"url": pg_database.url, "password_file": str(wrong)}
    )
    node = Node(cfg, backend_factory(cfg.model, cfg.base_dir))
    with pytest.raises(StorageUnavailable) as e:
        await node.start()
    assert e.value.problem == "database_auth"
    assert "not-the-password" not in str(e.value)
