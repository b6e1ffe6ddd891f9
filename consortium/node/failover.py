"""A client of an organization's node that has several replicas: its agent card lists an
interface per replica for a binding (A2A `supportedInterfaces`, in the node's order of
preference), and a call that cannot reach one replica goes to the next.

What is tried again elsewhere, and when:
- GetTask, ListTasks, CancelTask, the push-notification configs and the extended card
  are idempotent: any failure to reach a replica (gRPC UNAVAILABLE — also what a replica
  answers while it cannot reach the database —, a refused or dropped connection, a
  timeout to connect) moves the call to the next replica, each tried once.
- SendMessage and SubscribeToTask stream: they move only before the first event came
  back. A replica that streamed part of an answer and then died is not asked again by
  this client (the task's owner sees its failure, and another replica marks the task
  failed — never two answers to one message).
The replica that answered last is tried first next time. With one interface this is a
plain client. Each replica's a2a-sdk client is made on first use.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import httpx
from a2a.client import Client, ClientCallContext
from a2a.client.errors import A2AClientError, A2AClientTimeoutError
from a2a.types import a2a_pb2

_T = TypeVar("_T")


def interfaces(card: a2a_pb2.AgentCard, binding: str) -> list[str]:
    """The card's interface URLs of `binding`, in order, each once."""
    urls: list[str] = []
    for interface in card.supported_interfaces:
        if interface.protocol_binding == binding and interface.url not in urls:
            urls.append(interface.url)
    return urls


def card_for(card: a2a_pb2.AgentCard, url: str, binding: str) -> a2a_pb2.AgentCard:
    """`card` with `url` as its only interface of `binding` (what one replica's client is
    made from)."""
    single = a2a_pb2.AgentCard()
    single.CopyFrom(card)
    del single.supported_interfaces[:]
    for interface in card.supported_interfaces:
        if interface.protocol_binding != binding or interface.url == url:
            single.supported_interfaces.append(interface)
    return single


def unreachable(error: BaseException) -> bool:
    """Whether `error` means the replica could not be reached or could not serve (so the
    call did nothing there), rather than an answer."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, grpc.aio.AioRpcError):
            return bool(current.code() == grpc.StatusCode.UNAVAILABLE)
        if isinstance(current, httpx.TransportError | ConnectionError):
            return True
        if isinstance(current, A2AClientTimeoutError):
            return False  # it may be working on it
        current = current.__cause__ or current.__context__
    return False


class FailoverClient(Client):
    """One client over the replicas `urls` (see the module docstring); `make(url)` makes
    the a2a-sdk client of one replica."""

    def __init__(self, urls: list[str], make: Callable[[str], Client]) -> None:
        super().__init__()
        if not urls:
            raise ValueError("no interface to call")
        self.urls = urls
        self._make = make
        self._clients: dict[str, Client] = {}
        self._first = 0  # the replica that answered last

    def _order(self) -> list[str]:
        return self.urls[self._first :] + self.urls[: self._first]

    async def _client(self, url: str) -> Client:
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = self._make(url)
            for interceptor in self._interceptors:  # added after this client's siblings
                await client.add_interceptor(interceptor)
        return client

    def _served(self, url: str) -> None:
        self._first = self.urls.index(url)

    async def _call(self, call: Callable[[Client], Awaitable[_T]]) -> _T:
        last: BaseException | None = None
        for url in self._order():
            try:
                result = await call(await self._client(url))
            except (A2AClientError, grpc.aio.AioRpcError, httpx.TransportError) as e:
                if not unreachable(e):
                    raise
                last = e
                continue
            self._served(url)
            return result
        assert last is not None
        raise last

    async def _stream(
        self, call: Callable[[Client], AsyncIterator[a2a_pb2.StreamResponse]]
    ) -> AsyncIterator[a2a_pb2.StreamResponse]:
        last: BaseException | None = None
        for url in self._order():
            started = False
            try:
                async for event in call(await self._client(url)):
                    if not started:
                        started = True
                        self._served(url)
                    yield event
            except (A2AClientError, grpc.aio.AioRpcError, httpx.TransportError) as e:
                if started or not unreachable(e):
                    raise
                last = e
                continue
            return
        assert last is not None
        raise last

    # -- the a2a-sdk Client interface ------------------------------------------------

    async def send_message(
        self, request: a2a_pb2.SendMessageRequest, *, context: ClientCallContext | None = None
    ) -> AsyncIterator[a2a_pb2.StreamResponse]:
        async for event in self._stream(lambda c: c.send_message(request, context=context)):
            yield event

    async def subscribe(
        self, request: a2a_pb2.SubscribeToTaskRequest, *, context: ClientCallContext | None = None
    ) -> AsyncIterator[a2a_pb2.StreamResponse]:
        async for event in self._stream(lambda c: c.subscribe(request, context=context)):
            yield event

    async def get_task(
        self, request: a2a_pb2.GetTaskRequest, *, context: ClientCallContext | None = None
    ) -> a2a_pb2.Task:
        return await self._call(lambda c: c.get_task(request, context=context))

    async def list_tasks(
        self, request: a2a_pb2.ListTasksRequest, *, context: ClientCallContext | None = None
    ) -> a2a_pb2.ListTasksResponse:
        return await self._call(lambda c: c.list_tasks(request, context=context))

    async def cancel_task(
        self, request: a2a_pb2.CancelTaskRequest, *, context: ClientCallContext | None = None
    ) -> a2a_pb2.Task:
        return await self._call(lambda c: c.cancel_task(request, context=context))

    async def create_task_push_notification_config(
        self,
        request: a2a_pb2.TaskPushNotificationConfig,
        *,
        context: ClientCallContext | None = None,
    ) -> a2a_pb2.TaskPushNotificationConfig:
        return await self._call(
            lambda c: c.create_task_push_notification_config(request, context=context)
        )

    async def get_task_push_notification_config(
        self,
        request: a2a_pb2.GetTaskPushNotificationConfigRequest,
        *,
        context: ClientCallContext | None = None,
    ) -> a2a_pb2.TaskPushNotificationConfig:
        return await self._call(
            lambda c: c.get_task_push_notification_config(request, context=context)
        )

    async def list_task_push_notification_configs(
        self,
        request: a2a_pb2.ListTaskPushNotificationConfigsRequest,
        *,
        context: ClientCallContext | None = None,
    ) -> a2a_pb2.ListTaskPushNotificationConfigsResponse:
        return await self._call(
            lambda c: c.list_task_push_notification_configs(request, context=context)
        )

    async def delete_task_push_notification_config(
        self,
        request: a2a_pb2.DeleteTaskPushNotificationConfigRequest,
        *,
        context: ClientCallContext | None = None,
    ) -> None:
        await self._call(lambda c: c.delete_task_push_notification_config(request, context=context))

    async def get_extended_agent_card(
        self,
        request: a2a_pb2.GetExtendedAgentCardRequest,
        *,
        context: ClientCallContext | None = None,
        signature_verifier: Callable[[a2a_pb2.AgentCard], None] | None = None,
    ) -> a2a_pb2.AgentCard:
        return await self._call(
            lambda c: c.get_extended_agent_card(
                request, context=context, signature_verifier=signature_verifier
            )
        )

    async def add_interceptor(self, interceptor: Any) -> None:
        await super().add_interceptor(interceptor)
        for client in self._clients.values():
            await client.add_interceptor(interceptor)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
