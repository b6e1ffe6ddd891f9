"""Talks to a node over A2A: resolve its agent card, open an a2a-sdk client, ask and stream.

Used by `consortium ask`, the demo, the benchmarks and the tests; later by the node
itself to call peers.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
from a2a.client import A2ACardResolver, Client, ClientCallContext, ClientConfig, ClientFactory
from a2a.client.errors import A2AClientError
from a2a.types import a2a_pb2
from a2a.utils.constants import TransportProtocol
from google.protobuf.json_format import MessageToDict

from consortium.errors import NodeUnavailableError
from consortium.node.executor_options import METADATA_KEY


async def fetch_agent_card(http_url: str, timeout: float = 10.0) -> a2a_pb2.AgentCard:
    try:
        async with httpx.AsyncClient(timeout=timeout) as http:
            return await A2ACardResolver(http, http_url).get_agent_card()
    except (httpx.HTTPError, A2AClientError, OSError) as e:
        raise NodeUnavailableError(f"cannot fetch the agent card from {http_url}: {e}") from None


def open_client(
    card: a2a_pb2.AgentCard,
    *,
    transport: str = TransportProtocol.GRPC,
    streaming: bool = True,
    credentials: grpc.ChannelCredentials | None = None,
) -> Client:
    """An a2a-sdk client for the card's interface of the given transport (gRPC by default);
    with credentials the gRPC channel uses TLS (and a client certificate, for mTLS)."""

    def channel(url: str) -> grpc.aio.Channel:
        if credentials is None:
            return grpc.aio.insecure_channel(url)
        return grpc.aio.secure_channel(url, credentials)

    config = ClientConfig(
        streaming=streaming,
        supported_protocol_bindings=[transport],
        use_client_preference=True,
        grpc_channel_factory=channel,
        httpx_client=httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=10.0)),
    )
    return ClientFactory(config).create(card)


def text_message(text: str, metadata: dict[str, Any] | None = None) -> a2a_pb2.Message:
    msg = a2a_pb2.Message(
        message_id=str(uuid.uuid4()), role=a2a_pb2.ROLE_USER, parts=[a2a_pb2.Part(text=text)]
    )
    if metadata:
        msg.metadata.update(metadata)
    return msg


@dataclass
class Answer:
    task_id: str
    state: str
    text: str
    provenance: dict[str, Any] = field(default_factory=dict)
    status_text: str = ""
    latency_s: float = 0.0
    states_seen: list[str] = field(default_factory=list)


def _state_name(state: int) -> str:
    return a2a_pb2.TaskState.Name(state).removeprefix("TASK_STATE_").lower()


async def ask(
    client: Client,
    text: str,
    *,
    options: dict[str, Any] | None = None,
    on_text: Callable[[str], None] | None = None,
    on_task: Callable[[str], None] | None = None,
    timeout: float | None = None,
    sign: Callable[[a2a_pb2.Message], a2a_pb2.Message] | None = None,
) -> Answer:
    """Sends one question and follows the task to its end, streaming answer text to on_text."""
    started = time.perf_counter()
    metadata = {METADATA_KEY: options} if options else None
    message = text_message(text, metadata)
    request = a2a_pb2.SendMessageRequest(message=sign(message) if sign else message)
    answer = Answer(task_id="", state="unknown", text="")
    parts: list[str] = []
    context = ClientCallContext(timeout=timeout) if timeout else None

    def take_status(status: a2a_pb2.TaskStatus) -> None:
        name = _state_name(status.state)
        if not answer.states_seen or answer.states_seen[-1] != name:
            answer.states_seen.append(name)
        answer.state = name
        if status.HasField("message"):
            answer.status_text = "".join(p.text for p in status.message.parts)
            meta = MessageToDict(status.message.metadata).get(METADATA_KEY)
            if isinstance(meta, dict):
                answer.provenance = meta

    try:
        async for event in client.send_message(request, context=context):
            kind = event.WhichOneof("payload")
            if kind == "task":
                if not answer.task_id:
                    answer.task_id = event.task.id
                    if on_task:
                        on_task(event.task.id)
                take_status(event.task.status)
                if not parts:
                    for artifact in event.task.artifacts:
                        parts.extend(p.text for p in artifact.parts)
            elif kind == "status_update":
                answer.task_id = answer.task_id or event.status_update.task_id
                take_status(event.status_update.status)
            elif kind == "artifact_update":
                chunk = "".join(p.text for p in event.artifact_update.artifact.parts)
                if chunk:
                    parts.append(chunk)
                    if on_text:
                        on_text(chunk)
            elif kind == "message":
                answer.state = "completed"
                parts.append("".join(p.text for p in event.message.parts))
    except A2AClientError as e:
        raise NodeUnavailableError(f"A2A call failed: {e}") from None
    answer.text = (
        "".join(parts) if parts else (answer.status_text if answer.state == "completed" else "")
    )
    answer.latency_s = time.perf_counter() - started
    return answer
