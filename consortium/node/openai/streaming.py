"""Server-sent events as OpenAI streams them (`data: {json}` events, `data: [DONE]` at
the end), from an async generator that is closed as soon as the client goes away, and
`until_disconnect`, which stops whatever a request is waiting for when its client goes
away: the disconnect is watched for while the request works, so a generation stops
before its next token even when nothing is being written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from starlette.types import Receive, Scope, Send

DONE = b"data: [DONE]\n\n"


def event(data: Any) -> bytes:
    """One event; JSON with non-ASCII escaped, so any text encodes."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


class ClientGone(Exception):
    """The client disconnected before its response was complete."""


@contextlib.asynccontextmanager
async def until_disconnect(receive: Receive) -> AsyncIterator[None]:
    """Runs the body in the current task while a side task watches for the client's
    disconnect; if it comes, the body is cancelled (its awaits raise CancelledError, its
    cleanup runs) and ClientGone is raised in its place. Staying in the request's own
    task keeps context the body attached (the service's spans) detachable."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _disconnected(receive)
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        yield
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
        raise ClientGone from None
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        if gone and task.cancelling():
            task.uncancel()  # the disconnect came as the body finished


class EventStream:
    """An ASGI response sending the byte strings of `events` as they come, in the
    request's own task, until the client goes away (then `events` is closed)."""

    def __init__(self, events: AsyncGenerator[bytes, None]) -> None:
        self._events = events
        self._closing: list[Callable[[], None]] = []

    def on_close(self, callback: Callable[[], None]) -> None:
        """Calls `callback` once the stream has ended, however it ends."""
        self._closing.append(callback)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with contextlib.suppress(ClientGone):
                async with until_disconnect(receive):
                    await self._send(send)
        finally:
            for callback in self._closing:
                callback()

    async def _send(self, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        async with contextlib.aclosing(self._events) as events:
            async for data in events:
                await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
