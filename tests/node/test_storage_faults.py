"""A full or read-only disk (issue 25, item 12): every API answers a clear UNAVAILABLE /
503 naming the problem, never an internal error or a Python class name; /healthz says
"degraded" with 503 while writes fail and "ok" again once one succeeds; the fault is
logged once per interval however many requests meet it; the node recovers without a
restart and loses nothing it acknowledged; a peer's user reads which node cannot write;
`consortium node start` on such a directory refuses in one line. The disk is a real
tmpfs filled to ENOSPC where the tests run as root (tests/disks.py says the fallback)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from a2a.types import a2a_pb2, a2a_pb2_grpc

from consortium.errors import StorageUnavailable
from consortium.llm.backends import backend_factory
from consortium.node.a2a.errors import JSONRPC_STORAGE_UNAVAILABLE
from consortium.node.app import Node
from consortium.node.auth import Credentials
from consortium.node.client import text_message
from consortium.sqlite import LOG_INTERVAL_S, STORAGE, connect
from tests.conftest import make_config
from tests.disks import ROOT, Disk
from tests.integration.test_federation import Federation

# Enough requests to show the log does not grow with them.
BURST = 24


def warnings_and_errors(records: list[logging.LogRecord]) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in records if r.levelno >= logging.WARNING]


# -- the shared mapping ------------------------------------------------------------------


def test_sqlite_storage_faults_are_one_error_logged_once_and_cleared_by_a_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conn = connect(tmp_path / "db.sqlite3")
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.execute("INSERT INTO t VALUES (1)")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL, deterministically
    with caplog.at_level(logging.INFO):
        for _ in range(50):
            with pytest.raises(StorageUnavailable) as full:
                conn.execute("INSERT INTO t VALUES (randomblob(65536))")
        # In a transaction: the caller's ROLLBACK works, and so does the next BEGIN.
        conn.execute("BEGIN IMMEDIATE")
        with pytest.raises(StorageUnavailable):
            conn.execute("INSERT INTO t VALUES (randomblob(65536))")
        conn.execute("ROLLBACK")
        assert str(full.value) == "this node cannot write: disk full"
        [fault] = STORAGE.under(tmp_path)
        assert (fault.problem, fault.failures) == ("disk_full", 51)
        lines = warnings_and_errors(caplog.records)
        assert len(lines) == 1 and "disk full" in lines[0], lines

        conn.execute("PRAGMA max_page_count = 1073741823")
        conn.execute("PRAGMA query_only = ON")  # SQLITE_READONLY
        with pytest.raises(StorageUnavailable) as read_only:
            conn.execute("INSERT INTO t VALUES (2)")
        assert read_only.value.problem == "read_only"
        assert str(read_only.value) == "this node cannot write: its storage is read-only"

        conn.execute("PRAGMA query_only = OFF")
        conn.execute("INSERT INTO t VALUES (3)")  # a committed write clears the fault
        assert STORAGE.under(tmp_path) == []
        assert any("writable again" in line for line in warnings_and_errors(caplog.records))
    conn.close()


def test_the_fault_is_logged_again_after_the_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(STORAGE, "_clock", lambda: now[0])
    conn = connect(tmp_path / "db.sqlite3")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("PRAGMA query_only = ON")
    with caplog.at_level(logging.WARNING):
        for step in range(30):
            now[0] += LOG_INTERVAL_S / 10
            with pytest.raises(StorageUnavailable):
                conn.execute(f"INSERT INTO t VALUES ({step})")
    # 30 failures over 3 intervals: one line at the first, one per interval after it.
    assert len(warnings_and_errors(caplog.records)) == 3
    conn.execute("PRAGMA query_only = OFF")
    conn.execute("INSERT INTO t VALUES (0)")
    conn.close()


# -- a node on a disk that fills up ------------------------------------------------------


@pytest.fixture
async def node_on_disk(tmp_path: Path) -> AsyncIterator[tuple[Node, Disk]]:
    cfg = make_config(tmp_path / "acme")
    disk = Disk(cfg.data_dir)
    node = Node(cfg, backend_factory(cfg.model, cfg.base_dir))
    try:
        await node.start()
        yield node, disk
    finally:
        disk.free_if_full()
        await node.stop()
        disk.close()


async def grpc_send(stub: a2a_pb2_grpc.A2AServiceStub, text: str) -> str:
    """The task id of a completed task, or the gRPC error as "CODE: details"."""
    try:
        resp = await stub.SendMessage(a2a_pb2.SendMessageRequest(message=text_message(text)))
    except grpc.aio.AioRpcError as e:
        return f"{e.code().name}: {e.details()}"
    assert resp.task.status.state == a2a_pb2.TASK_STATE_COMPLETED
    return resp.task.id


async def grpc_stream(stub: a2a_pb2_grpc.A2AServiceStub, text: str) -> str:
    try:
        async for _ in stub.SendStreamingMessage(
            a2a_pb2.SendMessageRequest(message=text_message(text))
        ):
            pass
    except grpc.aio.AioRpcError as e:
        return f"{e.code().name}: {e.details()}"
    return "streamed"


async def jsonrpc_send(http: httpx.AsyncClient, url: str, text: str, n: int) -> Any:
    body = {
        "jsonrpc": "2.0",
        "id": n,
        "method": "SendMessage",
        "params": {
            "message": {"messageId": f"m-{n}", "role": "ROLE_USER", "parts": [{"text": text}]}
        },
    }
    r = await http.post(url + "/", json=body, headers={"A2A-Version": "1.0"})
    assert r.status_code == 200
    return r.json()


async def v1_chat(http: httpx.AsyncClient, url: str, text: str) -> httpx.Response:
    return await http.post(
        url + "/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": text}]},
    )


async def test_a_full_disk_is_unavailable_everywhere_and_the_node_recovers_by_itself(
    node_on_disk: tuple[Node, Disk], caplog: pytest.LogCaptureFixture
) -> None:
    node, disk = node_on_disk
    assert node.endpoints is not None and node.store is not None
    url = node.endpoints.http_url
    says, says_named = disk.says(), disk.says("acme")
    async with (
        grpc.aio.insecure_channel(node.endpoints.grpc_target) as channel,
        httpx.AsyncClient(timeout=30) as http,
    ):
        stub = a2a_pb2_grpc.A2AServiceStub(channel)
        before = await grpc_send(stub, "stored before the disk filled")
        assert (await http.get(url + "/healthz")).json()["storage"] == {"writable": True}

        caplog.clear()
        with caplog.at_level(logging.INFO):
            disk.fill([node.store._conn])
            assert await grpc_send(stub, "one") == f"UNAVAILABLE: {says_named}"
            assert await grpc_stream(stub, "two") == f"UNAVAILABLE: {says_named}"
            error = (await jsonrpc_send(http, url, "three", 3))["error"]
            assert error["code"] == JSONRPC_STORAGE_UNAVAILABLE
            assert error["message"] == says_named
            r = await v1_chat(http, url, "four")
            assert r.status_code == 503
            assert r.json()["error"]["message"] == says
            assert r.json()["error"]["code"] == "storage_unavailable"

            health = await http.get(url + "/healthz")
            assert health.status_code == 503
            body = health.json()
            assert body["status"] == "degraded"
            assert body["storage"]["writable"] is False
            assert body["storage"]["problem"] == disk.problem
            assert body["storage"]["message"] == says
            assert "node.sqlite3" in body["storage"]["databases"]
            # A stranger learns the state, not the details.
            public = node.health(_stranger(), await node.storage.check())
            assert public["storage"] == {"writable": False, "problem": disk.problem}

            results = await asyncio.gather(
                *(grpc_send(stub, f"burst {i}") for i in range(BURST)),
                *(jsonrpc_send(http, url, f"burst {i}", 100 + i) for i in range(BURST)),
                *(v1_chat(http, url, f"burst {i}") for i in range(BURST)),
            )
        lines = warnings_and_errors(caplog.records)
        # 3 * BURST + 4 failed requests, a handful of lines: one per store that failed
        # and one for the trace file (consortium.sqlite), and a2a-sdk's warnings about
        # the events of the one task that met the full disk (the rest were refused
        # before any work: no task, no events).
        assert 1 <= len(lines) <= 6, lines
        assert all(
            "cannot write" in line or line.startswith("a2a.server.events") for line in lines
        ), lines
        texts = [str(r.json() if isinstance(r, httpx.Response) else r) for r in results]
        python = ("<class", "sqlite3", "OperationalError", "StorageUnavailable", "Traceback")
        assert not any(word in t for word in python for t in texts), texts
        said = says.removeprefix("this node ")  # "node acme cannot write: ..." on A2A
        assert all(said in t for t in texts), texts

        disk.free()
        # Nothing writes while the node refuses: /healthz's probe (at most every
        # PROBE_INTERVAL_S) finds the disk writable again.
        health = await until_healthy(http, url)
        assert health.json()["status"] == "ok"
        assert health.json()["storage"] == {"writable": True}
        after = await grpc_send(stub, "stored after the disk was freed")
        for task_id in (before, after):
            got = await stub.GetTask(a2a_pb2.GetTaskRequest(id=task_id))
            assert got.status.state == a2a_pb2.TASK_STATE_COMPLETED
        r = await v1_chat(http, url, "and over /v1")
        assert r.status_code == 200, r.text


async def until_healthy(http: httpx.AsyncClient, url: str, timeout: float = 60) -> httpx.Response:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        health = await http.get(url + "/healthz")
        if health.status_code == 200 or asyncio.get_running_loop().time() > deadline:
            assert health.status_code == 200, health.text
            return health
        await asyncio.sleep(0.1)


def _stranger() -> Credentials:
    return Credentials(loopback=False)


# -- a peer whose disk is full -----------------------------------------------------------


class FullPeerFederation(Federation):
    """globex's data directory is a Disk of its own."""

    disk: Disk | None = None

    def node(self, cfg: Any) -> Node:
        if cfg.node.org_id == "globex":
            self.disk = Disk(cfg.data_dir)
        return super().node(cfg)


