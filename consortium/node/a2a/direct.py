"""Message-only exchanges: requests an executor answers with one Message and no task.

A2A lets an agent answer SendMessage with a Message instead of a Task. For exchanges that
are over in one step (a peer asking for multiple-choice scores, an acknowledgement) the
node calls the executor's `reply` directly, without a2a-sdk's task machinery (active
task, event queues, task store), which costs a few times a whole gRPC round trip
(benchmarks/messaging.py). A request that names a task, or asks for push notifications,
and every request `reply` declines (returns None), takes the full task path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from a2a.server.context import ServerCallContext
from a2a.types import a2a_pb2


class DirectReplies(ABC):
    """Mixin for an AgentExecutor that can answer some messages on the spot."""

    @abstractmethod
    async def reply(
        self, message: a2a_pb2.Message, context: ServerCallContext
    ) -> a2a_pb2.Message | None:
        """The whole answer to `message` as one Message, or None for the task path.

        Runs after verification, like `execute`: a verified peer request is in
        `context.state` under `federated.VERIFIED_KEY`, and a reply to it must be signed.
        """


def may_reply_directly(params: a2a_pb2.SendMessageRequest) -> bool:
    """A request that continues a task or registers a push endpoint needs the task path."""
    return not params.message.task_id and not params.configuration.HasField(
        "task_push_notification_config"
    )
