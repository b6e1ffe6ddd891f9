"""A card listing several interfaces of a binding (a node's replicas) gets a client that
moves a call to the next replica when one cannot be reached — on gRPC and JSON-RPC —,
remembers the one that answered, and does not retry what is an answer (NOT_FOUND) or a
stream that already began."""

from __future__ import annotations

import socket

import pytest
from a2a.client.errors import A2AClientError
from a2a.types import a2a_pb2
from a2a.utils.constants import PROTOCOL_VERSION_CURRENT, TransportProtocol

from consortium.errors import NodeUnavailableError
from consortium.node.app import Node
from consortium.node.client import ask, fetch_agent_card, open_client
from consortium.node.failover import FailoverClient, card_for, interfaces
from tests.conftest import NodeStarter


def dead_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def replica_card(node: Node, binding: str, dead: str) -> a2a_pb2.AgentCard:
    """The node's card with a dead replica's interface listed first for `binding`."""
    assert node.endpoints is not None
    card = await fetch_agent_card(node.endpoints.http_url)
    first = a2a_pb2.AgentInterface(
        url=dead, protocol_binding=binding, protocol_version=PROTOCOL_VERSION_CURRENT
    )
    interfaces_ = [first, *card.supported_interfaces]
    del card.supported_interfaces[:]
    card.supported_interfaces.extend(interfaces_)
    return card


def test_interfaces_and_single_cards() -> None:
    card = a2a_pb2.AgentCard(name="acme")
    for url, binding in (
        ("a:1", TransportProtocol.GRPC),
        ("http://a/", TransportProtocol.JSONRPC),
        ("b:1", TransportProtocol.GRPC),
        ("a:1", TransportProtocol.GRPC),
    ):
        card.supported_interfaces.append(a2a_pb2.AgentInterface(url=url, protocol_binding=binding))
    assert interfaces(card, TransportProtocol.GRPC) == ["a:1", "b:1"]
    single = card_for(card, "b:1", TransportProtocol.GRPC)
    assert [i.url for i in single.supported_interfaces] == ["http://a/", "b:1"]
    with pytest.raises(ValueError, match="no interface"):
        FailoverClient([], lambda url: None)  # type: ignore[arg-type, return-value]


@pytest.mark.parametrize(
    ("binding", "dead"),
    [
        (TransportProtocol.GRPC, "127.0.0.1:{port}"),
        (TransportProtocol.JSONRPC, "http://127.0.0.1:{port}/"),
    ],
)
async def test_a_dead_replica_is_skipped(start_node: NodeStarter, binding: str, dead: str) -> None:
    node = await start_node()
    card = await replica_card(node, binding, dead.format(port=dead_port()))
    client = open_client(card, transport=binding)
    try:
        assert isinstance(client, FailoverClient) and len(client.urls) == 2
        answer = await ask(client, "over the second replica", timeout=30)
        assert answer.state == "completed" and answer.text.strip()
        # The replica that answered is tried first from now on.
        assert client._order()[0] == client.urls[1]
        task = await client.get_task(a2a_pb2.GetTaskRequest(id=answer.task_id))
        assert task.id == answer.task_id
        # An answer is not a reason to try elsewhere: NOT_FOUND comes straight back.
        with pytest.raises(Exception) as e:
            await client.get_task(a2a_pb2.GetTaskRequest(id="no-such-task"))
        assert "not found" in str(e.value).lower()
    finally:
        await client.close()


async def test_no_replica_reachable_is_a_clear_error() -> None:
    card = a2a_pb2.AgentCard(name="acme", capabilities=a2a_pb2.AgentCapabilities(streaming=True))
    for _ in range(2):
        card.supported_interfaces.append(
            a2a_pb2.AgentInterface(
                url=f"127.0.0.1:{dead_port()}",
                protocol_binding=TransportProtocol.GRPC,
                protocol_version=PROTOCOL_VERSION_CURRENT,
            )
        )
    client = open_client(card)
    try:
        with pytest.raises((NodeUnavailableError, A2AClientError)):
            await ask(client, "anyone?", timeout=10)
    finally:
        await client.close()
