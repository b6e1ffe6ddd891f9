"""Several nodes of one federation on loopback (real gRPC, echo model: these tests are
about messaging): signed peer calls, refusals before the model, roster hot reload."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from a2a.types import a2a_pb2, a2a_pb2_grpc

from consortium.federation.admin import (
    add_member,
    create_federation,
    member_from_card,
    set_status,
)
from consortium.federation.roster import load_roster, write_roster
from consortium.llm.backends import backend_factory
from consortium.node.app import Node
from consortium.node.client import ask, open_client, text_message
from consortium.node.config import parse_config
from consortium.node.setup import init_node
from consortium.trust.call_proof import PROOF_HEADER
from consortium.trust.keys import load_private_key
from consortium.trust.signing import SigningIdentity, sign_call, sign_request

ORGS = ("acme", "globex", "initech")


class Federation:
    def __init__(self, tmp: Path, mtls: bool = False, **model: Any) -> None:
        self.tmp = tmp
        self.mtls = mtls
        self.model = model
        paths = create_federation("Test Federation", tmp / "fed")
        self.roster, self.admin_key = paths.roster, paths.admin_private
        self.admin_pub = paths.admin_public
        self.nodes: dict[str, Node] = {}

    def config(self, org: str) -> Any:
        d = self.tmp / org
        init_node(org, d, grpc_port=0, http_port=0, mtls=self.mtls, tls_ca_dir=self.tmp / "ca")
        data: dict[str, Any] = {
            "node": {"org_id": org},
            "server": {
                "grpc_port": 0,
                "http_port": 0,
                "stream_interval_s": 0.0,
                "shutdown_grace_s": 1.0,
            },
            "model": {"backend": "echo", "name": f"echo-{org}", **self.model},
            "federation": {"roster": str(self.roster), "admin_key": str(self.admin_pub)},
        }
        if self.mtls:
            data["server"]["host"] = "localhost"
            data["tls"] = {
                "cert": str(d / "tls" / "node.pem"),
                "key": str(d / "tls" / "node.key"),
                "ca": str(self.tmp / "ca" / "ca.pem"),
                "client_auth": True,
            }
        return parse_config(data, path=d / "node.toml")

    async def start(self) -> None:
        for org in ORGS:
            node = self.node(self.config(org))
            await node.start()
            self.nodes[org] = node
        # Admit every node from the card it serves (real endpoints), as an admin would.
        for node in self.nodes.values():
            assert node.endpoints is not None
            url = node.endpoints.http_url + "/.well-known/agent-card.json"
            async with self.http(node) as http:
                card = (await http.get(url)).json()
            add_member(self.roster, self.admin_key, member_from_card(card, url))
        await self.roster_seen(lambda r: len(r.members) == len(ORGS))

    def node(self, cfg: Any) -> Node:
        """The organization's node (a subclass may give it another backend or assessor)."""
        return Node(cfg, backend_factory(cfg.model, cfg.base_dir))

    async def roster_seen(self, condition: Any, timeout: float = 10.0) -> None:
        """Waits until every node's roster view satisfies the condition (hot reload)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not all(condition(n.federation.roster.current()) for n in self.nodes.values()):  # type: ignore[union-attr]
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("nodes did not pick up the roster change")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for node in self.nodes.values():
            await node.stop()

    def http(self, node: Node) -> httpx.AsyncClient:
        """An HTTP client for a node: HTTPS with this node's certificate under mTLS."""
        return httpx.AsyncClient(verify=node.config.client_ssl_context() or True)

    async def healthz(self, org: str) -> dict[str, Any]:
        node = self.nodes[org]
        assert node.endpoints is not None
        async with self.http(node) as http:
            body: dict[str, Any] = (await http.get(node.endpoints.http_url + "/healthz")).json()
        return body

    async def ask_via(
        self,
        origin: str,
        text: str,
        *,
        sender: str | None = None,
        on_text: Any = None,
        **options: Any,
    ) -> Any:
        """Asks `origin`'s node, signed as `sender` (by default the origin itself)."""
        node = self.nodes[origin]
        signer = self.nodes[sender or origin]
        key = load_private_key(signer.config.resolve(signer.config.identity.private_key))
        client = open_client(node.card, credentials=node.config.client_credentials())  # type: ignore[arg-type]
        try:
            return await ask(
                client,
                text,
                options=options or None,
                on_text=on_text,
                sign=lambda m: sign_request(
                    m, SigningIdentity(key, sender or origin, "test-federation"), recipient=origin
                )[0],
            )
        finally:
            await client.close()


@pytest.fixture
async def fed(tmp_path: Path) -> Any:
    f = Federation(tmp_path)
    try:
        await f.start()
        yield f
    finally:
        await f.stop()


