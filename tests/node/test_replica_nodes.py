"""Two in-process nodes of one organization on one PostgreSQL database (replicas A and
B, real gRPC on loopback): a task created through A is read, listed and canceled through
B by its owner and by no one else; when A's heartbeat stops, B fails the task A was
running within the bound, and B's own tasks stay as they are."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from a2a.types import a2a_pb2, a2a_pb2_grpc

from consortium.node.app import Node
from consortium.node.client import text_message
from consortium.node.replicas import DEAD_REASON
from tests.conftest import NodeStarter, PgDatabase, make_config


def metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def replicas_of_acme(
    tmp_path: Path, pg_database: PgDatabase, start_node: NodeStarter
) -> tuple[Node, Node, str, str, str]:
    """Nodes A and B on one database, the tokens of alice's and bob's API keys (made
    through A, in the store both share), and the owner alice's tasks are stored under."""
    storage = {
        "url": pg_database.url,
        "password_file": str(pg_database.password_file),
        "heartbeat_s": 0.2,
        "failover_after_s": 1.0,
    }
    cfg_a = make_config(tmp_path / "a", storage=storage, auth={"anonymous_loopback": False})
    cfg_b = make_config(tmp_path / "b", storage=storage, auth={"anonymous_loopback": False})
    a = await start_node(cfg_a)
    b = await start_node(cfg_b)
    assert a.keys is not None
    alice_key, alice = a.keys.create("alice")  # in the store both replicas share
    _, bob = a.keys.create("bob")
    assert a.replica_id != b.replica_id
    return a, b, alice, bob, alice_key.owner


async def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_a_task_created_through_one_replica_is_its_owners_through_the_other(
    tmp_path: Path, pg_database: PgDatabase, start_node: NodeStarter
) -> None:
    a, b, alice, bob, alice_owner = await replicas_of_acme(tmp_path, pg_database, start_node)
    assert a.endpoints is not None and b.endpoints is not None
    async with (
        grpc.aio.insecure_channel(a.endpoints.grpc_target) as ch_a,
        grpc.aio.insecure_channel(b.endpoints.grpc_target) as ch_b,
    ):
        via_a, via_b = a2a_pb2_grpc.A2AServiceStub(ch_a), a2a_pb2_grpc.A2AServiceStub(ch_b)
        sent = await via_a.SendMessage(
            a2a_pb2.SendMessageRequest(message=text_message("made on A")),
            metadata=metadata(alice),
        )
        task_id = sent.task.id
        got = await via_b.GetTask(a2a_pb2.GetTaskRequest(id=task_id), metadata=metadata(alice))
        assert got.status.state == a2a_pb2.TASK_STATE_COMPLETED
        listed = await via_b.ListTasks(a2a_pb2.ListTasksRequest(), metadata=metadata(alice))
        assert [t.id for t in listed.tasks] == [task_id]
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await via_b.GetTask(a2a_pb2.GetTaskRequest(id=task_id), metadata=metadata(bob))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        listed = await via_b.ListTasks(a2a_pb2.ListTasksRequest(), metadata=metadata(bob))
        assert list(listed.tasks) == []

        # A task A is running (stored as A stores it), canceled through B.
        assert a.store is not None
        running = a2a_pb2.Task(
            id="running-on-a",
            context_id="c",
            status=a2a_pb2.TaskStatus(state=a2a_pb2.TASK_STATE_WORKING),
        )
        a.store.save_sync(running, alice_owner)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await via_b.CancelTask(
                a2a_pb2.CancelTaskRequest(id="running-on-a"), metadata=metadata(bob)
            )
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        canceled = await via_b.CancelTask(
            a2a_pb2.CancelTaskRequest(id="running-on-a"), metadata=metadata(alice)
        )
        assert canceled.status.state == a2a_pb2.TASK_STATE_CANCELED
        got = await via_a.GetTask(
            a2a_pb2.GetTaskRequest(id="running-on-a"), metadata=metadata(alice)
        )
        assert got.status.state == a2a_pb2.TASK_STATE_CANCELED


