"""A node for the OpenAI endpoint's tests: a real Node (echo model, real HTTP on
loopback, real SQLite) on its own thread and event loop, so that tests call it with the
official synchronous `openai` client and httpx as any outside client would."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest

from consortium.llm.backends import backend_factory
from consortium.node.app import Node
from consortium.node.config import NodeConfig
from consortium.trust.api_keys import ApiKeys
from tests.conftest import make_config

T = TypeVar("T")


class NodeThread:
    """Runs one node on a thread of its own until `stop()`."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="test-node", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.node = Node(config, backend_factory(config.model, config.base_dir))

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.node.start())
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.node.stop())
        self._loop.close()

    def start(self) -> NodeThread:
        self._thread.start()
        if not self._ready.wait(120):
            raise TimeoutError("the node did not start")
        if self._error is not None:
            raise self._error
        return self

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs `coro` on the node's loop; its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(60)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(60)

    @property
    def url(self) -> str:
        assert self.node.endpoints is not None
        return self.node.endpoints.http_url

    def new_key(self, name: str) -> str:
        """An API key, made through a second handle on the keys database as
        `consortium keys add` does."""
        keys = ApiKeys(self.config.api_keys_path)
        try:
            return keys.create(name)[1]
        finally:
            keys.close()

    def client(self, key: str, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, **kw)

    def jsonrpc(self, key: str | None, method: str, params: dict[str, Any]) -> dict[str, Any]:
        headers = {"A2A-Version": "1.0"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        r = httpx.post(
            self.url + "/",
            json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
            headers=headers,
            timeout=30,
        )
        body: dict[str, Any] = r.json()
        return body


def node_thread(tmp: Path, **sections: dict[str, Any]) -> Iterator[NodeThread]:
    """A started node (keys needed: no anonymous loopback) for a module's fixture."""
    sections.setdefault("auth", {"anonymous_loopback": False})
    running = NodeThread(make_config(tmp, **sections)).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeThread]:
    yield from node_thread(tmp_path_factory.mktemp("openai-node"))
