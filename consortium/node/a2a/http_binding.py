"""The A2A JSON-RPC binding over HTTP: a Starlette app on uvicorn serving the agent card
and JSON-RPC, behind the strict request guard (size limit, content type, strict JSON,
A2A-Version); bodies over the size limit get HTTP 413."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from email.utils import formatdate

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send


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


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the node's owner decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