async def test_a_replica_that_stops_beating_has_its_tasks_failed_by_the_other(
    tmp_path: Path, pg_database: PgDatabase, start_node: NodeStarter
) -> None:
    a, b, *_ = await replicas_of_acme(tmp_path, pg_database, start_node)
    assert a.store is not None and b.store is not None and a.replicas is not None
    a.store.save_sync(
        a2a_pb2.Task(
            id="on-a", context_id="c", status=a2a_pb2.TaskStatus(state=a2a_pb2.TASK_STATE_WORKING)
        ),
        "someone",
    )
    b.store.save_sync(
        a2a_pb2.Task(
            id="on-b", context_id="c", status=a2a_pb2.TaskStatus(state=a2a_pb2.TASK_STATE_WORKING)
        ),
        "someone",
    )
    assert a.endpoints is not None and b.endpoints is not None and b.replicas is not None
    # Both registered, with the endpoints they serve once their heartbeat ran.
    expected = {a.replica_id: a.endpoints.grpc_target, b.replica_id: b.endpoints.grpc_target}

    def grpc_of(endpoints: dict[str, Any]) -> str:
        urls = [u for binding, u in endpoints.get("interfaces", []) if binding == "GRPC"]
        return str(urls[0]).removeprefix("grpc://") if urls else ""

    assert await wait_for(
        lambda: {r.replica: grpc_of(r.endpoints) for r in b.replicas.live()} == expected  # type: ignore[union-attr]
    )
    assert a._heartbeat is not None
    a._heartbeat.cancel()  # A hangs: it beats no more

    def state(task_id: str) -> int:
        assert b.store is not None
        page = b.store.list_sync(a2a_pb2.ListTasksRequest(), "someone")
        return next(int(t.status.state) for t in page.tasks if t.id == task_id)

    assert await wait_for(lambda: state("on-a") == a2a_pb2.TASK_STATE_FAILED)
    assert state("on-b") == a2a_pb2.TASK_STATE_WORKING
    page = b.store.list_sync(a2a_pb2.ListTasksRequest(), "someone")
    failed = next(t for t in page.tasks if t.id == "on-a")
    assert failed.status.message.parts[0].text == DEAD_REASON


async def test_the_card_lists_every_live_replica_and_clients_fail_over(
    tmp_path: Path, pg_database: PgDatabase, start_node: NodeStarter
) -> None:
    """Each replica's agent card lists its own interfaces first, then every other live
    replica's; a client made from A's card is served by B once A has stopped."""
    from a2a.utils.constants import TransportProtocol

    from consortium.node.client import ask, fetch_agent_card, open_client
    from consortium.node.failover import FailoverClient, interfaces

    a, b, alice, _bob, _owner = await replicas_of_acme(tmp_path, pg_database, start_node)
    assert a.endpoints is not None and b.endpoints is not None

    def lists(node: Node, other: Node) -> bool:
        assert node.replicas is not None and other.endpoints is not None
        target = other.endpoints.grpc_target
        return any(
            str(url).endswith(target)
            for r in node.replicas.others
            for _, url in r.endpoints.get("interfaces", [])
        )

    assert await wait_for(lambda: lists(a, b)) and await wait_for(lambda: lists(b, a))
    card = await fetch_agent_card(a.endpoints.http_url)
    grpc_urls = interfaces(card, TransportProtocol.GRPC)
    assert grpc_urls[0].endswith(a.endpoints.grpc_target)
    assert any(u.endswith(b.endpoints.grpc_target) for u in grpc_urls[1:])
    jsonrpc = interfaces(card, TransportProtocol.JSONRPC)
    assert len(jsonrpc) == 2 and jsonrpc[0].startswith(a.endpoints.http_url)

    client = open_client(card, api_key=alice)
    try:
        assert isinstance(client, FailoverClient)
        first = await ask(client, "served by A", timeout=30)
        assert first.state == "completed"
        await a.stop()
        second = await ask(client, "served by B", timeout=30)
        assert second.state == "completed"
        assert client._order()[0] != client.urls[0]  # B took it
    finally:
        await client.close()
