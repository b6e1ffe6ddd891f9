"""Talks to a node over A2A: resolve its agent card, open an a2a-sdk client, ask and stream.

Used by `consortium ask`, the demo, the benchmarks and the tests; later by the node
itself to call peers.
"""

from __future__ import annotations

import contextlib
import ssl
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
from a2a.client import A2ACardResolver, Client, ClientCallContext, ClientConfig, ClientFactory
from a2a.client.errors import A2AClientError
from a2a.client.interceptors import AfterArgs, BeforeArgs, ClientCallInterceptor
from a2a.types import a2a_pb2
from a2a.utils.constants import TransportProtocol
from a2a.utils.errors import A2AError
from google.protobuf.json_format import MessageToDict
from pydantic import ValidationError

from consortium.errors import NodeUnavailableError, RequestRejected
from consortium.node.failover import FailoverClient, card_for, interfaces
from consortium.protocols.provenance import Provenance
from consortium.protocols.request_options import METADATA_KEY
from consortium.trust.call_proof import PROOF_HEADER


async def fetch_agent_card(
    http_url: str, timeout: float = 10.0, *, verify: ssl.SSLContext | None = None
) -> a2a_pb2.AgentCard:
    """The node's agent card; `verify`: the TLS context for an https node (our CA, and our
    certificate under mutual TLS)."""
    try:
        async with httpx.AsyncClient(timeout=timeout, verify=verify or True) as http:
            return await A2ACardResolver(http, http_url).get_agent_card()
    except (httpx.HTTPError, A2AClientError, OSError) as e:
        raise NodeUnavailableError(f"cannot fetch the agent card from {http_url}: {e}") from None


def fetch_health(
    http_url: str,
    api_key: str | None = None,
    timeout: float = 10.0,
    *,
    verify: ssl.SSLContext | None = None,
) -> dict[str, Any]:
    """The node's /healthz body (its details when the caller is on loopback or holds an
    admin API key); NodeUnavailableError when the node cannot be reached or answers
    something else."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = http_url.rstrip("/") + "/healthz"
    try:
        r = httpx.get(url, headers=headers, timeout=timeout, verify=verify or True)
        body = r.json()
    except (httpx.HTTPError, OSError, ValueError) as e:
        raise NodeUnavailableError(f"cannot read {url}: {e}") from None
    if not isinstance(body, dict) or "status" not in body:
        raise NodeUnavailableError(f"{url} answered HTTP {r.status_code} without a status")
    return body


class StaticHeaders(ClientCallInterceptor):
    """Adds fixed headers (gRPC metadata) to every call: e.g. `authorization` with an
    API key."""

    def __init__(self, headers: dict[str, str]) -> None:
        self._headers = headers

    async def before(self, args: BeforeArgs) -> None:
        if args.context is None:
            args.context = ClientCallContext()
        params = dict(args.context.service_parameters or {})
        params.update(self._headers)
        args.context.service_parameters = params

    async def after(self, args: AfterArgs) -> None:
        return None


def bearer(api_key: str) -> ClientCallInterceptor:
    return StaticHeaders({"authorization": f"Bearer {api_key}"})


def grpc_channel(
    url: str,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A gRPC channel to `url`: TLS with `credentials`, plain otherwise."""
    if credentials is None:
        return grpc.aio.insecure_channel(url, options=options)
    return grpc.aio.secure_channel(url, credentials, options=options)


def open_client(
    card: a2a_pb2.AgentCard,
    *,
    transport: str = TransportProtocol.GRPC,
    streaming: bool = True,
    credentials: grpc.ChannelCredentials | None = None,
    api_key: str | None = None,
    verify: ssl.SSLContext | None = None,
    interceptors: list[ClientCallInterceptor] | None = None,
    channel_options: Sequence[tuple[str, Any]] = (),
) -> Client:
    """An a2a-sdk client for the card's interface of the given transport (gRPC by default);
    with credentials the gRPC channel uses TLS (and a client certificate, for mTLS), with
    `verify` the HTTP client likewise; `api_key` authenticates every call;
    `channel_options`: the gRPC channel's options. A card that lists several interfaces
    of the transport (a node's replicas) gets a FailoverClient over them."""

    def channel(url: str) -> grpc.aio.Channel:
        return grpc_channel(url, credentials, channel_options)

    chain = list(interceptors or [])
    if api_key is not None:
        chain.append(bearer(api_key))

    def make(card: a2a_pb2.AgentCard) -> Client:
        config = ClientConfig(
            streaming=streaming,
            supported_protocol_bindings=[transport],
            use_client_preference=True,
            grpc_channel_factory=channel,
            httpx_client=httpx.AsyncClient(
                timeout=httpx.Timeout(300.0, connect=10.0), verify=verify or True
            ),
        )
        return ClientFactory(config).create(card, chain or None)

    # A node with several replicas lists an interface of each (node/failover.py).
    urls = interfaces(card, transport)
    if len(urls) <= 1:
        return make(card)
    return FailoverClient(urls, lambda url: make(card_for(card, url, transport)))


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
    # From the final status message; empty if it carries none this client can read.
    provenance: Provenance = field(default_factory=Provenance)
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
                # Another agent's metadata under the same key is not ours to read.
                with contextlib.suppress(ValidationError):
                    answer.provenance = Provenance.model_validate(meta)

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
    except A2AError as e:  # an error the node sent with a code the SDK knows (a refusal)
        raise RequestRejected(f"the node refused the call: {e}") from None
    answer.text = (
        "".join(parts) if parts else (answer.status_text if answer.state == "completed" else "")
    )
    answer.latency_s = time.perf_counter() - started
    return answer


# a2a-sdk client method names -> A2A method names that take a member's call proof.
PROVEN_METHODS = {
    "get_task": "GetTask",
    "list_tasks": "ListTasks",
    "cancel_task": "CancelTask",
    "subscribe": "SubscribeToTask",
}


class CallProofs(ClientCallInterceptor):
    """A member's proof on every task-method call: a signature bound to the method, its
    parameters, the recipient organization and a fresh time and nonce."""

    def __init__(self, sign: Callable[[str, Any], str]) -> None:
        self._sign = sign

    async def before(self, args: BeforeArgs) -> None:
        method = PROVEN_METHODS.get(args.method)
        if method is None:
            return
        if args.context is None:
            args.context = ClientCallContext()
        params = dict(args.context.service_parameters or {})
        params[PROOF_HEADER] = self._sign(method, args.input)
        args.context.service_parameters = params

    async def after(self, args: AfterArgs) -> None:
        return None
