"""Members attacking each other, on three nodes of one federation (loopback, echo models):
task methods need a member's signed call proof and show only its own tasks; nobody
continues another's task; answers never pass as requests; request-level fields outside
the signature are ignored; under mutual TLS the HTTP port is as closed as gRPC, and a
member's certificate must name it. Every case on both bindings."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from a2a.types import a2a_pb2, a2a_pb2_grpc
from google.protobuf.json_format import MessageToDict

from consortium.node.app import Node
from consortium.node.client import CallProofs, open_client, text_message
from consortium.trust.call_proof import PROOF_HEADER
from consortium.trust.keys import load_private_key
from consortium.trust.signing import Signer, SigningIdentity, sign_answer
from tests.integration.test_federation import Federation

FED = "test-federation"


def signer(node: Node) -> Signer:
    cfg = node.config
    key = load_private_key(cfg.resolve(cfg.identity.private_key))
    return Signer(SigningIdentity(key, cfg.node.org_id, FED))


@pytest.fixture
async def fed(tmp_path: Path) -> Any:
    f = Federation(tmp_path)
    try:
        await f.start()
        yield f
    finally:
        await f.stop()


class Member:
    """One organization calling another organization's node directly."""

    def __init__(self, fed: Federation, org: str, target: str, cert_of: str = "") -> None:
        self.fed = fed
        self.org = org
        # Whose TLS client certificate the calls present (under mTLS): its own by default.
        self.cert_holder = fed.nodes[cert_of or org]
        self.node = fed.nodes[target]
        self.target = target
        self.signer = signer(fed.nodes[org])
        assert self.node.endpoints is not None
        self.ep = self.node.endpoints

    def proof(self, method: str, request: Any) -> str:
        return self.signer.sign_call(method, request, self.target)

    def signed(self, text: str, **fields: Any) -> a2a_pb2.Message:
        message = text_message(text)
        for k, v in fields.items():
            setattr(message, k, v)
        return self.signer.sign_request(message, self.target)[0]

    async def grpc(self, method: str, request: Any, proof: str | None = None) -> tuple[str, Any]:
        metadata = ((PROOF_HEADER, proof),) if proof else ()
        async with channel_as(self.cert_holder, self.node) as channel:
            stub = a2a_pb2_grpc.A2AServiceStub(channel)
            try:
                call = getattr(stub, method)(request, metadata=metadata)
                if method in ("SendStreamingMessage", "SubscribeToTask"):
                    return "ok", [e async for e in call]
                return "ok", await call
            except grpc.aio.AioRpcError as e:
                return e.code().name, None

    async def jsonrpc(self, method: str, request: Any, proof: str | None = None) -> tuple[str, Any]:
        headers = {"A2A-Version": "1.0"}
        if proof:
            headers[PROOF_HEADER] = proof
        async with httpx.AsyncClient(
            verify=self.cert_holder.config.client_ssl_context() or True
        ) as http:
            r = await http.post(
                self.ep.http_url + "/",
                json={
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": method,
                    "params": MessageToDict(request),
                },
                headers=headers,
            )
        if r.text.startswith("data:"):
            import json

            first = json.loads(r.text.splitlines()[0][5:])
            return ("ok", first) if "result" in first else (str(first["error"]["code"]), first)
        body = r.json()
        return ("ok", body["result"]) if "result" in body else (str(body["error"]["code"]), body)

    async def call(
        self, binding: str, method: str, request: Any, proof: str | bool | None = True
    ) -> tuple[str, Any]:
        token = self.proof(method, request) if proof is True else (proof or None)
        if binding == "grpc":
            return await self.grpc(method, request, token)
        return await self.jsonrpc(method, request, token)


def channel_as(holder: Node, target: Node) -> grpc.aio.Channel:
    """A channel to `target`, presenting `holder`'s client certificate under TLS."""
    assert target.endpoints is not None
    creds = holder.config.client_credentials()
    if creds is None:
        return grpc.aio.insecure_channel(target.endpoints.grpc_target)
    return grpc.aio.secure_channel(target.endpoints.grpc_target, creds)


UNAUTH = {"grpc": "UNAUTHENTICATED", "jsonrpc": "-32040"}
DENIED = {"grpc": "PERMISSION_DENIED", "jsonrpc": "-32041"}
NOT_FOUND = {"grpc": "NOT_FOUND", "jsonrpc": "-32001"}


async def _task_of(member: Member, text: str) -> str:
    code, resp = await member.grpc(
        "SendMessage", a2a_pb2.SendMessageRequest(message=member.signed(text))
    )
    assert code == "ok", code
    return str(resp.task.id)