async def test_signed_round_trip_through_a_peer(fed: Federation) -> None:
    answer = await fed.ask_via("acme", "hello from acme", peer="globex")
    assert answer.state == "completed", answer.status_text
    assert answer.text == "hello from acme"
    p = answer.provenance
    assert p.org == "globex" and p.model == "echo-globex"
    assert p.verified is True and p.route == "acme->globex"
    # Every streamed event (working, 3 artifact chunks, completed) was signed and verified.
    assert p.verified_events >= 4


async def test_every_call_to_a_peer_is_evidence_in_the_nodes_reputations(
    fed: Federation,
) -> None:
    from consortium.trust.reputation_engine import ReputationAssessor

    acme = fed.nodes["acme"]
    assert acme.federation is not None
    assessor = acme.federation.assessor
    assert isinstance(assessor, ReputationAssessor)  # [trust] is on by default
    answer = await fed.ask_via("acme", "evidence", peer="globex")
    assert answer.state == "completed", answer.status_text
    globex = {r.peer: r for r in assessor.reputations() if r.model == ""}["globex"]
    assert globex.state == "healthy"
    assert globex.counts.get(("protocol", True), 0) >= 1
    assert answer.provenance.reputation is not None
    assert answer.provenance.reputation["globex"] == pytest.approx(globex.score, abs=0.05)
    assert (acme.config.data_dir / "trust.sqlite3").exists()


async def test_a_members_task_is_answered_by_the_peers_own_model(fed: Federation) -> None:
    # acme's user names globex; globex must answer itself, not follow its own router
    # back to acme or to itself: an escalation is one hop. (A user naming a peer and a
    # route at once is refused: test_peer_and_route_together_are_refused.)
    answer = await fed.ask_via("acme", "one hop", peer="globex")
    assert answer.state == "completed", answer.status_text
    assert answer.text == "one hop"
    assert answer.provenance.route == "acme->globex"
    # A member asking directly with a route or a peer gets the same: its own model.
    for options in ({"route": "always:globex"}, {"peer": "acme"}):
        direct = await fed.ask_via("globex", "direct", sender="acme", **options)
        assert direct.state == "completed", direct.status_text
        assert direct.text == "direct" and direct.provenance.org == "globex"


async def test_agent_card_declares_the_required_signed_message_extension(fed: Federation) -> None:
    card = fed.nodes["globex"].card
    assert card is not None
    ext = {e.uri: e for e in card.capabilities.extensions}
    signed = ext["https://consortium.dev/a2a/ext/signed-message/v1"]
    assert signed.required and signed.params["federation_id"] == "test-federation"


async def test_local_ask_is_signed_and_answered_locally(fed: Federation) -> None:
    answer = await fed.ask_via("initech", "just me")
    assert answer.state == "completed" and answer.provenance.org == "initech"


async def test_unsigned_message_is_refused_on_both_bindings(fed: Federation) -> None:
    node = fed.nodes["globex"]
    assert node.endpoints is not None
    async with grpc.aio.insecure_channel(node.endpoints.grpc_target) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await a2a_pb2_grpc.A2AServiceStub(ch).SendMessage(
                a2a_pb2.SendMessageRequest(message=text_message("sneaky"))
            )
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with httpx.AsyncClient() as http:
        r = await http.post(
            node.endpoints.http_url + "/",
            headers={"A2A-Version": "1.0"},
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "SendMessage",
                "params": {
                    "message": {"messageId": "m-1", "role": "ROLE_USER", "parts": [{"text": "x"}]}
                },
            },
        )
    assert r.json()["error"]["code"] == -32040
    assert node.handler.refusals["unsigned"] == 2  # type: ignore[union-attr]
    async with httpx.AsyncClient() as http:
        health = (await http.get(node.endpoints.http_url + "/healthz")).json()
    assert health["federation"]["messages_refused"] == {"unsigned": 2}
    assert health["federation"]["id"] == "test-federation"


async def test_message_for_another_recipient_never_reaches_the_model(fed: Federation) -> None:
    acme = fed.nodes["acme"]
    key = load_private_key(acme.config.resolve(acme.config.identity.private_key))
    msg = sign_request(
        text_message("for initech"),
        SigningIdentity(key, "acme", "test-federation"),
        recipient="initech",
    )[0]
    globex = fed.nodes["globex"]
    assert globex.endpoints is not None
    async with grpc.aio.insecure_channel(globex.endpoints.grpc_target) as ch:
        s = a2a_pb2_grpc.A2AServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await s.SendMessage(a2a_pb2.SendMessageRequest(message=msg))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        list_all = a2a_pb2.ListTasksRequest()
        proof = sign_call(
            "ListTasks",
            list_all,
            SigningIdentity(key, "acme", "test-federation"),
            recipient="globex",
        )
        listed = await s.ListTasks(list_all, metadata=((PROOF_HEADER, proof),))
    assert list(listed.tasks) == []  # no task was created


