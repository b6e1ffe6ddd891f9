"""Message-only exchanges answered without a task (consortium/node/a2a/direct.py), through the
node's request handler with a real SQLite task store."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.context import ServerCallContext
from a2a.server.events import EventQueue
from a2a.types import a2a_pb2
from a2a.utils.errors import InvalidParamsError, TaskNotFoundError
from opentelemetry.trace import NoOpTracer

from consortium.federation.roster import Member, MemberKey, Roster
from consortium.node.a2a.agent_card import build_agent_card
from consortium.node.a2a.direct import DirectReplies
from consortium.node.a2a.errors import UnauthenticatedError
from consortium.node.a2a.request_handler import VERIFIED_KEY, NodeRequestHandler
from consortium.node.auth import ANONYMOUS, CREDENTIALS_KEY, CallerUser, Credentials
from consortium.node.client import text_message
from consortium.node.store import SqliteTaskStore
from consortium.trust.admission import MessageVerifier, Verified
from consortium.trust.keys import generate_key, public_jwk
from consortium.trust.replay import ReplayCache
from consortium.trust.signing import SigningIdentity, sign_request


class Quick(AgentExecutor, DirectReplies):
    """Replies directly to messages starting with 'quick'; the rest become tasks."""

    def __init__(self) -> None:
        self.replied: list[str] = []
        self.executed: list[str] = []
        self.verified: list[object] = []
        self.tenants: list[str] = []

    async def reply(
        self, message: a2a_pb2.Message, context: ServerCallContext
    ) -> a2a_pb2.Message | None:
        text = message.parts[0].text
        if not text.startswith("quick"):
            return None
        self.replied.append(text)
        self.verified.append(context.state.get(VERIFIED_KEY))
        self.tenants.append(context.tenant)
        return a2a_pb2.Message(
            message_id=str(uuid.uuid4()),
            role=a2a_pb2.ROLE_AGENT,
            parts=[a2a_pb2.Part(text=text.upper())],
        )

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.message is not None and context.task_id and context.context_id
        self.executed.append(context.message.parts[0].text)
        self.tenants.append(context.tenant)
        task = a2a_pb2.Task(
            id=context.task_id,
            context_id=context.context_id,
            status=a2a_pb2.TaskStatus(state=a2a_pb2.TASK_STATE_COMPLETED),
        )
        await event_queue.enqueue_event(task)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        pass


def handler(
    tmp: Path, executor: Quick, verifier: MessageVerifier | None = None
) -> tuple[NodeRequestHandler, SqliteTaskStore]:
    store = SqliteTaskStore(tmp / "tasks.sqlite3")
    card = build_agent_card(
        org_id="acme",
        display_name="Acme",
        description="test",
        grpc_url="127.0.0.1:1",
        http_url="http://127.0.0.1:1",
        model_name="echo",
        model_backend="echo",
        context_size=0,
    )
    return (
        NodeRequestHandler(
            agent_executor=executor,
            task_store=store,
            agent_card=card,
            tracer=NoOpTracer(),
            verifier=verifier,
            anonymous_loopback=True,
        ),
        store,
    )


def local() -> ServerCallContext:
    """The call context of an anonymous caller on loopback."""
    return ServerCallContext(state={CREDENTIALS_KEY: Credentials(loopback=True)})


async def listed(store: SqliteTaskStore) -> int:
    scope = ServerCallContext(user=CallerUser(ANONYMOUS))
    result = await store.list(a2a_pb2.ListTasksRequest(), scope)
    return len(result.tasks)


async def test_a_direct_reply_is_returned_as_a_message_and_creates_no_task(
    tmp_path: Path,
) -> None:
    executor = Quick()
    h, store = handler(tmp_path, executor)
    result = await h.on_message_send(
        a2a_pb2.SendMessageRequest(message=text_message("quick one")), local()
    )
    assert isinstance(result, a2a_pb2.Message)
    assert result.parts[0].text == "QUICK ONE"
    assert executor.replied == ["quick one"] and executor.executed == []
    assert await listed(store) == 0


async def test_a_declined_reply_takes_the_task_path(tmp_path: Path) -> None:
    executor = Quick()
    h, store = handler(tmp_path, executor)
    result = await h.on_message_send(
        a2a_pb2.SendMessageRequest(message=text_message("slow one")), local()
    )
    assert isinstance(result, a2a_pb2.Task)
    assert result.status.state == a2a_pb2.TASK_STATE_COMPLETED
    assert executor.executed == ["slow one"] and executor.replied == []
    assert await listed(store) == 1


async def test_a_message_naming_a_task_never_replies_directly(tmp_path: Path) -> None:
    executor = Quick()
    h, _ = handler(tmp_path, executor)
    message = text_message("quick but for a task")
    message.task_id = "no-such-task"
    with pytest.raises(TaskNotFoundError):
        await h.on_message_send(a2a_pb2.SendMessageRequest(message=message), local())
    assert executor.replied == []


async def test_a_malformed_message_is_refused_before_the_reply(tmp_path: Path) -> None:
    executor = Quick()
    h, _ = handler(tmp_path, executor)
    message = a2a_pb2.Message(role=a2a_pb2.ROLE_USER, parts=[a2a_pb2.Part(text="quick")])
    with pytest.raises(InvalidParamsError):
        await h.on_message_send(a2a_pb2.SendMessageRequest(message=message), local())
    assert executor.replied == []


def globex_to_acme(tmp: Path) -> tuple[MessageVerifier, Any]:
    """acme's verifier in a federation of acme and globex, and globex's signing key."""
    sender, own = generate_key(), generate_key()

    def member(org: str, key: object) -> Member:
        pub = public_jwk(key)  # type: ignore[arg-type]
        return Member(org_id=org, keys=[MemberKey(kid=pub["kid"], x=pub["x"])])

    roster = Roster(
        federation_id="fed", name="Fed", members=[member("globex", sender), member("acme", own)]
    )
    verifier = MessageVerifier(
        org_id="acme", roster=lambda: roster, replay=ReplayCache(tmp / "replay.sqlite3")
    )
    return verifier, sender


async def test_a_direct_reply_runs_only_after_verification(tmp_path: Path) -> None:
    verifier, sender = globex_to_acme(tmp_path)
    executor = Quick()
    h, _ = handler(tmp_path, executor, verifier)
    with pytest.raises(UnauthenticatedError):
        await h.on_message_send(
            a2a_pb2.SendMessageRequest(message=text_message("quick unsigned")),
            ServerCallContext(state={CREDENTIALS_KEY: Credentials(loopback=False)}),
        )
    assert executor.replied == [] and h.refusals["unsigned"] == 1
    signed = sign_request(
        text_message("quick signed"), SigningIdentity(sender, "globex", "fed"), recipient="acme"
    )[0]
    result = await h.on_message_send(a2a_pb2.SendMessageRequest(message=signed), local())
    assert isinstance(result, a2a_pb2.Message) and result.parts[0].text == "QUICK SIGNED"
    (verified,) = executor.verified
    assert isinstance(verified, Verified) and verified.claims.sender == "globex"


@pytest.mark.parametrize("text", ["quick reply", "a task"])
async def test_a_members_unsigned_tenant_is_dropped(tmp_path: Path, text: str) -> None:
    # The signature covers the message only: a tenant added on the way (or by the
    # sender, unsigned) reaches neither the reply nor the task.
    verifier, sender = globex_to_acme(tmp_path)
    executor = Quick()
    h, _ = handler(tmp_path, executor, verifier)
    signed = sign_request(
        text_message(text), SigningIdentity(sender, "globex", "fed"), recipient="acme"
    )[0]
    context = local()
    context.tenant = "tampered"  # as the binding copies it from the request
    await h.on_message_send(a2a_pb2.SendMessageRequest(message=signed, tenant="tampered"), context)
    assert executor.tenants == [""]
    # A local caller's request is its own, tenant included.
    await h.on_message_send(
        a2a_pb2.SendMessageRequest(message=text_message(text), tenant="mine"),
        ServerCallContext(tenant="mine", state={CREDENTIALS_KEY: Credentials(loopback=True)}),
    )
    assert executor.tenants == ["", "mine"]