@pytest.mark.parametrize("binding", ["grpc", "jsonrpc"])
async def test_task_methods_need_a_proof_and_show_only_the_members_tasks(
    fed: Federation, binding: str
) -> None:
    acme = Member(fed, "acme", "globex")
    initech = Member(fed, "initech", "globex")
    mine = await _task_of(acme, "acme's question to globex")
    theirs = await _task_of(initech, "initech's question to globex")

    code, listed = await acme.call(binding, "ListTasks", a2a_pb2.ListTasksRequest())
    assert code == "ok"
    ids = [t.id for t in listed.tasks] if binding == "grpc" else [t["id"] for t in listed["tasks"]]
    assert ids == [mine]
    get = a2a_pb2.GetTaskRequest(id=theirs)
    assert (await acme.call(binding, "GetTask", get))[0] == NOT_FOUND[binding]
    for method, request in (
        ("CancelTask", a2a_pb2.CancelTaskRequest(id=theirs)),
        ("SubscribeToTask", a2a_pb2.SubscribeToTaskRequest(id=theirs)),
    ):
        assert (await acme.call(binding, method, request))[0] == NOT_FOUND[binding], method
    assert (await acme.call(binding, "GetTask", a2a_pb2.GetTaskRequest(id=mine)))[0] == "ok"

    # Without a proof, or with a proof for something else, nobody gets in.
    assert (await acme.call(binding, "ListTasks", a2a_pb2.ListTasksRequest(), None))[0] == UNAUTH[
        binding
    ]
    other_method = acme.proof("ListTasks", a2a_pb2.GetTaskRequest(id=mine))
    other_task = acme.proof("GetTask", a2a_pb2.GetTaskRequest(id=theirs))
    for proof in (other_method, other_task, "garbage"):
        code, _ = await acme.call(binding, "GetTask", a2a_pb2.GetTaskRequest(id=mine), proof)
        assert code in (UNAUTH[binding], DENIED[binding]), code
    # A proof works once.
    once = acme.proof("GetTask", a2a_pb2.GetTaskRequest(id=mine))
    assert (await acme.call(binding, "GetTask", a2a_pb2.GetTaskRequest(id=mine), once))[0] == "ok"
    assert (await acme.call(binding, "GetTask", a2a_pb2.GetTaskRequest(id=mine), once))[
        0
    ] == UNAUTH[binding]
    # A proof for acme's node does not open globex's tasks... for another recipient.
    elsewhere = Member(fed, "acme", "initech").proof("ListTasks", a2a_pb2.ListTasksRequest())
    assert (await acme.call(binding, "ListTasks", a2a_pb2.ListTasksRequest(), elsewhere))[
        0
    ] == DENIED[binding]


@pytest.mark.parametrize("binding", ["grpc", "jsonrpc"])
async def test_a_member_cannot_continue_another_members_task(fed: Federation, binding: str) -> None:
    acme = Member(fed, "acme", "globex")
    initech = Member(fed, "initech", "globex")
    victim = await _task_of(acme, "the original question")
    hijack = a2a_pb2.SendMessageRequest(
        message=initech.signed("my text becomes the answer", task_id=victim)
    )
    code, _ = await initech.call(binding, "SendMessage", hijack, None)
    assert code == NOT_FOUND[binding]
    _, got = await acme.call(binding, "GetTask", a2a_pb2.GetTaskRequest(id=victim))
    assert "my text becomes the answer" not in str(got)


@pytest.mark.parametrize("binding", ["grpc", "jsonrpc"])
async def test_a_signed_answer_replayed_as_a_request_is_refused(
    fed: Federation, binding: str
) -> None:
    # globex's answer to acme (bound to acme's request), sent back to acme's node.
    globex = signer(fed.nodes["globex"])
    answer = text_message("an answer")
    answer.role = a2a_pb2.ROLE_AGENT
    signed = sign_answer(answer, globex.identity, recipient="acme", request_digest="A" * 43)
    as_user = a2a_pb2.Message()
    as_user.CopyFrom(signed)
    as_user.role = a2a_pb2.ROLE_USER  # breaks the signature; refused either way
    acme_node = Member(fed, "globex", "acme")
    for message in (signed, as_user):
        code, _ = await acme_node.call(
            binding, "SendMessage", a2a_pb2.SendMessageRequest(message=message), None
        )
        assert code in (UNAUTH[binding], DENIED[binding], "INVALID_ARGUMENT", "-32602"), code
    code, listed = await Member(fed, "globex", "acme").call(
        "grpc", "ListTasks", a2a_pb2.ListTasksRequest()
    )
    assert code == "ok" and not listed.tasks  # nothing was created in globex's name