async def test_suspension_takes_effect_without_restart(fed: Federation) -> None:
    assert (await fed.ask_via("acme", "before", peer="globex")).state == "completed"
    set_status(fed.roster, fed.admin_key, "acme", "suspended")
    await fed.roster_seen(lambda r: r.member("acme").status == "suspended")
    refused = await fed.ask_via("acme", "after", peer="globex")
    assert refused.state == "failed"
    assert fed.nodes["globex"].handler.refusals["suspended"] == 1  # type: ignore[union-attr]
    set_status(fed.roster, fed.admin_key, "acme", "active")
    await fed.roster_seen(lambda r: r.member("acme").status == "active")
    assert (await fed.ask_via("acme", "again", peer="globex")).state == "completed"


async def test_tampered_roster_is_refused_and_the_previous_one_kept(fed: Federation) -> None:
    good = load_roster(fed.roster)
    revoked = [m.model_copy(update={"status": "revoked"}) for m in good.members]
    write_roster(
        fed.roster, good.model_copy(update={"members": revoked, "version": good.version + 1})
    )
    globex = fed.nodes["globex"].federation
    assert globex is not None
    deadline = asyncio.get_running_loop().time() + 10
    while globex.roster.refused == 0:
        assert asyncio.get_running_loop().time() < deadline, (
            "the tampered roster was never looked at"
        )
        globex.roster.current()
        await asyncio.sleep(0.05)
    answer = await fed.ask_via("acme", "still fine", peer="globex")
    assert answer.state == "completed"
    assert globex.roster.current().member("acme").status == "active"  # type: ignore[union-attr]


async def test_signed_round_trip_over_mutual_tls(tmp_path: Path) -> None:
    f = Federation(tmp_path, mtls=True)
    try:
        await f.start()
        answer = await f.ask_via("acme", "over mTLS", peer="initech")
        assert answer.state == "completed", answer.status_text
        assert answer.text == "over mTLS" and answer.provenance.verified is True
    finally:
        await f.stop()


def spans_of(path: Path) -> list[dict[str, Any]]:
    """Spans from an OTLP JSON lines file, with their resource's service.name."""
    out = []
    for line in path.read_text().splitlines():
        for rs in json.loads(line).get("resourceSpans", []):
            attrs = {a["key"]: a["value"] for a in rs["resource"]["attributes"]}
            service = attrs["service.name"]["stringValue"]
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    span["service"] = service
                    span["attrs"] = {
                        a["key"]: next(iter(a["value"].values()))
                        for a in span.get("attributes", [])
                    }
                    out.append(span)
    return out


async def test_cross_organization_task_is_one_trace(fed: Federation) -> None:
    answer = await fed.ask_via("acme", "trace me please", peer="globex")
    assert answer.state == "completed"
    await fed.stop()  # flushes every node's exporter
    files = {org: fed.nodes[org].config.data_dir / "traces.jsonl" for org in ("acme", "globex")}
    acme, globex = spans_of(files["acme"]), spans_of(files["globex"])
    call = next(s for s in acme if s["name"] == "invoke_agent globex")
    receive = next(
        s
        for s in globex
        if s["name"].startswith("a2a.receive ") and s["attrs"].get("consortium.sender") == "acme"
    )
    chat = next(s for s in globex if s["name"] == "chat echo-globex")
    assert receive["traceId"] == call["traceId"] == chat["traceId"]
    assert receive["parentSpanId"] == call["spanId"]
    assert receive["attrs"]["consortium.message.id"] == call["attrs"]["consortium.message.id"]
    assert {s["service"] for s in acme} == {"acme"} and {s["service"] for s in globex} == {"globex"}
    assert chat["attrs"]["gen_ai.operation.name"] == "chat"
    assert int(chat["attrs"]["gen_ai.usage.output_tokens"]) == 3
    verify = next(
        s for s in globex if s["name"] == "consortium.verify" and s["traceId"] == call["traceId"]
    )
    assert verify["attrs"]["consortium.verdict"] == "verified"
    # The trust pipeline's own time, apart from the network: the origin's verification of
    # what came back, and the peer's signing of what it sent (answer and task events).
    received = next(
        s for s in acme if s["name"] == "consortium.verify" and s["parentSpanId"] == call["spanId"]
    )
    verifying_ms = float(received["attrs"]["consortium.verify.ms"])
    assert (
        0
        < verifying_ms * 1e6
        < int(received["endTimeUnixNano"]) - int(received["startTimeUnixNano"])
    )
    signing_ms = float(receive["attrs"]["consortium.sign.ms"])
    assert (
        0 < signing_ms * 1e6 < int(receive["endTimeUnixNano"]) - int(receive["startTimeUnixNano"])
    )
    # No message text in anyone's spans.
    for path in files.values():
        assert "trace me please" not in path.read_text()
