"""Server-sent events as OpenAI streams them (`data: {json}` events, `data: [DONE]` at
the end), from an async generator that is closed as soon as the client goes away: the
response watches for the disconnect while it sends, so a generation stops before its
next token even when no chunk is being written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from typing import Any

from starlette.types import Receive, Scope, Send

DONE = b"data: [DONE]\n\n"


def event(data: Any) -> bytes:
    """One event; JSON with non-ASCII escaped, so any text encodes."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


class EventStream:
    """An ASGI response sending the byte strings of `events` as they come.

    The events are iterated in the request's own task (the one that started them), so
    context the service attached while starting (its spans) is detached in the same
    context; a side task watches for the client's disconnect and cancels the sending."""

    def __init__(self, events: AsyncGenerator[bytes, None]) -> None:
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender = asyncio.current_task()
        assert sender is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            await _disconnected(receive)
            gone = True
            sender.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await self._send(send)
        except asyncio.CancelledError:
            if not gone:
                raise
            sender.uncancel()  # the client went away: nothing left to send
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if gone and sender.cancelling():
                sender.uncancel()  # the disconnect came as the last event was sent

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
