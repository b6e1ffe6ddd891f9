"""An executor for A2A conformance runs (a2aproject/a2a-tck, branch 1.0-dev).

The TCK drives an agent's behaviour in-band: the prefix of a message's id names a
scenario (complete the task, add a file artifact, ask for input, ...). With
`node.executor = "a2a-tck"` the node answers those scenarios itself and passes every
other message to the model executor, so a conformance run exercises exactly the
protocol stack the node serves in production: the gRPC and JSON-RPC bindings, the
request handler and the SQLite task store. It is a testing aid, never a default.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from a2a.helpers.proto_helpers import new_task_from_user_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.tasks.task_updater import TaskUpdater
from a2a.types import a2a_pb2
from a2a.utils.errors import A2AError
from google.protobuf import struct_pb2

STREAMING_TIMEOUT_S = 2.0

Step = Callable[[TaskUpdater, EventQueue], Awaitable[None]]


def _text(text: str) -> a2a_pb2.Part:
    return a2a_pb2.Part(text=text)


def _artifact(*parts: a2a_pb2.Part, append: bool | None = None, last: bool | None = None) -> Step:
    async def step(u: TaskUpdater, _: EventQueue) -> None:
        await u.add_artifact(list(parts), append=append, last_chunk=last)

    return step


def _complete(text: str | None = None) -> Step:
    async def step(u: TaskUpdater, _: EventQueue) -> None:
        await u.complete(u.new_agent_message([_text(text)]) if text else None)

    return step


def _state(name: str) -> Step:
    async def step(u: TaskUpdater, _: EventQueue) -> None:
        await getattr(u, name)()

    return step


def _sleep(seconds: float) -> Step:
    async def step(u: TaskUpdater, _: EventQueue) -> None:
        await asyncio.sleep(seconds)

    return step


async def _reject(u: TaskUpdater, _: EventQueue) -> None:
    raise A2AError("rejected")


def _data(value: dict[str, Any]) -> a2a_pb2.Part:
    v = struct_pb2.Value()
    v.struct_value.update(value)
    return a2a_pb2.Part(data=v)


FILE = a2a_pb2.Part(raw=b"tck", media_type="text/plain", filename="output.txt")
FILE_URL = a2a_pb2.Part(
    url="https://example.com/output.txt", media_type="text/plain", filename="output.txt"
)
WORKING = _state("start_work")

# Scenario prefix -> the steps the agent takes (scenarios/*.feature in the TCK).
SCENARIOS: dict[str, list[Step]] = {
    "tck-complete-task": [_complete("Hello from TCK")],
    "tck-artifact-text": [_artifact(_text("Generated text content")), _complete()],
    "tck-artifact-file": [_artifact(FILE), _complete()],
    "tck-artifact-file-url": [_artifact(FILE_URL), _complete()],
    "tck-artifact-data": [_artifact(_data({"key": "value", "count": 42})), _complete()],
    "tck-input-required": [_state("requires_input")],
    "tck-reject-task": [_reject],
    "tck-stream-001": [WORKING, _artifact(_text("Stream hello from TCK")), _complete()],
    "tck-stream-002": [_complete()],
    "tck-stream-003": [WORKING, _artifact(_text("Stream task lifecycle")), _complete()],
    "tck-stream-ordering-001": [WORKING, _artifact(_text("Ordered output")), _complete()],
    "tck-stream-artifact-text": [WORKING, _artifact(_text("Streamed text content")), _complete()],
    "tck-stream-artifact-file": [WORKING, _artifact(FILE), _complete()],
    "tck-stream-artifact-chunked": [
        WORKING,
        _artifact(_text("chunk-1 ")),
        _artifact(_text("chunk-2"), append=True, last=True),
        _complete(),
    ],
    "test-resubscribe-message-id": [WORKING, _sleep(2 * STREAMING_TIMEOUT_S), _complete()],
}
MESSAGE_RESPONSE = "tck-message-response"


def scenario_for(message_id: str) -> str | None:
    """The longest scenario prefix the message id starts with."""
    matches = [p for p in (*SCENARIOS, MESSAGE_RESPONSE) if message_id.startswith(p)]
    return max(matches, key=len) if matches else None


class ConformanceExecutor(AgentExecutor):
    def __init__(self, fallback: AgentExecutor) -> None:
        self._fallback = fallback

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        message = context.message
        scenario = scenario_for(message.message_id) if message else None
        if message is None or scenario is None:
            await self._fallback.execute(context, event_queue)
            return
        task = context.current_task
        if scenario == MESSAGE_RESPONSE:
            reply = a2a_pb2.Message(
                message_id=f"reply-{message.message_id}",
                role=a2a_pb2.ROLE_AGENT,
                parts=[_text("Direct message response")],
                context_id=context.context_id or "",
            )
            await event_queue.enqueue_event(reply)
            return
        if task is None:
            task = new_task_from_user_message(message)
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        for step in SCENARIOS[scenario]:
            await step(updater, event_queue)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        await self._fallback.cancel(context, event_queue)
