"""Each OpenAI-style completion request as an A2A task in the node's task store, owned
by the caller (`Caller.owner`), so that A2A GetTask / ListTasks with the same API key
show it and no other caller sees it.

The task's one user message holds what the node answered from: the prompt of a text
completion, the user's text of a one-turn chat, or the whole conversation flattened
(`Role: content` turns, what a peer would be sent) for a longer one. Its state goes
submitted -> working -> completed (the answer as the `answer` artifact and as the status
message, both with the provenance in metadata["consortium"], as the A2A executor
stores it), or rejected / failed (the reason in the status message), or canceled when
the client went away mid-stream. Task metadata["openai"] names the response id, its
object and the model asked for.
"""

from __future__ import annotations

import uuid
from typing import Any

from a2a.types import a2a_pb2

from consortium.node.store import NodeTaskStore
from consortium.protocols.provenance import Provenance
from consortium.protocols.request_options import METADATA_KEY

OPENAI_KEY = "openai"


class TaskRecord:
    """One request's task, saved at every change of state (off the event loop; only
    `canceled`, run as the client goes away, where nothing may be awaited any more, writes
    from the caller's thread)."""

    def __init__(self, store: NodeTaskStore, owner: str) -> None:
        self._store = store
        self._owner = owner
        self.id = str(uuid.uuid4())
        self._context_id = str(uuid.uuid4())
        self.finished = False

    async def submitted(self, text: str, metadata: dict[str, Any]) -> None:
        task = a2a_pb2.Task(
            id=self.id,
            context_id=self._context_id,
            status=a2a_pb2.TaskStatus(state=a2a_pb2.TASK_STATE_SUBMITTED),
            history=[
                a2a_pb2.Message(
                    message_id=str(uuid.uuid4()),
                    role=a2a_pb2.ROLE_USER,
                    parts=[a2a_pb2.Part(text=text)],
                    task_id=self.id,
                    context_id=self._context_id,
                )
            ],
        )
        task.metadata.update({OPENAI_KEY: metadata})
        self._task = task
        await self._save()

    async def working(self) -> None:
        self._task.status.state = a2a_pb2.TASK_STATE_WORKING
        await self._save()

    async def completed(self, text: str, provenance: Provenance | None) -> None:
        metadata = {METADATA_KEY: provenance.wire()} if provenance is not None else None
        artifact = a2a_pb2.Artifact(
            artifact_id=str(uuid.uuid4()), name="answer", parts=[a2a_pb2.Part(text=text)]
        )
        if metadata:
            artifact.metadata.update(metadata)
        self._task.artifacts.append(artifact)
        await self._finish(a2a_pb2.TASK_STATE_COMPLETED, text, metadata)

    async def rejected(self, reason: str) -> None:
        await self._finish(a2a_pb2.TASK_STATE_REJECTED, f"rejected: {reason}")

    async def failed(self, reason: str, provenance: Provenance | None = None) -> None:
        metadata = {METADATA_KEY: provenance.wire()} if provenance is not None else None
        await self._finish(a2a_pb2.TASK_STATE_FAILED, f"failed: {reason}", metadata)

    def canceled(self, reason: str) -> None:
        if self._ended(a2a_pb2.TASK_STATE_CANCELED, reason):
            self._task.status.timestamp.GetCurrentTime()
            self._store.save_sync(self._task, self._owner)

    async def _finish(self, state: int, text: str, metadata: dict[str, Any] | None = None) -> None:
        if self._ended(state, text, metadata):
            await self._save()

    def _ended(self, state: int, text: str, metadata: dict[str, Any] | None = None) -> bool:
        """Sets the final state and message; False if the task had already ended."""
        if self.finished:
            return False
        self.finished = True
        message = a2a_pb2.Message(
            message_id=str(uuid.uuid4()),
            role=a2a_pb2.ROLE_AGENT,
            parts=[a2a_pb2.Part(text=text)],
            task_id=self.id,
            context_id=self._context_id,
        )
        if metadata:
            message.metadata.update(metadata)
        self._task.status.state = state  # type: ignore[assignment]
        self._task.status.message.CopyFrom(message)
        return True

    async def _save(self) -> None:
        self._task.status.timestamp.GetCurrentTime()
        await self._store.save_as(self._task, self._owner)