@pytest.fixture
async def fed(tmp_path: Path) -> AsyncIterator[FullPeerFederation]:
    f = FullPeerFederation(tmp_path)
    try:
        await f.start()
        yield f
    finally:
        if f.disk is not None:
            f.disk.free_if_full()
        await f.stop()
        if f.disk is not None:
            f.disk.close()


async def test_a_peers_full_disk_reaches_the_origins_user_as_one_clear_line(
    fed: FullPeerFederation,
) -> None:
    globex, disk = fed.nodes["globex"], fed.disk
    assert disk is not None and globex.federation is not None and globex.store is not None
    assert globex.federation.audit_log is not None
    disk.fill([globex.store._conn, globex.federation.replay._conn, globex.federation.audit_log._db])
    answer = await fed.ask_via("acme", "escalate this", peer="globex")
    assert answer.state == "failed"
    assert disk.says("globex") in answer.status_text, answer.status_text
    assert "<class" not in answer.status_text and "sqlite3" not in answer.status_text

    disk.free()
    again = await fed.ask_via("globex", "and globex serves again, unrestarted")
    assert again.state == "completed", again.status_text


# -- start-up on a directory that cannot be written --------------------------------------


async def test_a_node_refuses_to_start_on_a_read_only_data_directory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_config(tmp_path / "acme")
    disk = Disk(cfg.data_dir)
    try:
        disk.read_only()
        node = Node(cfg, backend_factory(cfg.model, cfg.base_dir))
        with caplog.at_level(logging.WARNING), pytest.raises(StorageUnavailable) as refused:
            await node.start()
        assert str(refused.value).startswith(f"{cfg.data_dir}: this node cannot write: ")
        assert warnings_and_errors(caplog.records) == []  # nothing else to say
    finally:
        disk.close()


CLI = [sys.executable, "-m", "consortium.cli"]


@pytest.fixture
def org_dir(tmp_path: Path) -> Iterator[tuple[Path, Disk]]:
    d = tmp_path / "acme"
    r = subprocess.run(
        [*CLI, "init", "acme", "--dir", str(d), "--grpc-port", "0", "--http-port", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    disk = Disk(d / "data")
    try:
        yield d, disk
    finally:
        disk.close()


@pytest.mark.parametrize("fault", ["read_only", "full"])
def test_node_start_refuses_an_unwritable_data_directory_in_one_line(
    org_dir: tuple[Path, Disk], fault: str
) -> None:
    d, disk = org_dir
    if fault == "read_only":
        disk.read_only()
        expected = "read-only" if ROOT else "not writable"
    else:
        disk.fill()
        expected = "disk full" if ROOT else "not writable"
    r = subprocess.run(
        [*CLI, "node", "start", "--config", str(d / "node.toml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == StorageUnavailable.exit_code, r.stderr
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "cannot write" in lines[0] and expected in lines[0], lines[0]
    assert str(d / "data") in lines[0]
    disk.free_if_full()
