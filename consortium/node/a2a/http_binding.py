"""The A2A JSON-RPC binding over HTTP: a Starlette app on uvicorn serving the agent card
and JSON-RPC, behind the strict request guard (size limit, content type, strict JSON,
A2A-Version); bodies over the size limit get HTTP 413. Other APIs can share the port
(`MountedApi`: the OpenAI-compatible one under /v1), guarded in their own words."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

import uvicorn
from a2a.server.request_handlers import RequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.types import a2a_pb2
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from consortium.logsafe import quiet_jsonrpc_client_errors
from consortium.node.a2a.agent_card import JSONRPC_PATH
from consortium.node.a2a.http_guard import Renderer, RequestGuard
from consortium.node.auth import TLS_NAMES_STATE, HttpContextBuilder
from consortium.trust.tls import certificate_names


class CardLastModified:
    """ASGI middleware: the agent card carries Last-Modified (when this node started)."""

    def __init__(self, app: ASGIApp, path: str) -> None:
        self.app = app
        self.path = path
        self.value = formatdate(usegmt=True).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != self.path:
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"last-modified", self.value)],
                }
            await send(message)

        await self.app(scope, receive, send_with_header)


@dataclass(frozen=True)
class MountedApi:
    """Another API on the HTTP port: its routes (full paths, all under `prefix`) and how
    it words the request guard's refusals."""

    prefix: str
    routes: Sequence[BaseRoute]
    refusal: Renderer


def http_app(
    card: a2a_pb2.AgentCard,
    handler: RequestHandler,
    *,
    card_max_age_s: int,
    max_message_bytes: int,
    healthz: Callable[[Request], Awaitable[Response]],
    apis: Sequence[MountedApi] = (),
    card_modifier: Callable[[a2a_pb2.AgentCard], Awaitable[a2a_pb2.AgentCard]] | None = None,
) -> ASGIApp:
    """The agent card (as `card_modifier` makes it for each request, if given: a node's
    replicas), JSON-RPC, `/healthz` and the `apis`, behind the request guard."""
    quiet_jsonrpc_client_errors()  # a client's mistake is not the node's error
    app = Starlette(
        routes=[
            *create_agent_card_routes(
                card,
                card_modifier=card_modifier,
                cache_control=f"public, max-age={card_max_age_s}",
            ),
            *create_jsonrpc_routes(
                handler, rpc_url=JSONRPC_PATH, context_builder=HttpContextBuilder()
            ),
            Route("/healthz", healthz, methods=["GET"]),
            *(route for api in apis for route in api.routes),
        ]
    )
    guard = RequestGuard(app, max_message_bytes, apis={api.prefix: api.refusal for api in apis})
    return CardLastModified(guard, AGENT_CARD_WELL_KNOWN_PATH)


# Connections the kernel completes before the server accepts them: a burst of clients
# connecting at once beyond it waits for SYN retransmissions (1 s, 3 s...). The kernel
# caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024


def bind_tcp(host: str, port: int) -> socket.socket:
    """A listening socket whose connections send without Nagle's delay. asyncio sets
    TCP_NODELAY on an accepted socket only when its protocol says IPPROTO_TCP, which a
    socket made with protocol 0 does not: uvicorn writes a response's headers and body in
    two sends, so on a keep-alive connection the body waited for the client's delayed ACK
    (~40 ms per request)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


class PeerCertificateProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP protocol, telling the app whose TLS client certificate a connection
    presented: its names go into each request's scope state (TLS_NAMES_STATE), as gRPC's
    auth context carries them, so that both bindings hold a member to its certificate.
    uvicorn copies `app_state` into every request's scope; this connection's copy adds
    the names."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        peercert = ssl_object.getpeercert() if ssl_object is not None else None
        state: dict[str, Any] = self.app_state  # type: ignore[has-type]
        self.app_state = {**state, TLS_NAMES_STATE: certificate_names(peercert)}
        super().connection_made(transport)


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the node's owner decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def http_server(
    app: ASGIApp, *, grace_s: float, tls: dict[str, Any], keep_alive_s: float = 75.0
) -> QuietServer:
    """A uvicorn server for `app`; `tls`: uvicorn's TLS options (empty: plain HTTP).

    `keep_alive_s`: how long an idle keep-alive connection stays open. A client that
    sends its next request just as the server closes the connection gets a reset and no
    answer (httpx: ReadError); uvicorn's default of 5 s equals httpx's (and the OpenAI
    SDK's) own idle expiry, so that race was lost whenever a client paused about 5 s.
    Longer than the common clients' expiry (httpx 5 s, aiohttp 15 s, Node 4 s), the
    client closes first and never sends on a connection the server is closing."""
    return QuietServer(
        uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_keep_alive=max(1, round(keep_alive_s)),
            timeout_graceful_shutdown=int(grace_s) or None,
            http=PeerCertificateProtocol,
            **tls,
        )
    )


async def serve_http(server: QuietServer, sock: socket.socket) -> asyncio.Task[None]:
    """Serves on `sock`; returns once the server accepts connections."""
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise OSError("HTTP server stopped during start-up")
        await asyncio.sleep(0.01)
    return task