@pytest.mark.parametrize("binding", ["grpc", "jsonrpc"])
async def test_request_level_fields_from_a_member_are_ignored(
    fed: Federation, binding: str
) -> None:
    acme = Member(fed, "acme", "globex")
    request = a2a_pb2.SendMessageRequest(
        message=acme.signed("push me"),
        configuration=a2a_pb2.SendMessageConfiguration(
            task_push_notification_config=a2a_pb2.TaskPushNotificationConfig(
                url="http://127.0.0.1:9/steal"
            ),
            history_length=3,
        ),
    )
    request.metadata.update({"unsigned": "claims"})
    code, _ = await acme.call(binding, "SendMessage", request, None)
    assert code == "ok", code  # push configuration would be UNIMPLEMENTED if it were used


async def test_refusals_log_escaped_identifiers(
    fed: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    acme = Member(fed, "acme", "globex")
    forged = acme.signed("forged")
    forged.parts[0].text = "tampered"  # the signature no longer matches
    forged.message_id = "evil\n2026-01-01 00:00:00 CRITICAL fake: \x1b[31mroot login"
    with caplog.at_level(logging.WARNING, logger="consortium"):
        code, _ = await acme.grpc("SendMessage", a2a_pb2.SendMessageRequest(message=forged))
    assert code == "UNAUTHENTICATED"
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("consortium")]
    assert any("refused message" in line for line in lines)
    for line in lines:
        assert "\n" not in line and "\x1b" not in line


async def test_mutual_tls_closes_the_http_port_and_binds_the_member(tmp_path: Path) -> None:
    f = Federation(tmp_path, mtls=True)
    try:
        await f.start()
        globex = f.nodes["globex"]
        assert globex.endpoints is not None and globex.endpoints.http_url.startswith("https://")
        plain = globex.endpoints.http_url.replace("https://", "http://")
        list_body = {"jsonrpc": "2.0", "id": 1, "method": "ListTasks", "params": {}}
        # Plaintext HTTP, and HTTPS without a client certificate, get no answer at all.
        async with httpx.AsyncClient() as http:
            with pytest.raises(httpx.HTTPError):
                await http.post(plain + "/", json=list_body)
        ca = str(globex.config.resolve(globex.config.tls.ca))  # type: ignore[union-attr]
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=ca)) as http:
            with pytest.raises(httpx.HTTPError):
                await http.post(globex.endpoints.http_url + "/", json=list_body)
        # A certificate alone is not an identity.
        acme = Member(f, "acme", "globex")
        for binding in ("grpc", "jsonrpc"):
            code, _ = await acme.call(binding, "ListTasks", a2a_pb2.ListTasksRequest(), None)
            assert code == UNAUTH[binding]
        # initech signing with its key over acme's certificate: the names disagree, for a
        # call proof and a signed message alike, on both bindings (one rule).
        mismatched = Member(f, "initech", "globex", cert_of="acme")
        for binding in ("grpc", "jsonrpc"):
            code, _ = await mismatched.call(binding, "ListTasks", a2a_pb2.ListTasksRequest())
            assert code == DENIED[binding], binding
            send = a2a_pb2.SendMessageRequest(message=mismatched.signed(f"over {binding}"))
            code, body = await mismatched.call(binding, "SendMessage", send, None)
            assert code == DENIED[binding], binding
        assert body["error"]["data"][0]["reason"] == "PERMISSION_DENIED"
        assert body["error"]["data"][0]["metadata"] == {"reason": "tls_mismatch"}
        assert globex.handler is not None and globex.handler.refusals["tls_mismatch"] == 4
        # initech's own tasks stayed out of reach: none was made on its behalf.
        code, listed = await Member(f, "initech", "globex").call(
            "grpc", "ListTasks", a2a_pb2.ListTasksRequest()
        )
        assert code == "ok" and not listed.tasks
        # With its own certificate and proof, the member is in.
        code, _ = await acme.call("grpc", "ListTasks", a2a_pb2.ListTasksRequest())
        assert code == "ok"
        answer = await f.ask_via("acme", "over mTLS", peer="initech")
        assert answer.state == "completed" and answer.provenance.verified is True
    finally:
        await f.stop()


async def test_member_client_reads_its_tasks_with_call_proofs(fed: Federation) -> None:
    """The client-side interceptor signs every task-method call."""
    acme = Member(fed, "acme", "globex")
    mine = await _task_of(acme, "mine to read back")
    node = fed.nodes["globex"]
    assert node.card is not None
    for transport in ("GRPC", "JSONRPC"):
        client = open_client(
            node.card,
            transport=transport,
            interceptors=[CallProofs(lambda m, r: acme.signer.sign_call(m, r, "globex"))],
        )
        try:
            task = await client.get_task(a2a_pb2.GetTaskRequest(id=mine))
            listed = await client.list_tasks(a2a_pb2.ListTasksRequest())
        finally:
            await client.close()
        assert task.id == mine and [t.id for t in listed.tasks] == [mine]
